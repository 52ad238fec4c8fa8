"""Reaching the daemon: preferences set once, Unix socket or TCP with its token, and clear
messages when the daemon is down, refuses the token or speaks another protocol version."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

from conftest import SDHOST
from sdhost_bridge import SAMPLERS, fetch_choices
from sdhost_client import MAGIC
from sdhost_link import Address, DaemonUnavailable, Preferences, connect, too_old


def test_addresses_are_socket_paths_or_host_and_port():
    assert Address.parse("/run/user/1000/sdhost/sdhost.sock").path == "/run/user/1000/sdhost/sdhost.sock"
    assert Address.parse("").path.endswith("sdhost.sock")
    assert Address.parse("gpu-box:7861") == Address(host="gpu-box", port=7861)
    assert Address.parse("tcp://127.0.0.1:7861") == Address(host="127.0.0.1", port=7861)
    assert Address.parse("[::1]:7861") == Address(host="::1", port=7861)
    assert str(Address.parse("gpu-box:7861")) == "gpu-box:7861"
    for bad in ("gpu-box:http", "gpu-box:0", ":7861", "tcp://gpu-box"):
        with pytest.raises(ValueError, match="not a daemon address"):
            Address.parse(bad)


def test_preferences_are_kept_privately_and_survive_a_broken_file(tmp_path):
    assert Preferences.load(str(tmp_path)) == Preferences()
    prefs = Preferences(address="gpu-box:7861", token="ab" * 32, start_daemon=True)
    prefs.save(str(tmp_path))
    path = tmp_path / "sdhost.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Preferences.load(str(tmp_path)) == prefs
    # Unknown keys and wrong types are ignored; garbage gives the defaults.
    path.write_text(json.dumps({"address": 5, "token": "t", "colour": "red"}))
    assert Preferences.load(str(tmp_path)) == Preferences(token="t")
    path.write_text("{not json")
    assert Preferences.load(str(tmp_path)) == Preferences()


def test_a_daemon_that_is_down_is_explained():
    with pytest.raises(DaemonUnavailable, match="cannot reach the sdhost daemon at /nonexistent.*sdhost serve"):
        connect(Address(path="/nonexistent/sdhost.sock"))
    with pytest.raises(DaemonUnavailable, match="Is it running with `sdhost serve --listen 127.0.0.1:9`"):
        connect(Address(host="127.0.0.1", port=9), "x", timeout=2)
    assert "older than this plug-in" in too_old("upscale")


def fake_daemon(answer: dict) -> tuple[socket.socket, int]:
    """A listener that answers any hello with `answer` (as a daemon of another version)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            prefix = conn.recv(12)
            head_len, payload_len = struct.unpack(">II", prefix[4:])
            hello = json.loads(conn.recv(head_len))
            body = json.dumps(dict(answer, id=hello["id"])).encode()
            conn.sendall(MAGIC + struct.pack(">II", len(body), 0) + body)
            time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_an_incompatible_daemon_is_explained():
    server, port = fake_daemon({"type": "error", "code": "protocol_version",
                                "message": "this daemon speaks protocol 2"})
    with server, pytest.raises(DaemonUnavailable, match="incompatible version.*protocol 2"):
        connect(Address(host="127.0.0.1", port=port), "t", timeout=5)
    server, port = fake_daemon({"type": "welcome", "protocol": 2})
    with server, pytest.raises(DaemonUnavailable, match="incompatible version.*speaks protocol 2"):
        connect(Address(host="127.0.0.1", port=port), "t", timeout=5)


def test_an_http_server_is_not_taken_for_the_daemon():
    """An A1111 web UI's port (an easy mistake in the preferences): explained, and the dialog's
    lists fall back to A1111's instead of crashing the plug-in."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    address = Address(host="127.0.0.1", port=server.getsockname()[1])
    with server, pytest.raises(DaemonUnavailable, match="does not answer as an sdhost daemon.*A1111"):
        connect(address, "t", timeout=5)
    assert fetch_choices(Address(path="/nonexistent/sdhost.sock")).samplers == SAMPLERS


def test_one_rule_says_where_the_daemon_is(monkeypatch):
    monkeypatch.setenv("SDHOST_SOCKET", "/env/sdhost.sock")
    prefs = Preferences()
    assert prefs.daemon_address().path == "/env/sdhost.sock"
    assert prefs.daemon_address("host:7861") == Address(host="host", port=7861)
    prefs.address = "/prefs/sdhost.sock"
    assert prefs.daemon_address().path == "/prefs/sdhost.sock"
    monkeypatch.delenv("SDHOST_SOCKET")
    assert Preferences().daemon_address().path.endswith("sdhost.sock")


def test_tcp_with_the_token_and_without(tmp_path):
    """A daemon on TCP (remote use): the right token connects, a wrong one is explained."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_RUNTIME_DIR=str(tmp_path / "run"),
               SDHOST_CACHE_DIR=str(tmp_path / "cache"))
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    subprocess.run([str(SDHOST), "dev", "make-tiny-model", str(models / "t.safetensors")], check=True,
                   env=env, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen([str(SDHOST), "serve", "--models-dir", str(tmp_path / "models"), "--threads", "1",
                               "--listen", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        token_file = tmp_path / "config" / "sdhost" / "token"
        deadline = time.monotonic() + 60
        address = Address(host="127.0.0.1", port=port)
        while True:
            try:
                token = token_file.read_text().strip()
                with connect(address, token, timeout=5) as client:
                    assert client.welcome["protocol"] == 1
                break
            except (OSError, DaemonUnavailable):
                assert time.monotonic() < deadline and daemon.poll() is None, "the daemon did not start"
                time.sleep(0.1)
        with pytest.raises(DaemonUnavailable, match="refused the token.*Preferences"):
            connect(address, "0" * 64, timeout=5)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
