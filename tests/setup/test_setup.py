"""The run-time set-up (scripts/setup) from scratch, twice, as a new user's machine runs it.

Each run gets a fresh "clone" (a copy of scripts/) and empty user cache and data folders, so it
downloads libtorch from PyPI and the category lists as a first `make run` does. The two results
must be the same files, a repeated run must change nothing, a damaged or half-made libtorch
folder must be repaired, and a failure must name its step, keep its log and say how to retry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDER = "2.13.0-cpu"


def clone_scripts(into: Path) -> Path:
    into.mkdir(parents=True)
    shutil.copytree(REPO / "scripts", into / "scripts")
    return into


def run_setup(clone: Path, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(XDG_CACHE_HOME=str(home / "cache"), XDG_DATA_HOME=str(home / "data"),
               SDHOST_TORCH_VARIANT="cpu")
    env.update(extra)
    return subprocess.run([str(clone / "scripts/setup")], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=900)


def digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def two_setups(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    runs = []
    for name in ("first", "second"):
        base = tmp_path_factory.mktemp(name)
        clone, home = clone_scripts(base / "clone"), base / "home"
        done = run_setup(clone, home)
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append((clone, home))
    return runs


def test_two_runs_from_scratch_make_the_same_files(two_setups: list[tuple[Path, Path]]) -> None:
    (clone_a, home_a), (clone_b, home_b) = two_setups
    lib_a = home_a / "cache/sdhost/libtorch" / FOLDER
    lib_b = home_b / "cache/sdhost/libtorch" / FOLDER
    assert (clone_a / ".libtorch").resolve() == lib_a.resolve()
    assert (clone_b / ".libtorch").resolve() == lib_b.resolve()
    assert digest_tree(lib_a) == digest_tree(lib_b)
    manifest = json.loads((lib_a / "sdhost-libtorch.json").read_text())
    assert manifest["torch"] == "2.13.0" and manifest["variant"] == "cpu"
    libs = {Path(f).name for f in manifest["files"] if f.startswith("torch/lib/")}
    assert libs == {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1",
                    "libcudart.so.13", "libcupti.so.13"}
    assert (lib_a / "torch/build-version").read_text() == "2.13.0"
    assert (lib_a / "torch/include/torch/csrc/api/include/torch/torch.h").is_file()
    # Nothing but the libtorch folder and the logs stays in the cache: no wheels, no scratch.
    cache = home_a / "cache/sdhost"
    assert sorted(p.name for p in cache.iterdir()) == ["libtorch", "logs"]
    assert sorted(p.name for p in (cache / "libtorch").iterdir()) == [FOLDER]
    assert tree_size(lib_a) < 600 << 20
    lists_a = digest_tree(home_a / "data/sdhost/interrogate")
    assert lists_a == digest_tree(home_b / "data/sdhost/interrogate")
    assert {"artists.txt", "flavors.txt", "mediums.txt", "movements.txt"} <= set(lists_a)


def test_a_second_run_changes_nothing(two_setups: list[tuple[Path, Path]]) -> None:
    clone, home = two_setups[0]
    lib = home / "cache/sdhost/libtorch" / FOLDER
    before = {str(p): p.stat().st_mtime_ns for p in lib.rglob("*")}
    started = time.monotonic()
    done = run_setup(clone, home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout
    assert "downloading" not in done.stdout
    assert {str(p): p.stat().st_mtime_ns for p in lib.rglob("*")} == before
    # A check of sizes, not a download: far below the download's tens of seconds.
    assert time.monotonic() - started < 20


def test_a_damaged_or_interrupted_setup_is_repaired(two_setups: list[tuple[Path, Path]]) -> None:
    (clone, home), (_, home_b) = two_setups
    libtorch = home / "cache/sdhost/libtorch"
    with open(libtorch / FOLDER / "torch/lib/libc10.so", "r+b") as lib:
        lib.truncate(1000)
    (libtorch / f"{FOLDER}.partial-left-by-a-crash").mkdir()
    done = run_setup(clone, home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "downloading" in done.stdout
    assert sorted(p.name for p in libtorch.iterdir()) == [FOLDER]
    expected = digest_tree(home_b / "cache/sdhost/libtorch" / FOLDER)
    assert digest_tree(libtorch / FOLDER) == expected


def test_a_failed_download_names_its_step_and_how_to_retry(tmp_path: Path) -> None:
    clone, home = clone_scripts(tmp_path / "clone"), tmp_path / "home"
    done = run_setup(clone, home, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_FIND_LINKS="",
                     PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="2")
    assert done.returncode == 1
    assert "downloading the libtorch wheels failed" in done.stderr
    assert "re-run" in done.stderr
    log = home / "cache/sdhost/logs/libtorch-cpu-download.log"
    assert str(log) in done.stderr and log.is_file()
    # Nothing half made is left where a later run would take it for finished.
    assert not (home / "cache/sdhost/libtorch" / FOLDER).exists()
    assert not (clone / ".libtorch").exists()


def test_an_unknown_variant_is_refused(tmp_path: Path) -> None:
    clone, home = clone_scripts(tmp_path / "clone"), tmp_path / "home"
    done = run_setup(clone, home, SDHOST_TORCH_VARIANT="rocm")
    assert done.returncode == 1
    assert "SDHOST_TORCH_VARIANT must be auto, cpu or cuda" in done.stderr
