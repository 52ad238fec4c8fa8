#!/usr/bin/env python3
"""Makes the libtorch that sdhost builds against and runs on, cut from PyPI's torch wheels.

tch 0.26 needs libtorch 2.13.0. PyPI ships it only inside the `torch` wheel, whose Linux build
carries CUDA. Without an NVIDIA GPU sdhost needs six libraries and the headers of that wheel
(about 540 MB to download, 490 MB on disk) instead of the 4.7 GB Python install; with one it
needs the CUDA libraries of the `nvidia-*` wheels as well. This script downloads exactly those
wheels with pip (so pip's index, proxy and certificate settings apply), extracts what libtorch
needs into a folder outside the clone, checks it, and links it into the clone as `.libtorch`.

The folder, `$XDG_CACHE_HOME/sdhost/libtorch/<version>-<variant>/` (default `~/.cache`), has the
layout of the wheels, which the libraries' own RPATH (`$ORIGIN/../../nvidia/...`) relies on:
`torch/lib/`, `torch/include/`, `torch/build-version` (read by torch-sys's version check),
`nvidia/*/lib/` (CUDA only) and `sdhost-libtorch.json`, the manifest of every file. It is made in
a scratch folder and renamed into place, so an interrupted run leaves nothing half made; a run
whose manifest checks out does nothing. The wheels are deleted after extraction: the folder is
the cache.

Usage: libtorch.py [--variant auto|cpu|cuda] [--link PATH] [--cache DIR]
The variant defaults to $SDHOST_TORCH_VARIANT, else `auto`: cuda where an NVIDIA driver is
present (/proc/driver/nvidia/version or `nvidia-smi -L`), else cpu.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TORCH = "2.13.0"
# The CUDA 13.0 stack that torch 2.13.0 requires on Linux (its METADATA: cuda-toolkit[...]==13.0.3
# and the nvidia-*-cu13 pins), resolved to exact versions so both variants are reproducible.
CUDA_WHEELS = [
    "nvidia-cublas==13.1.1.3",
    "nvidia-cuda-cupti==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cudnn-cu13==9.20.0.48",
    "nvidia-cufft==12.0.0.61",
    "nvidia-cufile==1.15.1.6",
    "nvidia-curand==10.4.0.35",
    "nvidia-cusolver==12.0.4.66",
    "nvidia-cusparse==12.6.3.3",
    "nvidia-cusparselt-cu13==0.8.1",
    "nvidia-nccl-cu13==2.29.7",
    "nvidia-nvjitlink==13.5.37",
    "nvidia-nvshmem-cu13==3.4.5",
    "nvidia-nvtx==13.0.85",
]
# libtorch_cpu.so NEEDs the CUDA runtime and CUPTI even in a CPU-only process, so the CPU
# variant takes those two libraries from their (small) wheels.
CPU_WHEELS = ["nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cupti==13.0.85"]
CPU_LIBS = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1"}
CPU_CUDA_LIBS = {"libcudart.so.13", "libcupti.so.13"}
# Only the Python extension needs these; the C++ API never loads them.
PYTHON_ONLY = {"libtorch_python.so", "libshm.so", "libtorch_global_deps.so"}
MANIFEST = "sdhost-libtorch.json"


class StepError(Exception):
    """A set-up step failed; the message says which and how to retry."""


def log(message: str) -> None:
    print(f"scripts/setup: {message}", flush=True)


def nvidia_driver_present() -> bool:
    if Path("/proc/driver/nvidia/version").exists():
        return True
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0 and b"GPU" in found.stdout


def choose_variant(asked: str) -> str:
    if asked in ("cpu", "cuda"):
        return asked
    if asked != "auto":
        raise StepError(f"SDHOST_TORCH_VARIANT must be auto, cpu or cuda, not {asked!r}")
    return "cuda" if nvidia_driver_present() else "cpu"


def wanted(variant: str, member: str) -> str | None:
    """Where a wheel member goes in the libtorch folder, or None to leave it out."""
    name = member.rsplit("/", 1)[-1]
    if member.startswith("torch/include/") and not member.endswith("/"):
        return member
    if member.startswith("torch/lib/") and name and member.count("/") == 2:
        if variant == "cpu":
            return member if name in CPU_LIBS else None
        return None if name in PYTHON_ONLY or name.endswith(".a") else member
    if member.startswith("nvidia/") and "/lib/" in member and ".so" in name:
        if variant == "cpu":
            # Beside libtorch_cpu.so: its RPATH has $ORIGIN, and the linker finds them there too.
            return f"torch/lib/{name}" if name in CPU_CUDA_LIBS else None
        return member
    return None


def check(root: Path) -> bool:
    """Whether `root` is a complete libtorch folder as its manifest describes it."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if manifest.get("torch") != TORCH or not files:
        return False
    for rel, size in files.items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def pip_command() -> list[str]:
    """A pip to download with: this Python's, else one in a small venv in the cache."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [sys.executable, "-m", "pip"]
    venv = cache_home() / "pip-venv"
    if not (venv / "bin/pip").exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            raise StepError(
                "no pip: this Python has neither pip nor venv (on Debian/Ubuntu: "
                "apt install python3-pip or python3-venv), then re-run"
            )
    return [str(venv / "bin/python"), "-m", "pip"]


def cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sdhost"


def download(specs: list[str], into: Path, log_path: Path, what: str = "the libtorch wheels") -> list[Path]:
    """Downloads the wheels for this Python and platform; pip's own cache is bypassed, since
    what is extracted from them is what is kept."""
    command = pip_command() + [
        "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--progress-bar", "off", "-d", str(into), *specs,
    ]
    with open(log_path, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise StepError(
            f"downloading {what} failed (pip exit {done.returncode}; log: {log_path}). "
            "Check the network or pip's index settings (PIP_INDEX_URL) and re-run: "
            "finished steps are kept"
        )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != len(specs):
        raise StepError(f"pip left {len(wheels)} wheels for {len(specs)} packages (log: {log_path})")
    return wheels


def extract(variant: str, wheels: list[Path], into: Path) -> dict[str, int]:
    files: dict[str, int] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                target = wanted(variant, info.filename)
                if target is None:
                    continue
                path = into / target
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(path, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                if ".so" in path.name:
                    path.chmod(0o755)
                files[target] = path.stat().st_size
    return files


def verify(variant: str, root: Path) -> None:
    lib = root / "torch/lib"
    need = CPU_LIBS | CPU_CUDA_LIBS if variant == "cpu" else CPU_LIBS | {"libtorch_cuda.so"}
    missing = sorted(n for n in need if not (lib / n).is_file())
    if missing:
        raise StepError(f"the wheels lacked {', '.join(missing)}: not torch {TORCH}'s layout")
    if not (root / "torch/include/torch/csrc/api/include/torch/torch.h").is_file():
        raise StepError("the torch wheel has no C++ headers (torch/include)")


def make(variant: str, root: Path) -> None:
    cache = root.parent
    cache.mkdir(parents=True, exist_ok=True)
    logs = cache_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Leftovers of an interrupted run.
    for stale in cache.glob(f"{root.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=cache))
    try:
        specs = [f"torch=={TORCH}"] + (CPU_WHEELS if variant == "cpu" else CUDA_WHEELS)
        log(f"downloading libtorch {TORCH} ({variant}) from the torch wheel on PyPI "
            f"({'about 540 MB' if variant == 'cpu' else 'about 3 GB'})")
        wheels = download(specs, scratch / "wheels", logs / f"libtorch-{variant}-download.log")
        log("extracting the libraries and headers")
        tree = scratch / "libtorch"
        files = extract(variant, wheels, tree)
        verify(variant, tree)
        (tree / "torch/build-version").write_text(TORCH)
        files["torch/build-version"] = len(TORCH)
        manifest = {
            "torch": TORCH,
            "variant": variant,
            "wheels": [w.name for w in wheels],
            "files": dict(sorted(files.items())),
        }
        (tree / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if root.exists():
            shutil.rmtree(root)
        tree.rename(root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def link(root: Path, link_path: Path) -> None:
    """Points `link_path` at `root`, replacing the link in one step."""
    if link_path.is_symlink() and os.readlink(link_path) == str(root):
        return
    if link_path.exists() and not link_path.is_symlink():
        raise StepError(f"{link_path} exists and is not a link: move it away and re-run")
    tmp = link_path.with_name(link_path.name + ".new")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(root)
    tmp.replace(link_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default=os.environ.get("SDHOST_TORCH_VARIANT", "auto"))
    parser.add_argument("--link", type=Path, help="symlink to point at the libtorch folder")
    parser.add_argument("--cache", type=Path, help="folder for libtorch folders (default: the user cache)")
    args = parser.parse_args()
    try:
        variant = choose_variant(args.variant)
        root = (args.cache or cache_home() / "libtorch") / f"{TORCH}-{variant}"
        if check(root):
            log(f"libtorch {TORCH} ({variant}) up to date in {root}")
        else:
            make(variant, root)
            log(f"libtorch {TORCH} ({variant}) ready in {root}")
        if args.link:
            link(root.resolve(), args.link)
    except StepError as error:
        print(f"scripts/setup: libtorch step failed: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"scripts/setup: libtorch step failed: {error}; re-run to retry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
