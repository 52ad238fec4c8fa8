"""The editor-independent half of the GIMP plug-in: which part of the image to send, the job's
parameters, running a job off the main thread, and where its results go. Standard library
only; tested against the real daemon without GIMP.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from sdhost_client import Client, DaemonError, Event, Image, ProtocolError, default_socket

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
    import re
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("+", "p")).strip("-") or "x"


@dataclass
class Choices:
    """The lists the dialog offers, and the daemon's request defaults (its `request_fields`)."""

    samplers: tuple[str, ...] = SAMPLERS
    schedules: tuple[str, ...] = SCHEDULES
    models: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)

    def default(self, name: str) -> Any:
        """The daemon's default of request field `name`; `Settings`' own when offline."""
        return self.defaults.get(name, getattr(Settings, {"mask_blur_x": "mask_blur"}.get(name, name)))


def fetch_choices(socket_path: str, timeout: float = 0.5) -> Choices:
    """Samplers (with plugins' ones), schedules and models from the daemon; A1111's lists when
    it does not answer quickly."""
    try:
        with Client.connect_unix(socket_path, timeout=timeout) as client:
            welcome = client.welcome
    except (OSError, ValueError, KeyError):
        return Choices()
    samplers = tuple(s["name"] for s in welcome.get("samplers", [])) or SAMPLERS
    schedules = tuple(welcome.get("schedules", [])) or SCHEDULES
    defaults = {f["name"]: f["default"] for f in welcome.get("request_fields", [])}
    return Choices(samplers, schedules, tuple(welcome.get("models", [])), defaults)


def from_slug(value: str, names: tuple[str, ...]) -> str:
    """The name a choice identifier stands for (the identifier itself when unknown)."""
    for name in names:
        if slug(name) == value:
            return name
    return value


@dataclass(frozen=True)
class Region:
    """A rectangle of the image, in image pixels."""

    x: int
    y: int
    width: int
    height: int


