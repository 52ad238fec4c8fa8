"""`scripts/install` end to end: installs the release build into a temporary PREFIX (HOME and
the XDG folders temporary too), runs the installed `sdhost` from `/` and checks, with the
dynamic loader's own log, that its libtorch is the copy under PREFIX, so the clone is not
needed; then a second run (idempotent), `--systemd` without a user systemd, and `--uninstall`.

One install is shared by the tests in file order (libtorch is large to copy)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release"
SDHOST = TARGET / "sdhost"


@pytest.fixture(scope="module", autouse=True)
def release_build() -> None:
    """The build under test: `make test` makes it first; run alone, say what is missing."""
    for path in (SDHOST, TARGET / "libsdhost_samplers.so"):
        if not path.exists():
            pytest.fail(f"{path} is missing: run `make build` first", pytrace=False)


class Install:
    """A PREFIX and a user's folders in a temporary folder."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.prefix = base / "prefix"
        self.env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "SDHOST_PLUGINS_DIR")}
        self.env.update(PREFIX=str(self.prefix), HOME=str(base / "home"), XDG_CONFIG_HOME=str(base / "config"),
                        XDG_DATA_HOME=str(base / "data"), XDG_RUNTIME_DIR=str(base / "run"),
                        SDHOST_CACHE_DIR=str(base / "cache"),
                        # No user systemd here, whatever the machine has.
                        SYSTEMCTL="false")
        self.env.pop("DBUS_SESSION_BUS_ADDRESS", None)

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(ROOT / "scripts" / "install"), *args], env=self.env, cwd="/",
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def sdhost(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.prefix / "bin" / "sdhost"), *args], env={**self.env, **(extra_env or {})},
                              cwd="/", capture_output=True, text=True, timeout=300)

    def files(self) -> dict[str, int]:
        """Every file and link under PREFIX with its size."""
        return {str(p.relative_to(self.prefix)): p.lstat().st_size
                for p in self.prefix.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Install, str]]:
    install = Install(tmp_path_factory.mktemp("install"))
    yield install, install.script().stdout
    # pytest keeps its last temporary folders: not gigabytes of libtorch in them.
    shutil.rmtree(install.prefix, ignore_errors=True)


def source_libtorch() -> Path:
    """The variant root of the libtorch the built binary links (what scripts/install copies)."""
    ldd = subprocess.run(["ldd", str(SDHOST)], capture_output=True, text=True, check=True).stdout
    lib = next(line.split()[2] for line in ldd.splitlines() if line.split()[:1] == ["libtorch_cpu.so"])
    return Path(lib).resolve().parent.parent.parent


def test_layout(installed: tuple[Install, str]) -> None:
    install, output = installed
    lib = install.prefix / "lib" / "sdhost"
    assert os.access(lib / "sdhost", os.X_OK)
    assert (lib / "libsdhost_samplers.so").is_file()
    assert (lib / "libtorch" / "torch" / "lib" / "libtorch_cpu.so").is_file()
    assert not list((lib / "libtorch").rglob("include")), "headers are not installed"
    link = install.prefix / "bin" / "sdhost"
    assert link.is_symlink() and os.readlink(link) == "../lib/sdhost/sdhost"
    manifest = json.loads((lib / "libtorch" / "sdhost-libtorch.json").read_text())
    assert manifest["variant"] in ("cpu", "cuda")
    plugin_dir = install.base / "config" / "GIMP" / "3.0" / "plug-ins" / "sdhost_gimp"
    assert os.access(plugin_dir / "sdhost_gimp.py", os.X_OK)
    for path in (lib / "sdhost", lib / "libsdhost_samplers.so", link, plugin_dir):
        assert str(path) in output, output
    assert "NOT on PATH" in output, output


def test_runs_from_the_copy_without_the_clone(installed: tuple[Install, str]) -> None:
    install, _ = installed
    result = install.sdhost("samplers", extra_env={"LD_DEBUG": "libs"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^Euler a\s", result.stdout, re.M), result.stdout
    assert f"{install.prefix}/lib/sdhost/libsdhost_samplers.so" in result.stdout
    # The loader's log names every library it initialises.
    loaded = re.findall(r"calling init: (\S+)", result.stderr)
    torch = [path for path in loaded if path.endswith("/libtorch_cpu.so")]
    assert torch, result.stderr[-3000:]
    copy = f"{install.prefix}/lib/sdhost/libtorch/"
    assert all(path.startswith(copy) for path in torch), torch
    outside = [path for path in loaded if "torch" in path and not path.startswith(copy)]
    assert not outside, f"libraries loaded from outside the install: {outside}"
    source = str(source_libtorch())
    from_clone = [path for path in loaded if path.startswith((str(ROOT), source))]
    assert not from_clone, f"libraries loaded from the clone or its libtorch: {from_clone}"


def test_doctor_of_the_install(installed: tuple[Install, str]) -> None:
    install, _ = installed
    result = install.sdhost("doctor", "--json")
    report = json.loads(result.stdout)
    # The first check of each name (samplers has a second line, the third-party folder).
    checks: dict = {}
    for check in report["checks"]:
        checks.setdefault(check["name"], check)
    assert checks["gimp plug-in"]["status"] == "ok", checks["gimp plug-in"]
    assert checks["libtorch"]["status"] == "ok"
    assert f"{install.prefix}/lib/sdhost/libtorch/torch/lib/libtorch_cpu.so" in checks["libtorch"]["detail"]
    assert "sdhost-libtorch.json" in checks["libtorch"]["detail"]
    assert checks["samplers"]["status"] == "ok"
    assert f"{install.prefix}/lib/sdhost/libsdhost_samplers.so" in checks["samplers"]["detail"]
    # No daemon or models here: problems, so exit status 1.
    assert result.returncode == 1


def test_a_second_run_is_idempotent(installed: tuple[Install, str]) -> None:
    install, _ = installed
    before = install.files()
    output = install.script().stdout
    assert "libtorch unchanged" in output, output
    assert install.files() == before
    assert not [p.name for p in (install.prefix / "lib").iterdir() if p.name.startswith(".sdhost-")]
    assert install.sdhost("--version").returncode == 0


def test_systemd_unit_without_a_user_systemd(installed: tuple[Install, str]) -> None:
    install, _ = installed
    output = install.script("--systemd").stdout
    unit = install.base / "config" / "systemd" / "user" / "sdhost.service"
    text = unit.read_text()
    assert f"ExecStart={install.prefix}/bin/sdhost serve\n" in text
    assert "Restart=on-failure" in text and "TimeoutStopSec=" in text
    assert "systemctl --user daemon-reload" in output
    assert "systemctl --user enable --now sdhost" in output
    report = json.loads(install.sdhost("doctor", "--json").stdout)
    service = next(c for c in report["checks"] if c["name"] == "service")
    assert service["status"] == "ok" and str(unit) in service["detail"]


def test_uninstall_removes_what_it_installed(installed: tuple[Install, str]) -> None:
    install, _ = installed
    config = install.base / "config" / "sdhost" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('device = "cpu"\n')
    install.script("--uninstall")
    assert install.files() == {}
    assert not (install.base / "config" / "GIMP" / "3.0" / "plug-ins" / "sdhost_gimp").exists()
    assert not (install.base / "config" / "systemd" / "user" / "sdhost.service").exists()
    assert config.exists(), "the user's config stays"
