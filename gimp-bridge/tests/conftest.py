"""Starts the real sdhost daemon (target/release/sdhost) on a temporary socket with tiny
random-weight models for the client tests."""

from __future__ import annotations

import os
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
