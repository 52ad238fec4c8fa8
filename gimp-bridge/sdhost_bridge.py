"""The editor-independent half of the GIMP plug-in: which part of the image to send, the job's
parameters, running a job off the main thread, and where its results go. Standard library
only; tested against the real daemon without GIMP.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from sdhost_client import Client, DaemonError, Event, Image, ProtocolError
from sdhost_geometry import Region, context_region, expand_to_aspect  # noqa: F401 - re-exported
from sdhost_link import Address, DaemonUnavailable, connect, lost, too_old

# A1111's img2img tabs, as the daemon names them.
MODES = ("img2img", "sketch", "inpaint", "inpaint-sketch", "inpaint-upload")
# Inpaint area "Only masked" default generation size: SD 1.x's native resolution.
NATIVE_SIZE = 512
# What the dialog offers when the daemon cannot be asked: A1111's samplers and schedules.
SAMPLERS = ("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a",
            "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast",
            "DPM adaptive", "Restart", "DDIM", "PLMS", "UniPC", "LCM")
SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
             "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
# The model choice that keeps whatever the daemon has loaded.
CURRENT_MODEL = "current"


def parasite_payload(text: str) -> list[int]:
    """A parasite's data for `text`: GIMP stores C chars, which PyGObject takes as signed bytes,
    so UTF-8 bytes above 127 (any non-ASCII prompt) go in as negative numbers."""
    return [b - 256 if b > 127 else b for b in text.encode("utf-8")]


def parasite_text(data) -> str:
    """The text a parasite holds (its data as signed or unsigned bytes)."""
    return bytes(b & 0xFF for b in data).decode("utf-8")


def slug(name: str) -> str:
    """A dialog choice's identifier for a name: "DPM++ 2M" → "dpmpp-2m"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("+", "p")).strip("-") or "x"


# The labelled lists of A1111's img2img tab whose request values are their positions.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASKED_CONTENT = ("Fill", "Original", "Latent noise", "Latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
# Live previews: none, or the daemon's `preview_methods`.
LIVE_PREVIEWS = ("None", "Approx cheap", "Full")
# Interrogate's methods (A1111's two buttons).
INTERROGATE_METHODS = ("clip", "deepbooru")
# What a network picker shows first: nothing picked.
NO_NETWORK = "None"
# A1111's img2img X/Y/Z axes that sdhost runs (host/src/scripts/xyz/axes.rs), by label.
XYZ_AXES = ("Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Prompt S/R",
            "Prompt order", "Sampler", "Checkpoint name", "Sigma Churn", "Sigma min", "Sigma max",
            "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma",
            "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip",
            "Denoising", "Extra noise", "VAE", "UniPC Order", "Refiner checkpoint",
            "Refiner switch at", "RNG source")


def position(value: str, names: tuple[str, ...]) -> int:
    """The position of a choice identifier in `names` (the request value of a labelled list)."""
    for index, name in enumerate(names):
        if slug(name) == value:
            return index
    raise ValueError(f"{value!r} is not one of {', '.join(slug(n) for n in names)}")


@dataclass
class Choices:
    """The lists the dialog offers, and the daemon's request defaults (its `request_fields`)."""

    samplers: tuple[str, ...] = SAMPLERS
    schedules: tuple[str, ...] = SCHEDULES
    models: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    # The daemon's networks (its `networks` entries) and the loaded model's embeddings.
    networks: tuple[dict[str, Any], ...] = ()
    embeddings: tuple[str, ...] = ()
    upscalers: tuple[str, ...] = ("None", "Lanczos", "Nearest")

    def default(self, name: str) -> Any:
        """The daemon's default of request field `name`; `Settings`' own when offline."""
        return self.defaults.get(name, getattr(Settings, {"mask_blur_x": "mask_blur"}.get(name, name)))

    def of_kind(self, *kinds: str) -> tuple[dict[str, Any], ...]:
        return tuple(n for n in self.networks if n["kind"] in kinds)

    @property
    def vaes(self) -> tuple[str, ...]:
        """The values of `sd_vae`, as A1111's SD VAE list."""
        return ("Automatic", "None") + tuple(n["name"] for n in self.of_kind("vae"))

    def network_label(self, network: dict[str, Any]) -> str:
        """A picker entry: the network's alias, its base model and its trigger words."""
        label = network["alias"]
        if network.get("base_model") and network["base_model"] != "Unknown":
            label += f" [{network['base_model']}]"
        words = [t["tag"] for t in network.get("trigger_words") or []][:3]
        if network.get("activation_text"):
            words = [network["activation_text"]]
        if words:
            label += " — " + ", ".join(words)
        return label


