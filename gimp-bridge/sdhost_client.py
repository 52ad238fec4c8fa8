"""A client for the sdhost daemon's protocol (docs/protocol.md), standard library only.

Used by the GIMP plug-in and by the tests. One `Client` is one connection:

    with Client.connect_unix(path) as client:
        job = client.img2img(image, params={"prompt": "a cat", "steps": 20}, mask=mask)
        for event in client.events(job):
            ...  # queued, started, progress, result (with .attachments), done / cancelled / error

Extra networks and VAEs: `client.networks()` lists every LoRA, LyCORIS, hypernetwork and VAE of
the daemon's model folders with its metadata (docs/protocol.md, Networks) for pickers, and
`client.vae_choices()` the values of the `sd_vae` parameter. A job's warnings (the `done`
event's: a VAE or a network that is not found …) are kept in `client.warnings` by `run`.

txt2img (with A1111's Hires. fix): `client.txt2img(params={"prompt": "a cat", "width": 512,
"enable_hr": True, "hr_scale": 2})`, parameters as A1111's `/sdapi/v1/txt2img`, no images sent.

Live previews (A1111's): pass `preview={"method": "Approx cheap", "every": 2}` (or "Full") to
`img2img` or `txt2img`; every 2nd sampler step's progress event then has `event.preview_image`
(rgba8).

Upscaling (A1111's extras tab): `client.upscale(image, "R-ESRGAN 4x+", scale=2.0)` returns the
upscaled picture (rgba8; the size is the scaled one rounded down to multiples of 8), or pass
`width` and `height` instead of `scale` for the scale that covers that size. The names are
`client.welcome["upscalers"]` (None, Lanczos, Nearest, then the daemon's model upscalers; `list()`
rescans them). Transparent pixels keep their alpha, resized to the result. Failures and refusals
(an unknown name, a scale outside (0, 8], a result over the daemon's pixel limit) raise
DaemonError.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

PROTOCOL_VERSION = 1
NETWORK_KINDS = ("lora", "lycoris", "hypernetwork", "vae")
MAGIC = b"SDH1"
FINAL_EVENTS = ("done", "cancelled", "error")


class ProtocolError(Exception):
    """The daemon sent something that is not a frame, or closed the connection."""


class DaemonError(Exception):
    """The daemon answered with an error event."""

    def __init__(self, code: str, message: str, job: Optional[int] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.job = job


@dataclass
class Image:
    """Raw pixels: `format` is "rgba8" (4 bytes per pixel), "y8" (1) or "png" (a file)."""

    data: bytes
    width: int = 0
    height: int = 0
    format: str = "rgba8"


@dataclass
class Event:
    """A frame from the daemon: its header and its attachments by name."""

    header: dict[str, Any]
    attachments: dict[str, Image] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.header.get("type", ""))

    def __getitem__(self, key: str) -> Any:
        return self.header[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)

    @property
    def preview_image(self) -> Optional[Image]:
        """A progress event's live preview (rgba8, the running batch's first image, job image
        `self["preview"]["index"]`), or None when this step has none."""
        return self.attachments.get("preview") if self.type == "progress" else None


def encode_frame(header: dict[str, Any], attachments: list[tuple[str, Image]] = ()) -> bytes:
    """One frame: magic, header length, payload length, JSON header, attachment bytes."""
    header = dict(header)
    if attachments:
        header["attachments"] = [
            {"name": name, "format": img.format, "width": img.width, "height": img.height,
             "length": len(img.data)}
            for name, img in attachments
        ]
    head = json.dumps(header).encode("utf-8")
    payload = b"".join(img.data for _, img in attachments)
    return MAGIC + struct.pack(">II", len(head), len(payload)) + head + payload


class Client:
    """One connection to the daemon; the handshake is done on connect."""

    def __init__(self, sock: socket.socket, token: Optional[str] = None, client: str = "sdhost-python") -> None:
        self.sock = sock
        self._next_id = 1
        self._pending: list[Event] = []
        welcome = self.request({"type": "hello", "protocol": PROTOCOL_VERSION, "client": client,
                                "token": token})
        self.welcome = welcome.header
        self.warnings: list[str] = []

    @classmethod
    def connect_unix(cls, path: str, timeout: Optional[float] = None) -> "Client":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls(sock)

    @classmethod
    def connect_tcp(cls, host: str, port: int, token: str, timeout: Optional[float] = None) -> "Client":
        sock = socket.create_connection((host, port), timeout=timeout)
        return cls(sock, token=token)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames ------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ProtocolError("the daemon closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read_event(self) -> Event:
        """The next frame from the daemon."""
        if self._pending:
            return self._pending.pop(0)
        prefix = self._recv_exact(12)
        if prefix[:4] != MAGIC:
            raise ProtocolError(f"not a frame: {prefix[:4]!r}")
        head_len, payload_len = struct.unpack(">II", prefix[4:])
        header = json.loads(self._recv_exact(head_len))
        payload = self._recv_exact(payload_len)
        attachments: dict[str, Image] = {}
        offset = 0
        for a in header.get("attachments", []):
            data = payload[offset:offset + a["length"]]
            offset += a["length"]
            attachments[a["name"]] = Image(data, a.get("width", 0), a.get("height", 0), a["format"])
        return Event(header, attachments)

    def send(self, header: dict[str, Any], attachments: list[tuple[str, Image]] = ()) -> Any:
        """Sends a request (an `id` is added when missing); returns its id."""
        header = dict(header)
        if "id" not in header:
            header["id"] = self._next_id
            self._next_id += 1
        self.sock.sendall(encode_frame(header, attachments))
        return header["id"]

    def request(self, header: dict[str, Any], attachments: list[tuple[str, Image]] = ()) -> Event:
        """Sends a request and returns the first answer to it (raising on an error event);
        events of other requests that arrive first are kept for later."""
        request_id = self.send(header, attachments)
        skipped: list[Event] = []
        try:
            while True:
                event = self.read_event()
                if event.get("id") == request_id:
                    if event.type == "error":
                        raise DaemonError(event["code"], event["message"], event.get("job"))
                    return event
                skipped.append(event)
        finally:
            self._pending = skipped + self._pending

    # -- requests ----------------------------------------------------------------------

    def ping(self) -> None:
        self.request({"type": "ping"})

    def list(self) -> dict[str, Any]:
        return self.request({"type": "list"}).header

    def networks(self, kind: Optional[str] = None) -> list[dict[str, Any]]:
        """The daemon's LoRA, LyCORIS, hypernetwork and VAE files, freshly listed, each a dict
        with `kind`, `name` (what prompts and `sd_vae` use), `alias`, `path`, `file`,
        `base_model` (SD1, SD2, SDXL, Unknown), `base_model_version`, `base_model_name`,
        `trigger_words` ([{"tag", "count"}], most frequent first), `activation_text`,
        `preferred_weight`, `description`, `preview` (an image file's path, or None) and `hash`
        (None until the daemon has computed it). `kind` filters by one of NETWORK_KINDS."""
        if kind is not None and kind not in NETWORK_KINDS:
            raise ValueError(f"unknown network kind {kind!r} (one of {', '.join(NETWORK_KINDS)})")
        listed = self.list().get("networks", [])
        return [n for n in listed if kind is None or n["kind"] == kind]

    def vae_choices(self) -> list[str]:
        """The values of the `sd_vae` parameter, as A1111's SD VAE list: Automatic, None, then
        the VAE files by name."""
        return ["Automatic", "None"] + [n["name"] for n in self.networks("vae")]

    @staticmethod
    def prompt_tag(network: dict[str, Any], weight: Optional[float] = None) -> str:
        """The prompt tag that applies a LoRA, LyCORIS or hypernetwork entry of `networks()`,
        with its preferred weight (else 1), as A1111's card inserts it."""
        tag = "hypernet" if network["kind"] == "hypernetwork" else "lora"
        if weight is None:
            weight = network.get("preferred_weight") or 1
        return f"<{tag}:{network['alias']}:{weight:g}>"

    def png_info(self, png: bytes) -> dict[str, Any]:
        return self.request({"type": "png_info"}, [("image", Image(png, format="png"))]).header

    def read_infotext(self, infotext: str) -> dict[str, Any]:
        """The generation request an infotext describes (`png_info`'s `request`: every field
        under its `params` name), read by the daemon's own parser."""
        return self.request({"type": "png_info", "infotext": infotext}).header.get("request") or {}

    def submit(self, kind: str, header: dict[str, Any], attachments: list[tuple[str, Image]] = ()) -> int:
        """Queues a job; returns its job number (from the `queued` event)."""
        queued = self.request(dict(header, type=kind), attachments)
        return int(queued["job"])

    def img2img(self, image: Image, params: Optional[dict[str, Any]] = None, mode: Optional[str] = None,
                mask: Optional[Image] = None, sketch: Optional[Image] = None,
                preview: Optional[dict[str, Any]] = None) -> int:
        """Queues an img2img / inpaint job (A1111 API parameter names); returns its job.
        `preview`: live previews on progress events, `{"method": "Approx cheap" | "Full",
        "every": N}` (method names as the daemon's `welcome["preview_methods"]`)."""
        header: dict[str, Any] = {"params": params or {}}
        if mode:
            header["mode"] = mode
        if preview is not None:
            header["preview"] = preview
        attachments = [("image", image)]
        if mask is not None:
            attachments.append(("mask", mask))
        if sketch is not None:
            attachments.append(("sketch", sketch))
        return self.submit("img2img", header, attachments)

    def txt2img(self, params: Optional[dict[str, Any]] = None,
                preview: Optional[dict[str, Any]] = None) -> int:
        """Queues a txt2img job (A1111 API parameter names, Hires. fix's `enable_hr`, `hr_*`
        included; what is not given is A1111's UI default); returns its job. `preview` as for
        `img2img`."""
        header: dict[str, Any] = {"params": params or {}}
        if preview is not None:
            header["preview"] = preview
        return self.submit("txt2img", header)

    def interrogate(self, image: Image, method: str = "clip",
                    options: Optional[dict[str, Any]] = None) -> str:
        """The prompt A1111's "Interrogate CLIP" (`method="clip"`) or "Interrogate DeepBooru"
        (`"deepbooru"`) button writes for `image`; `options` are A1111's interrogation settings
        by option key. Queued like a job; raises DaemonError on failure."""
        header: dict[str, Any] = {"method": method}
        if options:
            header["options"] = options
        job = self.submit("interrogate", header, [("image", image)])
        for event in self.events(job):
            if event.type == "done":
                return str(event["caption"])
            if event.type == "error":
                raise DaemonError(event["code"], event["message"], job)
            if event.type == "cancelled":
                raise DaemonError("cancelled", "the interrogation was cancelled", job)
        raise ProtocolError("the interrogation ended without an answer")

    def upscale(self, image: Image, upscaler: str, scale: float = 2.0,
                width: Optional[int] = None, height: Optional[int] = None) -> Image:
        """`image` through the upscaler named `upscaler` (one of `welcome["upscalers"]`) by
        `scale`, or, with `width` and `height`, by the scale that covers that size (A1111's
        extras upscale). Queued like a job; returns the rgba8 result, raises DaemonError on a
        refusal, a failure or a cancel."""
        header: dict[str, Any] = {"upscaler": upscaler}
        if width is None and height is None:
            header["scale"] = scale
        else:
            header["width"], header["height"] = width, height
        job = self.submit("upscale", header, [("image", image)])
        result: Optional[Image] = None
        for event in self.events(job):
            if event.type == "result":
                result = event.attachments.get("image")
            elif event.type == "error":
                raise DaemonError(event["code"], event["message"], job)
            elif event.type == "cancelled":
                raise DaemonError("cancelled", "the upscale was cancelled", job)
        if result is None:
            raise ProtocolError("the upscale ended without a picture")
        return result

    def select_model(self, model: str) -> int:
        return self.submit("select_model", {"model": model})

    def cancel(self, job: int) -> None:
        self.send({"type": "cancel", "job": job})

    def events(self, job: int) -> Iterator[Event]:
        """The events of `job` until it is done, cancelled or failed (other jobs' events on
        this connection are kept for their own iterators)."""
        kept: list[Event] = []
        try:
            while True:
                event = self.read_event()
                if event.get("job") != job:
                    kept.append(event)
                    continue
                yield event
                if event.type in FINAL_EVENTS:
                    return
        finally:
            self._pending = kept + self._pending

    def run(self, job: int) -> list[Event]:
        """Waits for `job`; returns its `result` events, raising DaemonError on failure. The
        `done` event's `warnings` are in `self.warnings` afterwards."""
        results = []
        self.warnings = []
        for event in self.events(job):
            if event.type == "result":
                results.append(event)
            elif event.type == "done":
                self.warnings = list(event.get("warnings") or [])
            elif event.type == "error":
                raise DaemonError(event["code"], event["message"], job)
        return results


def default_socket() -> str:
    """Where the daemon listens by default."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "sdhost", "sdhost.sock")
    import tempfile
    return os.path.join(tempfile.gettempdir(), f"sdhost-{os.getuid()}", "sdhost.sock")