def expand_to_aspect(x1: int, y1: int, x2: int, y2: int, width: int, height: int,
                     image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """A1111's `expand_crop_region`: grow the box to width:height, shifted back inside."""
    ratio_box, ratio = (x2 - x1) / (y2 - y1), width / height
    if ratio_box > ratio:
        diff = int((x2 - x1) / ratio - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_h:
            y1, y2 = y1 - (y2 - image_h), image_h
        if y1 < 0:
            y2, y1 = y2 - y1, 0
        y2 = min(y2, image_h)
    else:
        diff = int((y2 - y1) * ratio - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_w:
            x1, x2 = x1 - (x2 - image_w), image_w
        if x1 < 0:
            x2, x1 = x2 - x1, 0
        x2 = min(x2, image_w)
    return x1, y1, x2, y2


def context_region(image_w: int, image_h: int, bounds: Optional[tuple[int, int, int, int]],
                   only_masked: bool, padding: int, width: int, height: int,
                   min_context: int = 0) -> Region:
    """The part of the image to read and send: all of it, or for "Only masked" the selection's
    bounds (x1, y1, x2, y2, exclusive) padded, grown to `min_context` and to the generation
    size's aspect ratio, as the daemon would crop it (so nothing outside is read)."""
    if not only_masked or bounds is None:
        return Region(0, 0, image_w, image_h)
    x1, y1, x2, y2 = bounds
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, image_w), min(y2 + padding, image_h)
    for axis in ("x", "y"):
        lo, hi, limit = (x1, x2, image_w) if axis == "x" else (y1, y2, image_h)
        missing = min(min_context, limit) - (hi - lo)
        if missing > 0:
            lo -= missing // 2
            hi += missing - missing // 2
            if lo < 0:
                hi, lo = hi - lo, 0
            if hi > limit:
                lo, hi = max(lo - (hi - limit), 0), limit
        if axis == "x":
            x1, x2 = lo, hi
        else:
            y1, y2 = lo, hi
    x1, y1, x2, y2 = expand_to_aspect(x1, y1, x2, y2, width, height, image_w, image_h)
    return Region(x1, y1, x2 - x1, y2 - y1)


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


def layer_name(prompt: str, seed: int) -> str:
    """A result layer's name: prompt (shortened) and seed."""
    short = " ".join(prompt.split())
    if len(short) > 40:
        short = short[:39] + "…"
    return f"sdhost: {short or '(no prompt)'} ({seed})"


def placements(results: list[Event], region: Region, prompt: str) -> list[Placement]:
    """Where each result goes: an inpainting patch at its offset inside the region, else the
    whole image at the region's origin (to be scaled to the region when sizes differ)."""
    placed = []
    for event in results:
        patch = event.get("patch")
        if patch is not None:
            image = event.attachments["patch"]
            x, y = region.x + int(patch["x"]), region.y + int(patch["y"])
        else:
            image = event.attachments["image"]
            x, y = region.x, region.y
        placed.append(Placement(image.data, image.width, image.height, x, y,
                                layer_name(prompt, int(event["seed"])), str(event["infotext"]),
                                int(event["seed"]), patch is not None))
    return placed


@dataclass
class JobOutcome:
    """How a job ended."""

    status: str  # "done", "cancelled", "error"
    results: list[Event] = field(default_factory=list)
    error: Optional[str] = None


class JobRunner:
    """Runs one job on a worker thread (socket I/O never on the editor's main thread); the
    main thread calls `wait` to receive progress and the outcome."""

    def __init__(self, connect: Callable[[], Client], header: dict[str, Any],
                 attachments: list[tuple[str, Image]], model: Optional[str] = None) -> None:
        self.model = model
        self.events: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self._lock = threading.Lock()
        self._client: Optional[Client] = None
        self._job: Optional[int] = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, args=(connect, header, attachments),
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

    def _run(self, connect: Callable[[], Client], header: dict[str, Any],
             attachments: list[tuple[str, Image]]) -> None:
        results: list[Event] = []
        try:
            with connect() as client:
                if self.model and client.welcome["model"]["name"] != self.model:
                    client.run(client.select_model(self.model))
                job = client.submit("img2img", header, attachments)
                with self._lock:
                    self._client, self._job = client, job
                    if self._cancelled:
                        client.cancel(job)
                for event in client.events(job):
                    if event.type == "progress":
                        if "total" in event.header:
                            self.events.put(("total", int(event["total"])))
                        self.events.put(("step", int(event["step"])))
                    elif event.type == "result":
                        results.append(event)
                    elif event.type in ("done", "cancelled"):
                        self.events.put(("outcome", JobOutcome(event.type, results)))
                        return
                    elif event.type == "error":
                        self.events.put(("outcome", JobOutcome("error", results, event["message"])))
                        return
        except DaemonError as error:
            self.events.put(("outcome", JobOutcome("error", results, error.message)))
        except (ProtocolError, ConnectionResetError, BrokenPipeError) as error:
            self.events.put(("outcome", JobOutcome("error", results, lost(error))))
        except OSError as error:
            self.events.put(("outcome", JobOutcome("error", results, unreachable(error))))
        except Exception as error:  # noqa: BLE001 - the main thread must always get an outcome
            self.events.put(("outcome", JobOutcome("error", results, str(error))))

    def wait(self, on_progress: Callable[[float, str], None],
             deadline: Optional[Callable[[], bool]] = None) -> JobOutcome:
        """Pumps events on the calling thread until the job ends; `deadline()` returning True
        cancels the job."""
        total = 0
        while True:
            if deadline is not None and deadline():
                self.cancel()
            try:
                kind, value = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "total":
                total = value
            elif kind == "step" and total:
                on_progress(min(value / total, 1.0), f"step {value}/{total}")
            elif kind == "outcome":
                return value


def unreachable(error: OSError) -> str:
    """The message shown when the daemon cannot be reached."""
    return (f"cannot reach the sdhost daemon ({error}). Start it with `sdhost serve` "
            f"(it listens on {default_socket()}), or let the plug-in start it.")


def lost(error: Exception) -> str:
    """The message shown when the daemon's connection breaks during a job (it crashed, was
    killed or stopped): not "cannot reach", since it was reached."""
    return (f"the sdhost daemon stopped during the job ({error}): it crashed or was stopped. "
            f"Run the job again (the plug-in starts the daemon when it is not running), or "
            f"start it with `sdhost serve` and read its log.")


def start_daemon(command: str, socket_path: str, wait_seconds: float = 120.0) -> None:
    """Starts `command serve --socket socket_path` detached from the editor (its own session,
    so GIMP killing a cancelled plug-in's process group cannot take the daemon down) and
    waits until it answers."""
    log = open(os.devnull, "wb")
    subprocess.Popen([command, "serve", "--socket", socket_path], stdin=subprocess.DEVNULL,
                     stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        try:
            Client.connect_unix(socket_path, timeout=5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise OSError(f"started `{command} serve` but it did not answer on {socket_path}")