def fetch_choices(address: Address, token: str = "", timeout: float = 0.5) -> Choices:
    """Samplers (with plugins' ones), schedules, models, networks and embeddings from the
    daemon; A1111's lists when it does not answer quickly."""
    try:
        with connect(address, token, timeout=timeout) as client:
            welcome = client.welcome
    except (DaemonUnavailable, ProtocolError, OSError, ValueError, KeyError):
        return Choices()
    samplers = tuple(s["name"] for s in welcome.get("samplers", [])) or SAMPLERS
    schedules = tuple(welcome.get("schedules", [])) or SCHEDULES
    defaults = {f["name"]: f["default"] for f in welcome.get("request_fields", [])}
    upscalers = tuple(welcome.get("upscalers") or ()) or Choices.upscalers
    return Choices(samplers, schedules, tuple(welcome.get("models", [])), defaults,
                   tuple(welcome.get("networks") or ()),
                   tuple((welcome.get("model") or {}).get("embeddings") or ()), upscalers)


def with_network(prompt: str, network: dict[str, Any], weight: Optional[float] = None) -> str:
    """The prompt with a LoRA, LyCORIS or hypernetwork picked, as A1111's card click does it:
    its tag (preferred weight unless given) and its activation text appended; unchanged when
    the tag is already there."""
    tag = Client.prompt_tag(network, weight)
    if tag in prompt:
        return prompt
    added = [tag]
    if network.get("activation_text") and network["activation_text"] not in prompt:
        added.append(network["activation_text"])
    return ", ".join([p for p in [prompt.strip().rstrip(",")] if p] + added)


def with_embedding(prompt: str, name: str) -> str:
    """The prompt with a textual-inversion embedding's name appended (once)."""
    if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", prompt):
        return prompt
    return ", ".join([p for p in [prompt.strip().rstrip(",")] if p] + [name])


def from_slug(value: str, names: tuple[str, ...]) -> str:
    """The name a choice identifier stands for (the identifier itself when unknown)."""
    for name in names:
        if slug(name) == value:
            return name
    return value


@dataclass
class Settings:
    """What the dialog asks, under the daemon's request field names (A1111's API names; the
    daemon's `list` names every field with its default)."""

    mode: str = "img2img"
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    denoising_strength: float = 0.75
    seed: int = -1
    n_iter: int = 1
    batch_size: int = 1
    width: int = 0  # 0: automatic (the region's size; 512 for only masked)
    height: int = 0
    resize_mode: int = 0
    clip_skip: int = 1
    mask_blur: int = 4  # A1111's shorthand for mask_blur_x and mask_blur_y
    inpainting_mask_invert: bool = False
    inpainting_fill: int = 1  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    min_context: int = 0  # the plug-in's: grows the region it reads (0: off)
    mask_alpha: float = 0.0
    sd_vae: str = "Automatic"

    def generation_size(self, region: Region) -> tuple[int, int]:
        """The size the daemon generates at: as set, else the region's (whole picture) or the
        native size with the region's aspect ratio (only masked)."""
        if self.width > 0 and self.height > 0:
            return self.width, self.height
        if self.inpaint_full_res and self.mode in ("inpaint", "inpaint-sketch", "inpaint-upload"):
            return NATIVE_SIZE, NATIVE_SIZE
        return region.width, region.height

    def params(self, region: Region) -> dict[str, Any]:
        """The daemon's job parameters: every field but the plug-in's own, by its name."""
        own = {"mode", "min_context"}
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in own}
        params["width"], params["height"] = self.generation_size(region)
        return params


def reuse_request(settings: "Settings", request: dict[str, Any]) -> "Settings":
    """`settings` with the fields of a generation request (the daemon's reading of a result's
    infotext, A1111's "send to img2img"): every field the dialog has, by its name."""
    for f in fields(settings):
        if f.name in request and request[f.name] is not None:
            setattr(settings, f.name, type(getattr(settings, f.name))(request[f.name]))
    if "mask_blur_x" in request:
        settings.mask_blur = int(request["mask_blur_x"])
    return settings


