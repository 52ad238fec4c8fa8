"""How the plug-in reaches the daemon: the preferences set once (address, token, starting the
daemon), connecting to a Unix socket or over TCP, and the messages a user sees when the daemon
is down, stops mid-job, or speaks another protocol version. Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from typing import Optional

from sdhost_client import PROTOCOL_VERSION, Client, DaemonError, ProtocolError, default_socket

# The preferences file, in GIMP's profile folder (Gimp.directory()).
PREFERENCES_FILE = "sdhost.json"


@dataclass
class Preferences:
    """The plug-in's preferences (Filters > sdhost > Preferences): where the daemon is."""

    # A Unix socket's path, or HOST:PORT for TCP (a daemon started with `--listen`); empty:
    # the daemon's default socket.
    address: str = ""
    # The daemon's TCP token (its `~/.config/sdhost/token`); empty: read that file here.
    token: str = ""
    # Start `daemon_command serve` (detached) when no daemon answers on a socket.
    start_daemon: bool = False
    daemon_command: str = "sdhost"

    @classmethod
    def load(cls, folder: str) -> "Preferences":
        """The preferences saved in `folder` (defaults when there are none or they are
        unreadable: a broken file must not stop the plug-in)."""
        try:
            with open(os.path.join(folder, PREFERENCES_FILE), encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return cls()
        known = {f.name: f.type for f in fields(cls)}
        values = {k: v for k, v in saved.items() if k in known} if isinstance(saved, dict) else {}
        prefs = cls()
        for key, value in values.items():
            if isinstance(value, type(getattr(prefs, key))):
                setattr(prefs, key, value)
        return prefs

    def daemon_address(self, override: str = "") -> "Address":
        """Where the daemon is: `override` (a procedure's `socket` argument), else the
        preferences' address, else $SDHOST_SOCKET, else the daemon's default socket. Raises
        ValueError for an address that is neither a path nor HOST:PORT."""
        return Address.parse(override or self.address or os.environ.get("SDHOST_SOCKET", ""))

    def save(self, folder: str) -> None:
        """Writes the preferences (mode 0600: the token is a credential)."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, PREFERENCES_FILE)
        temp = path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(temp, path)


@dataclass(frozen=True)
class Address:
    """Where a daemon listens: a Unix socket path, or a TCP host and port."""

    path: Optional[str] = None
    host: Optional[str] = None
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> "Address":
        """A path (anything with a `/`, or empty: the default socket), or HOST:PORT
        (`tcp://` optional, `[::1]:7860` for IPv6)."""
        text = text.strip()
        if text.startswith("tcp://"):
            text = text[len("tcp://"):]
        elif not text or "/" in text or ":" not in text:
            return cls(path=text or default_socket())
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a daemon address: {text!r} (a socket path or HOST:PORT)")
        return cls(host=host, port=int(port))

    def __str__(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def local_token() -> str:
    """The token a daemon of this user on this machine uses for TCP, or ""."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    try:
        with open(os.path.join(config, "sdhost", "token"), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


class DaemonUnavailable(Exception):
    """The daemon cannot be used: not running, unreachable, refusing us, or incompatible."""


def connect(address: Address, token: str = "", timeout: Optional[float] = None) -> Client:
    """A connection to the daemon, its protocol version checked. Raises DaemonUnavailable
    with a message for the user."""
    try:
        if address.path is not None:
            client = Client.connect_unix(address.path, timeout=timeout)
        else:
            client = Client.connect_tcp(address.host or "", address.port, token or local_token(),
                                        timeout=timeout)
    except DaemonError as error:
        if error.code == "protocol_version":
            raise DaemonUnavailable(incompatible(address, error.message)) from error
        if error.code == "unauthorized":
            raise DaemonUnavailable(
                f"the sdhost daemon at {address} refused the token: set the token of that "
                f"daemon (its ~/.config/sdhost/token) in Filters > sdhost > Preferences") from error
        raise DaemonUnavailable(f"the sdhost daemon at {address} refused the connection: "
                                f"{error.message}") from error
    except OSError as error:
        raise DaemonUnavailable(unreachable(address, error)) from error
    except ProtocolError as error:
        raise DaemonUnavailable(
            f"{address} does not answer as an sdhost daemon ({error}): is it another server, "
            f"such as an A1111 web UI or sdhost's own HTTP API port? Give the daemon's socket or "
            f"its --listen address in Filters > sdhost > Preferences") from error
    except (ValueError, KeyError) as error:
        raise DaemonUnavailable(incompatible(address, f"its answer was not understood ({error})")) from error
    if client.welcome.get("protocol") != PROTOCOL_VERSION:
        client.close()
        raise DaemonUnavailable(incompatible(address, f"it speaks protocol {client.welcome.get('protocol')}"))
    return client


def incompatible(address: Address, detail: str) -> str:
    return (f"the sdhost daemon at {address} is of an incompatible version ({detail}; this "
            f"plug-in speaks protocol {PROTOCOL_VERSION}): install the plug-in that comes with "
            f"that daemon (gimp-bridge/install.sh)")


def unreachable(address: Address, error: OSError) -> str:
    """The message shown when the daemon cannot be reached."""
    if address.path is not None:
        return (f"cannot reach the sdhost daemon at {address.path} ({error}). Start it with "
                f"`sdhost serve`, or turn on \"Start the daemon\" in Filters > sdhost > Preferences.")
    return (f"cannot reach the sdhost daemon at {address} ({error}). Is it running with "
            f"`sdhost serve --listen {address}`, and is the address in Filters > sdhost > "
            f"Preferences right?")


def lost(error: Exception) -> str:
    """The message shown when the daemon's connection breaks during a job (it crashed, was
    killed or stopped): not "cannot reach", since it was reached."""
    return (f"the sdhost daemon stopped during the job ({error}): it crashed or was stopped. "
            f"Run the job again (the plug-in starts the daemon when it is not running), or "
            f"start it with `sdhost serve` and read its log.")


def too_old(request: str) -> str:
    """The message shown when the daemon does not know a request the plug-in needs."""
    return (f"the sdhost daemon does not know `{request}` requests: it is older than this "
            f"plug-in. Update sdhost (and restart the daemon).")


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


def ensure_daemon(address: Address, prefs: Preferences) -> None:
    """Starts the daemon on a socket address when the preferences say so and none answers."""
    if address.path is None or not prefs.start_daemon:
        return
    try:
        Client.connect_unix(address.path, timeout=5).close()
    except OSError:
        try:
            start_daemon(prefs.daemon_command, address.path)
        except OSError as error:
            raise DaemonUnavailable(f"could not start the sdhost daemon: {error}") from error
