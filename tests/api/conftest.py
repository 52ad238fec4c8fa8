"""Starts the real `target/release/sdhost serve --api-addr 127.0.0.1:0` over an A1111 models
folder of tiny random-weight models, for the end-to-end tests of the A1111 HTTP API
(shared/spec/a1111-api-clients.md): the `webuiapi` client from PyPI and raw requests shaped like
each surveyed editor plug-in's.

Everything runs at 64x64 with a few steps so that the suite takes well under two minutes on
two cores."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SDHOST = ROOT / "target" / "release" / "sdhost"
sys.path.insert(0, str(Path(__file__).parent))

# The checkpoints of the models folder: file stem → (make-tiny-model family, seed).
CHECKPOINTS = {"alpha": ("sd1", "1"), "beta": ("sd1", "2"), "gamma-inpainting": ("sd1-inpaint", "3")}


def sdhost_env(base: Path) -> dict[str, str]:
    """sdhost's XDG folders and cache inside `base`, so that no test touches the user's."""
    return dict(os.environ, XDG_CONFIG_HOME=str(base / "config"), XDG_DATA_HOME=str(base / "data"),
                XDG_RUNTIME_DIR=str(base / "run"), SDHOST_CACHE_DIR=str(base / "cache"))


def write_safetensors(path: Path, keys: list[str], metadata: dict[str, str]) -> None:
    """A small safetensors file (2x4 float32 tensors), enough for the listings."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    data = b""
    for i, key in enumerate(keys):
        header[key] = {"dtype": "F32", "shape": [2, 4], "data_offsets": [len(data), len(data) + 32]}
        data += struct.pack("<8f", *[0.01 * j + 0.1 * i for j in range(8)])
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


def make_models(base: Path, env: dict[str, str]) -> Path:
    """An A1111 models/ folder: three tiny checkpoints (one inpainting), a LoRA, a VAE file and
    the interrogation models (BLIP/, clip/, torch_deepdanbooru/, ../interrogate/)."""
    models = base / "models"
    checkpoints = models / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    for stem, (family, seed) in CHECKPOINTS.items():
        subprocess.run([str(SDHOST), "dev", "make-tiny-model", str(checkpoints / f"{stem}.safetensors"),
                        "--family", family, "--seed", seed], check=True, env=env, capture_output=True)
    write_safetensors(models / "Lora" / "detail.safetensors",
                      ["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"],
                      {"ss_output_name": "add_detail", "ss_base_model_version": "sd_v1"})
    write_safetensors(models / "VAE" / "kl-f8.safetensors", ["decoder.conv_out.bias"], {})
    # Tiny BLIP, CLIP and DeepDanbooru where A1111 keeps them, for /interrogate.
    subprocess.run([sys.executable, str(ROOT / "tests" / "reference" / "interrogate_models.py"),
                    "--write-models", str(models)], check=True, capture_output=True)
    return models


@dataclass
class Server:
    """A running `sdhost serve` with the API."""

    process: subprocess.Popen
    url: str
    models: Path
    base: Path
    output: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def api(self, path: str) -> str:
        """The URL of `/sdapi/v1/<path>`."""
        return f"{self.url}/sdapi/v1/{path}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(base: Path, models: Path, *extra: str) -> Server:
    """`sdhost serve --models-dir MODELS --api-addr 127.0.0.1:0 EXTRA…`, once it prints its
    address (port 0: the OS picks a free one, so parallel runs never collide)."""
    if not SDHOST.exists():
        pytest.fail(f"{SDHOST} is missing: build with `cargo build --release` (make test does)")
    base.mkdir(parents=True, exist_ok=True)
    args = [str(SDHOST), "serve", "--models-dir", str(models), "--threads", "1",
            "--socket", str(base / "sdhost.sock")]
    if "--api-addr" not in extra:
        args += ["--api-addr", "127.0.0.1:0"]
    process = subprocess.Popen(args + list(extra), env=sdhost_env(base), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    found: list[str] = []
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith("sdhost: A1111 API on "):
                found.append(line.split(" on ", 1)[1].strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 60
    while not found:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("sdhost serve did not start:\n" + "".join(output))
        time.sleep(0.02)
    server = Server(process, found[0], models, base, output)
    while True:
        try:
            requests.get(server.api("progress"), timeout=5)
            return server
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail("the API does not answer")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models")
    return make_models(base, sdhost_env(base))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, models: Path):
    """The shared server (the first checkpoint, alpha, loaded)."""
    running = start_server(tmp_path_factory.mktemp("serve"), models)
    yield running
    running.stop()


@pytest.fixture
def alpha_loaded(server: Server):
    """Leaves the shared server on the alpha checkpoint after the test, whatever it switched to."""
    yield
    requests.post(server.api("options"), json={"sd_model_checkpoint": "alpha"}, timeout=120)