# The dialog's properties by the `Settings` field each sets, with the labelled list a choice
# property picks from (its position is the value), or the `Choices` list a name is picked from.
PROPERTIES: dict[str, tuple[str, Any]] = {
    "prompt": ("prompt", None), "negative-prompt": ("negative_prompt", None),
    "sampler": ("sampler_name", "samplers"), "scheduler": ("scheduler", "schedules"),
    "steps": ("steps", None), "cfg-scale": ("cfg_scale", None),
    "denoising-strength": ("denoising_strength", None), "seed": ("seed", None),
    "batch-count": ("n_iter", None), "batch-size": ("batch_size", None),
    "width": ("width", None), "height": ("height", None),
    "resize-mode": ("resize_mode", RESIZE_MODES), "clip-skip": ("clip_skip", None),
    "vae": ("sd_vae", "vaes"), "mask-blur": ("mask_blur", None),
    "mask-mode": ("inpainting_mask_invert", MASK_MODES),
    "masked-content": ("inpainting_fill", MASKED_CONTENT),
    "inpaint-area": ("inpaint_full_res", INPAINT_AREAS),
    "padding": ("inpaint_full_res_padding", None), "min-context": ("min_context", None),
    "mask-alpha": ("mask_alpha", None),
}


def settings_from(get: Callable[[str], Any], names: set[str], mode: str, choices: Choices) -> Settings:
    """The settings a dialog's property values (`get(name)`, for the properties in `names`)
    give."""
    settings = Settings(mode=mode)
    for prop, (name, picks) in PROPERTIES.items():
        if prop not in names:
            continue
        value = get(prop)
        if isinstance(picks, tuple):
            value = position(value, picks)
            if isinstance(getattr(settings, name), bool):
                value = bool(value)
        elif isinstance(picks, str):
            value = from_slug(value, getattr(choices, picks))
        setattr(settings, name, value)
    return settings


def properties_from(settings: Settings, names: set[str]) -> dict[str, Any]:
    """The dialog's property values (choices as their identifiers) for `settings`, for the
    properties in `names`."""
    values: dict[str, Any] = {}
    for prop, (name, picks) in PROPERTIES.items():
        if prop not in names:
            continue
        value = getattr(settings, name)
        if isinstance(picks, tuple):
            value = slug(picks[min(int(value), len(picks) - 1)])
        elif isinstance(picks, str):
            value = slug(str(value))
        values[prop] = value
    return values


# The image parasite that keeps the last sdhost job's procedure and dialog values.
SETTINGS_PARASITE = "sdhost/settings"


def settings_record(procedure: str, values: dict[str, Any]) -> str:
    """The settings parasite's text: the procedure and its plain (JSON) property values."""
    plain = {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool))}
    return json.dumps({"procedure": procedure, "values": plain}, ensure_ascii=False)


def read_settings_record(text: str) -> tuple[str, dict[str, Any]]:
    """(procedure, values) of a settings parasite; ("", {}) when it is not one."""
    try:
        record = json.loads(text)
        return str(record["procedure"]), dict(record["values"])
    except (ValueError, KeyError, TypeError):
        return "", {}


@dataclass
class Placement:
    """A result as a layer: pixels (RGBA8), size, where it goes, its name and infotext."""

    rgba: bytes
    width: int
    height: int
    x: int
    y: int
    name: str
    infotext: str
    seed: int
    patch: bool
    grid: bool = False


def layer_name(prompt: str, seed: int) -> str:
    """A result layer's name: prompt (shortened) and seed."""
    short = " ".join(prompt.split())
    if len(short) > 40:
        short = short[:39] + "…"
    return f"sdhost: {short or '(no prompt)'} ({seed})"


def cell_name(cell: list[dict[str, Any]], seed: int) -> str:
    """An X/Y/Z plot cell's layer name: its axis values, then its seed."""
    values = ", ".join(f"{c['axis']}: {c['value']}" for c in cell)
    return f"{values} ({seed})"


def placements(results: list[Event], region: Region, prompt: str) -> list[Placement]:
    """Where each result goes: an inpainting patch at its offset inside the region, else the
    whole image at the region's origin (to be scaled to the region when sizes differ); a
    script's grid at the region's origin at its own size."""
    placed = []
    for event in results:
        patch = event.get("patch")
        if patch is not None:
            image = event.attachments["patch"]
            x, y = region.x + int(patch["x"]), region.y + int(patch["y"])
        else:
            image = event.attachments["image"]
            x, y = region.x, region.y
        seed = int(event["seed"])
        grid = bool(event.get("grid"))
        if grid:
            name = f"sdhost: grid {int(event.get('index', 0)) + 1} ({seed})"
        elif event.get("cell"):
            name = cell_name(event["cell"], seed)
        else:
            name = layer_name(prompt, seed)
        placed.append(Placement(image.data, image.width, image.height, x, y, name,
                                str(event["infotext"]), seed, patch is not None, grid))
    return placed


