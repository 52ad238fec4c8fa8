"""Starts the real sdhost daemon (target/release/sdhost) on a temporary socket with tiny
random-weight models for the client tests."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "gimp-bridge"))

from sdhost_client import Client  # noqa: E402

SDHOST = ROOT / "target" / "release" / "sdhost"


class Daemon:
    def __init__(self, socket: Path, models: Path, process: subprocess.Popen) -> None:
        self.socket = socket
        self.models = models
        self.process = process

    def client(self) -> Client:
        return Client.connect_unix(str(self.socket), timeout=120)


def write_safetensors(path: Path, keys: list[str], metadata: dict[str, str], seed: int) -> None:
    """A small safetensors file (2x4 float32 tensors of distinct values), written by hand so the
    tests need nothing beyond the standard library."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    data = b""
    for i, key in enumerate(keys):
        values = struct.pack("<8f", *[0.01 * (j + seed) + 0.1 * i + 0.003 for j in range(8)])
        header[key] = {"dtype": "F32", "shape": [2, 4], "data_offsets": [len(data), len(data) + 32]}
        data += values
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


def write_networks(models: Path) -> None:
    """An A1111 models folder's networks: a kohya LoRA with metadata and a preview, a LyCORIS
    file and a VAE file."""
    write_safetensors(models / "Lora" / "detail.safetensors",
                      ["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"],
                      {"ss_output_name": "add_detail", "ss_base_model_version": "sd_v1",
                       "ss_tag_frequency": json.dumps({"5_x": {"detailed": 9, "sharp": 4}})}, 1)
    from PIL import Image as Pil
    Pil.new("RGB", (8, 8), (200, 30, 30)).save(models / "Lora" / "detail.preview.png")
    (models / "Lora" / "detail.json").write_text(json.dumps({"preferred weight": 0.6}))
    write_safetensors(models / "LyCORIS" / "loha.safetensors",
                      ["lora_unet_mid_block_attentions_0_proj_out.hada_w1_a"], {}, 2)
    write_safetensors(models / "VAE" / "kl-f8.safetensors", ["decoder.conv_out.bias"], {}, 3)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    if not SDHOST.exists():
        pytest.fail(f"{SDHOST} is missing: build with `cargo build --release` (make test does)")
    base = tmp_path_factory.mktemp("daemon")
    env = dict(os.environ, XDG_CONFIG_HOME=str(base / "config"), XDG_DATA_HOME=str(base / "data"),
               XDG_RUNTIME_DIR=str(base / "run"), SDHOST_CACHE_DIR=str(base / "cache"))
    models = base / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for name, seed in (("alpha", "1"), ("beta", "2")):
        subprocess.run([str(SDHOST), "dev", "make-tiny-model", str(models / f"{name}.safetensors"),
                        "--seed", seed], check=True, env=env, capture_output=True)
    write_networks(base / "models")
    # Tiny BLIP, CLIP and DeepDanbooru where A1111 keeps them, for `interrogate`.
    subprocess.run([sys.executable, str(ROOT / "tests" / "reference" / "interrogate_models.py"),
                    "--write-models", str(base / "models")], check=True, capture_output=True)
    # A tiny random ESRGAN where A1111 keeps model upscalers, for `upscale`.
    reference = base / "upscaler_reference"
    subprocess.run([sys.executable, str(ROOT / "tests" / "reference" / "upscaler_reference.py"),
                    str(reference)], check=True, capture_output=True)
    (base / "models" / "ESRGAN").mkdir()
    (base / "models" / "ESRGAN" / "tiny_esrgan.pth").write_bytes(
        (reference / "models" / "esrgan_4x.pth").read_bytes())
    socket = base / "run" / "sdhost" / "sdhost.sock"
    process = subprocess.Popen([str(SDHOST), "serve", "--models-dir", str(base / "models"),
                                "--threads", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            Client.connect_unix(str(socket), timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("the daemon did not start")
            time.sleep(0.05)
    yield Daemon(socket, models, process)
    process.terminate()
    process.wait(timeout=30)