@dataclass
class JobOutcome:
    """How a job ended."""

    status: str  # "done", "cancelled", "error"
    results: list[Event] = field(default_factory=list)
    error: Optional[str] = None
    warnings: list[str] = field(default_factory=list)


def eta_text(step: int, total: int, elapsed: float) -> str:
    """The progress text: the step and, once steps have run, the time left at their pace."""
    text = f"step {step}/{total}"
    if 0 < step < total and elapsed > 0:
        left = elapsed / step * (total - step)
        text += f", {left:.0f} s left" if left < 120 else f", {left / 60:.0f} min left"
    return text


class JobRunner:
    """Runs one job on a worker thread (socket I/O never on the editor's main thread); the
    main thread calls `wait` to receive progress, live previews and the outcome."""

    def __init__(self, connect: Callable[[], Client], header: dict[str, Any],
                 attachments: list[tuple[str, Image]], model: Optional[str] = None,
                 kind: str = "img2img") -> None:
        self.model = model
        self.events: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self._lock = threading.Lock()
        self._client: Optional[Client] = None
        self._job: Optional[int] = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, args=(connect, kind, header, attachments),
                                        daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Asks the daemon to stop the job (once)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            if self._client is not None and self._job is not None:
                self._client.cancel(self._job)

    def _run(self, connect: Callable[[], Client], kind: str, header: dict[str, Any],
             attachments: list[tuple[str, Image]]) -> None:
        results: list[Event] = []
        try:
            with connect() as client:
                if self.model and client.welcome["model"]["name"] != self.model:
                    client.run(client.select_model(self.model))
                job = client.submit(kind, header, attachments)
                with self._lock:
                    self._client, self._job = client, job
                    if self._cancelled:
                        client.cancel(job)
                for event in client.events(job):
                    if event.type == "progress":
                        if "total" in event.header:
                            self.events.put(("total", int(event["total"])))
                        elif "step" in event.header:
                            self.events.put(("step", int(event["step"])))
                        if event.preview_image is not None:
                            self.events.put(("preview", event.preview_image))
                    elif event.type == "result":
                        results.append(event)
                    elif event.type in ("done", "cancelled"):
                        warnings = list(event.get("warnings") or [])
                        self.events.put(("outcome", JobOutcome(event.type, results, None, warnings)))
                        return
                    elif event.type == "error":
                        self.events.put(("outcome", JobOutcome("error", results, event["message"])))
                        return
        except DaemonUnavailable as error:
            self.events.put(("outcome", JobOutcome("error", results, str(error))))
        except DaemonError as error:
            message = error.message
            if error.code == "unknown_request":
                message = too_old(kind) + f" ({error.message})"
            self.events.put(("outcome", JobOutcome("error", results, message)))
        except (ProtocolError, ConnectionResetError, BrokenPipeError) as error:
            self.events.put(("outcome", JobOutcome("error", results, lost(error))))
        except OSError as error:
            self.events.put(("outcome", JobOutcome("error", results, f"the connection to the sdhost daemon failed: {error}")))
        except Exception as error:  # noqa: BLE001 - the main thread must always get an outcome
            self.events.put(("outcome", JobOutcome("error", results, str(error))))

    def wait(self, on_progress: Callable[[float, str], None],
             deadline: Optional[Callable[[], bool]] = None,
             on_preview: Optional[Callable[[Image], None]] = None) -> JobOutcome:
        """Pumps events on the calling thread until the job ends; `deadline()` returning True
        cancels the job. `on_preview` receives each live preview (the newest only, when
        several arrived since the last call)."""
        total = 0
        started: Optional[float] = None
        while True:
            if deadline is not None and deadline():
                self.cancel()
            try:
                kind, value = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "total":
                total = value
                started = time.monotonic()
            elif kind == "step" and total:
                elapsed = time.monotonic() - started if started is not None else 0.0
                on_progress(min(value / total, 1.0), eta_text(value, total, elapsed))
            elif kind == "preview" and on_preview is not None:
                if not any(k == "preview" for k, _ in list(self.events.queue)):
                    on_preview(value)
            elif kind == "outcome":
                return value
