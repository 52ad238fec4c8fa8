"""The soak test of docs/reliability.md: one `sdhost serve` (a tiny random-weight model, 64x64,
a few steps) driven by N clients at once, half over the Unix socket (gimp-bridge's
sdhost_client.py, two jobs in flight per connection) and half over the A1111 HTTP API, each
running M jobs with seeded random cancels and abrupt disconnects. It checks that

* every socket job ends exactly once (`done`, `cancelled` or `error`), every HTTP request is
  answered, and no event reaches a connection that did not queue its job;
* every result belongs to its job: its seed and its infotext's prompt token and `Seed:`;
* every cancel is honoured: a socket `cancel` ends the job with `cancelled` (or is answered
  `unknown_job` because the job had already ended), an HTTP `/interrupt` answers the running
  request at once with what it made, a socket that is closed mid-job stops that job at once;
* the daemon's RSS grows by less than --max-rss-growth-mb, its open files and threads come
  back to their warmed-up counts, and it still answers `ping`.

`make soak` runs 8 clients x 50 jobs; tests/soak/test_soak.py runs 8 x 5 in `make test`.
Standard library only, besides sdhost_client.py; Linux (/proc)."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "gimp-bridge"))

from sdhost_client import Client, Event, Image, ProtocolError  # noqa: E402

SIZE = 64
# Jobs that get cancelled or cut off run this many steps plus the client's index: long
# enough (seconds) that the stop is seen well before they could finish, and a value no other
# running job has, so /progress tells whose job runs.
STOPPED_STEPS = 600
# HTTP requests that are cut off still run to the end (A1111 does not notice a client that
# went away either), so they are kept short.
HTTP_DROPPED_STEPS = 120
# A job queued behind a socket job whose connection is then cut runs this many steps plus the
# client's index, if it ever runs: it must not (the daemon drops a closed connection's queue).
DROPPED_QUEUED_STEPS = 700
# Outcomes that are not one of the clients' planned jobs.
EXTRA_OUTCOME = "socket jobs queued behind a disconnect, dropped"
# A stopped job must end (or leave /progress) within this many seconds of the stop.
STOP_WITHIN_S = 4.0


def default_sdhost() -> Path:
    """The release build's sdhost, in CARGO_TARGET_DIR when that is set."""
    target = os.environ.get("CARGO_TARGET_DIR")
    return Path(target) / "release" / "sdhost" if target else ROOT / "target" / "release" / "sdhost"


# The most the daemon's RSS may grow from after the warm-up to after the run (measured: 2 to
# 6 MB, the same for 40 jobs as for 1600: what libtorch's allocator keeps, not a leak).
RSS_GROWTH_LIMIT_MB = 24.0


# -- the daemon -------------------------------------------------------------------------

@dataclass
class Daemon:
    """A running `sdhost serve` with its socket and HTTP address."""

    process: subprocess.Popen
    socket_path: str
    http: tuple[str, int]
    output: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_daemon(sdhost: Path, base: Path) -> Daemon:
    """A tiny model in `base`, and `sdhost serve` on it with a socket and the HTTP API."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(base / "config"), XDG_DATA_HOME=str(base / "data"),
               XDG_RUNTIME_DIR=str(base / "run"), SDHOST_CACHE_DIR=str(base / "cache"))
    model = base / "models" / "Stable-diffusion" / "tiny.safetensors"
    subprocess.run([str(sdhost), "dev", "make-tiny-model", str(model)], check=True, env=env,
                   capture_output=True)
    socket_path = str(base / "sdhost.sock")
    process = subprocess.Popen(
        [str(sdhost), "serve", "--models-dir", str(base / "models"), "--threads", "1",
         "--socket", socket_path, "--api-addr", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith("sdhost: A1111 API on "):
                found.append(line.split(" on ", 1)[1].strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while not (found and os.path.exists(socket_path)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("sdhost serve did not start:\n" + "".join(output))
        time.sleep(0.05)
    host, port = found[0].split("//", 1)[1].rsplit(":", 1)
    return Daemon(process, socket_path, (host, int(port)), output)


@dataclass
class Usage:
    """What the daemon process holds: resident memory, open files, threads."""

    rss_kb: int
    fds: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> "Usage":
        rss = 0
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return cls(rss, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")))


# -- HTTP ------------------------------------------------------------------------------

def http_call(address: tuple[str, int], method: str, path: str, body: Any = None,
              timeout: float = 120) -> tuple[int, Any]:
    """One request on its own connection; the status and the decoded JSON answer."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def progress(address: tuple[str, int]) -> dict[str, Any]:
    """/sdapi/v1/progress's `state`."""
    status, answer = http_call(address, "GET", "/sdapi/v1/progress?skip_current_image=true", timeout=30)
    if status != 200:
        raise RuntimeError(f"/progress answered {status}")
    return answer["state"]


def wait_running(address: tuple[str, int], steps: int, timeout: float = 300) -> bool:
    """Waits until the running job is the one of `steps` sampler steps and has made a step;
    False when it was not seen running (it may have been dropped while waiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = progress(address)
        if state["job_count"] and state["sampling_steps"] == steps and state["sampling_step"] >= 1:
            return True
        time.sleep(0.01)
    return False


def wait_gone(address: tuple[str, int], steps: int, timeout: float) -> bool:
    """Whether the job of `steps` sampler steps stops showing in /progress within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = progress(address)
        # Idle, /progress keeps the last job's fields (as A1111's does).
        if not state["job_count"] or state["sampling_steps"] != steps:
            return True
        time.sleep(0.01)
    return False


def png_rgb(width: int, height: int, seed: int) -> bytes:
    """A small PNG of a seeded colour gradient (img2img's init image over HTTP)."""
    raw = b"".join(b"\x00" + b"".join(bytes(((x * 4 + seed) % 256, (y * 4) % 256, (seed * 7) % 256))
                                     for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def rgba(width: int, height: int, seed: int) -> Image:
    """A seeded RGBA8 picture (img2img's init image over the socket)."""
    data = bytes(v for y in range(height) for x in range(width)
                 for v in ((x * 4 + seed) % 256, (y * 4) % 256, (seed * 7) % 256, 255))
    return Image(data, width, height)


# -- the run's bookkeeping ---------------------------------------------------------------

@dataclass
class Tally:
    """Counts and failures, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


@dataclass
class JobPlan:
    """One job a client runs: its unique prompt token and seed, its kind and fate."""

    client: int
    index: int
    action: str  # "finish", "cancel_queued", "cancel_running", "cancel_late", "disconnect"
    mode: str  # "txt2img" or "img2img"
    seed: int
    steps: int
    batch: int
    # cancel_late: the step after which the cancel is sent; steps + 1: after the result.
    cancel_at: int = 0

    @property
    def token(self) -> str:
        return f"soakc{self.client}j{self.index}"

    def params(self) -> dict[str, Any]:
        params = {"prompt": f"a lighthouse, {self.token}", "seed": self.seed, "steps": self.steps,
                  "width": SIZE, "height": SIZE, "batch_size": self.batch, "sampler_name": "Euler"}
        if self.mode == "img2img":
            params["denoising_strength"] = 1.0  # every step runs: sampling_steps == steps
        return params


def check_result(tally: Tally, plan: JobPlan, index: int, seed: int, infotext: str, where: str) -> None:
    """A result belongs to its job: the job's seed (+ batch index), prompt token, `Seed:`."""
    expected = plan.seed + index
    if seed != expected or plan.token not in infotext or f"Seed: {expected}," not in infotext:
        tally.fail(f"{where}: misrouted result for {plan.token} (index {index}): seed {seed}, "
                   f"infotext {infotext[:120]!r}")


def plan_jobs(rng: random.Random, client: int, jobs: int, http_client: bool) -> list[JobPlan]:
    """A client's jobs: mostly finished ones, some cancelled, some cut off by a disconnect."""
    plans = []
    for index in range(jobs):
        roll = rng.random()
        if roll < 0.12:
            action = "cancel_running"
        elif roll < 0.2 and not http_client:
            action = "cancel_queued"
        elif roll < 0.26 and not http_client:
            action = "cancel_late"
        elif roll < 0.3:
            action = "disconnect"
        else:
            action = "finish"
        stopped = action in ("cancel_running", "disconnect")
        steps = rng.randint(3, 6)
        if stopped:
            steps = (HTTP_DROPPED_STEPS if http_client and action == "disconnect" else STOPPED_STEPS) + client
        plans.append(JobPlan(
            client=client, index=index, action=action,
            mode="txt2img" if stopped or rng.random() < 0.5 else "img2img",
            seed=100000 * (client + 1) + 100 * index, steps=steps,
            batch=1 if stopped or action == "cancel_late" else rng.choice((1, 1, 2)),
            cancel_at=rng.randint(1, steps + 1)))
    return plans


# -- a socket client ---------------------------------------------------------------------

class SocketDriver:
    """One socket client: its jobs two at a time on one connection (the second queued behind
    the first), a new connection after a disconnect."""

    def __init__(self, daemon: Daemon, tally: Tally, rng: random.Random, plans: list[JobPlan]) -> None:
        self.daemon = daemon
        self.tally = tally
        self.rng = rng
        self.plans = plans
        self.client: Optional[Client] = None

    def connect(self) -> Client:
        if self.client is None:
            self.client = Client.connect_unix(self.daemon.socket_path, timeout=120)
            self.client.ping()
        return self.client

    def run(self) -> None:
        pending = list(self.plans)
        while pending:
            # A disconnect cuts off everything in flight: it goes alone.
            group = [pending.pop(0)]
            if group[0].action != "disconnect" and pending and pending[0].action != "disconnect":
                group.append(pending.pop(0))
            self.run_group(group)
        if self.client is not None:
            self.client.close()

    def submit(self, client: Client, plan: JobPlan) -> Any:
        header: dict[str, Any] = {"type": plan.mode, "params": plan.params()}
        attachments = [("image", rgba(SIZE, SIZE, plan.seed % 251))] if plan.mode == "img2img" else []
        return client.send(header, attachments)

    def run_group(self, group: list[JobPlan]) -> None:
        client = self.connect()
        where = f"socket client {group[0].client}"
        by_request = {self.submit(client, plan): plan for plan in group}
        behind = None
        if group[0].action == "disconnect":
            # A job waiting behind the one cut off: the disconnect must drop it unrun.
            behind = client.send({"type": "txt2img", "params": {
                "prompt": "never runs", "steps": DROPPED_QUEUED_STEPS + group[0].client,
                "width": SIZE, "height": SIZE}})
        jobs: dict[int, JobPlan] = {}
        ended: dict[int, str] = {}
        results: dict[int, int] = {}
        cancels: dict[Any, int] = {}  # cancel request id → job
        while len(ended) < len(group):
            try:
                event = client.read_event()
            except (ProtocolError, OSError) as e:
                self.tally.fail(f"{where}: connection lost: {e}")
                self.client = None
                return
            kind, request = event.type, event.get("id")
            if request in cancels:
                job = cancels.pop(request)
                if kind == "error" and event.get("code") == "unknown_job" and ended.get(job) == "done":
                    continue
                self.tally.fail(f"{where}: cancel of job {job} answered {event.header}")
                continue
            if behind is not None and request == behind:
                if kind != "queued":
                    self.tally.fail(f"{where}: the job queued behind a disconnect sent {event.header}")
                continue
            if request not in by_request:
                self.tally.fail(f"{where}: an event for a request it did not send: {event.header}")
                continue
            plan = by_request[request]
            if kind == "queued":
                jobs[event["job"]] = plan
                if plan.action == "cancel_queued":
                    cancels[client.send({"type": "cancel", "job": event["job"]})] = event["job"]
                continue
            job = event.get("job")
            if jobs.get(job) is not plan:
                self.tally.fail(f"{where}: event for job {job} not of request {request}: {event.header}")
                continue
            if job in ended:
                self.tally.fail(f"{where}: job {job} ({plan.token}) had already ended: {event.header}")
                continue
            late = plan.action == "cancel_late" and job not in cancels.values()
            if kind == "progress" and event.get("step", 0) >= 1:
                if plan.action == "cancel_running" and job not in cancels.values():
                    cancels[client.send({"type": "cancel", "job": job})] = job
                elif late and event["step"] >= plan.cancel_at:
                    cancels[client.send({"type": "cancel", "job": job})] = job
                elif plan.action == "disconnect":
                    self.disconnect(plan)
                    if behind is not None:
                        self.tally.count(EXTRA_OUTCOME)
                    return
            elif kind == "result":
                results[job] = results.get(job, 0) + 1
                check_result(self.tally, plan, event["index"], event["seed"], event["infotext"], where)
                if late:
                    cancels[client.send({"type": "cancel", "job": job})] = job
            elif kind in ("done", "cancelled", "error"):
                ended[job] = kind
                self.settle(where, plan, job, kind, event, results.get(job, 0))
        # A cancel that finds its job running or queued has no answer of its own (the job's
        # `cancelled` is it); one that comes after the job ended is answered `unknown_job`.
        # The `pong` to a ping sent now comes after every such answer.
        ping = client.send({"type": "ping"})
        while True:
            event = client.read_event()
            request = event.get("id")
            if request == ping and event.type == "pong":
                break
            job = cancels.pop(request, None)
            if job is None or event.type != "error" or event.get("code") != "unknown_job":
                self.tally.fail(f"{where}: unexpected event after its jobs ended: {event.header}")
            elif ended.get(job) == "cancelled":
                self.tally.fail(f"{where}: job {job} was cancelled yet its cancel was refused")
        for job in cancels.values():
            if ended.get(job) != "cancelled":
                self.tally.fail(f"{where}: job {job} ({jobs[job].token}) ended {ended.get(job)} "
                                f"although its cancel was accepted")

    def settle(self, where: str, plan: JobPlan, job: int, kind: str, event: Event, results: int) -> None:
        """Checks how a job ended against what was asked of it."""
        if kind == "error":
            self.tally.fail(f"{where}: job {job} ({plan.token}) failed: {event.header}")
        elif plan.action == "finish":
            if kind != "done" or results != plan.batch:
                self.tally.fail(f"{where}: job {job} ({plan.token}) ended {kind} with {results} "
                                f"of {plan.batch} images")
            self.tally.count("socket jobs done")
        elif plan.action in ("cancel_queued", "cancel_running", "cancel_late"):
            # `done` only when the cancel came too late, which its `unknown_job` answer proves
            # (checked in run_group); a queued job is cancelled before making anything.
            if kind == "cancelled":
                self.tally.count("socket cancels honoured")
                if plan.action == "cancel_queued" and results:
                    self.tally.fail(f"{where}: job {job} cancelled while queued made {results} images")
            else:
                self.tally.count("socket cancels too late (job had ended)")

    def disconnect(self, plan: JobPlan) -> None:
        """Cuts the connection mid-job, as GIMP's SIGKILL does (RST or FIN at random), and
        checks that the daemon stops the job at once."""
        assert self.client is not None
        if self.rng.random() < 0.5:
            self.client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.close()
        self.client = None
        if wait_gone(self.daemon.http, plan.steps, STOP_WITHIN_S):
            self.tally.count("socket disconnects honoured")
        else:
            self.tally.fail(f"socket client {plan.client}: job {plan.token} still ran "
                            f"{STOP_WITHIN_S} s after its connection closed")


# -- an HTTP client ----------------------------------------------------------------------

class HttpDriver:
    """One A1111 API client: one request at a time, as A1111 clients do."""

    def __init__(self, daemon: Daemon, tally: Tally, plans: list[JobPlan]) -> None:
        self.daemon = daemon
        self.tally = tally
        self.plans = plans

    def body(self, plan: JobPlan) -> dict[str, Any]:
        body = plan.params()
        if plan.mode == "img2img":
            body["init_images"] = [base64.b64encode(png_rgb(SIZE, SIZE, plan.seed % 251)).decode()]
        return body

    def run(self) -> None:
        for plan in self.plans:
            where = f"http client {plan.client}"
            try:
                if plan.action == "finish":
                    self.finish(plan, where)
                elif plan.action == "cancel_running":
                    self.interrupt(plan, where)
                else:
                    self.drop(plan, where)
            except (OSError, http.client.HTTPException, ValueError, KeyError, RuntimeError) as e:
                self.tally.fail(f"{where}: {plan.token}: {type(e).__name__}: {e}")

    def check_answer(self, plan: JobPlan, status: int, answer: Any, where: str, images: Optional[int]) -> None:
        if status != 200:
            self.tally.fail(f"{where}: {plan.token} answered {status}: {str(answer)[:200]}")
            return
        info = json.loads(answer["info"])
        if images is not None and len(answer["images"]) != images:
            self.tally.fail(f"{where}: {plan.token}: {len(answer['images'])} images, not {images}")
        for index, infotext in enumerate(info["infotexts"]):
            check_result(self.tally, plan, index, info["all_seeds"][index], infotext, where)

    def finish(self, plan: JobPlan, where: str) -> None:
        status, answer = http_call(self.daemon.http, "POST", f"/sdapi/v1/{plan.mode}", self.body(plan), timeout=600)
        self.check_answer(plan, status, answer, where, plan.batch)
        self.tally.count("http jobs done")

    def interrupt(self, plan: JobPlan, where: str) -> None:
        """Starts the request, waits until its job runs, POSTs /interrupt: the request must be
        answered at once with the images made so far (A1111's semantics)."""
        answered: list[tuple[int, Any, float]] = []

        def request() -> None:
            status, answer = http_call(self.daemon.http, "POST", f"/sdapi/v1/{plan.mode}", self.body(plan), timeout=600)
            answered.append((status, answer, time.monotonic()))

        thread = threading.Thread(target=request)
        thread.start()
        if not wait_running(self.daemon.http, plan.steps):
            thread.join()
            self.tally.fail(f"{where}: {plan.token} was never seen running")
            return
        sent = time.monotonic()
        status, _ = http_call(self.daemon.http, "POST", "/sdapi/v1/interrupt", {}, timeout=30)
        if status != 200:
            self.tally.fail(f"{where}: /interrupt answered {status}")
        thread.join(timeout=600)
        if not answered:
            self.tally.fail(f"{where}: {plan.token} was never answered after /interrupt")
            return
        status, answer, at = answered[0]
        self.check_answer(plan, status, answer, where, None)
        if at - sent > STOP_WITHIN_S:
            self.tally.fail(f"{where}: {plan.token} answered {at - sent:.1f} s after /interrupt")
        else:
            self.tally.count("http interrupts honoured")

    def drop(self, plan: JobPlan, where: str) -> None:
        """Sends the request and closes the connection once its job runs. A1111 runs such a
        job to its end; the daemon must do the same and then free what the request held."""
        conn = http.client.HTTPConnection(*self.daemon.http, timeout=600)
        conn.request("POST", f"/sdapi/v1/{plan.mode}", body=json.dumps(self.body(plan)).encode(),
                     headers={"Content-Type": "application/json"})
        seen = wait_running(self.daemon.http, plan.steps)
        assert conn.sock is not None
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        if not seen:
            self.tally.fail(f"{where}: {plan.token} was never seen running")
        elif wait_gone(self.daemon.http, plan.steps, 120):
            self.tally.count("http requests dropped mid-job")
        else:
            self.tally.fail(f"{where}: {plan.token} still runs 120 s after its client left")


# -- the run ---------------------------------------------------------------------------

@dataclass
class Report:
    """What a soak run measured."""

    clients: int
    jobs: int
    wall_s: float
    before: Usage
    after: Usage
    peak_rss_kb: int
    counts: dict[str, int]
    failures: list[str]

    @property
    def rss_growth_mb(self) -> float:
        return (self.after.rss_kb - self.before.rss_kb) / 1024

    def lines(self) -> list[str]:
        out = [f"soak: {self.clients} clients x {self.jobs} jobs in {self.wall_s:.0f} s",
               f"  RSS {self.before.rss_kb / 1024:.1f} MB -> {self.after.rss_kb / 1024:.1f} MB "
               f"(growth {self.rss_growth_mb:+.1f} MB, peak {self.peak_rss_kb / 1024:.1f} MB)",
               f"  open files {self.before.fds} -> {self.after.fds}, "
               f"threads {self.before.threads} -> {self.after.threads}"]
        out += [f"  {what}: {n}" for what, n in sorted(self.counts.items())]
        out += [f"  FAIL {f}" for f in self.failures]
        return out


def warm_up(daemon: Daemon) -> None:
    """One job of each kind and a cancel, so that what the daemon allocates once (libtorch's
    pools, the HTTP runtime's threads) is in the baseline."""
    with Client.connect_unix(daemon.socket_path, timeout=300) as client:
        for mode, attachments in (("txt2img", []), ("img2img", [("image", rgba(SIZE, SIZE, 1))])):
            job = client.submit(mode, {"params": {"prompt": "warm", "steps": 3, "width": SIZE,
                                                  "height": SIZE, "seed": 1}}, attachments)
            client.run(job)
    for mode in ("txt2img", "img2img"):
        body: dict[str, Any] = {"prompt": "warm", "steps": 3, "width": SIZE, "height": SIZE, "seed": 1}
        if mode == "img2img":
            body["init_images"] = [base64.b64encode(png_rgb(SIZE, SIZE, 1)).decode()]
        status, _ = http_call(daemon.http, "POST", f"/sdapi/v1/{mode}", body)
        if status != 200:
            raise RuntimeError(f"warm-up {mode} answered {status}")


def settled(daemon: Daemon, baseline: Usage, timeout: float) -> Usage:
    """The daemon's usage once idle and back to `baseline`'s files and threads, or after
    `timeout` (the HTTP runtime lets an idle blocking thread go after 10 s)."""
    deadline = time.monotonic() + timeout
    while True:
        state = progress(daemon.http)
        usage = Usage.of(daemon.pid)
        idle = state["job_count"] == 0
        if idle and usage.fds <= baseline.fds and usage.threads <= baseline.threads:
            return usage
        if time.monotonic() > deadline:
            return usage
        time.sleep(0.5)


def soak(clients: int, jobs: int, seed: int, sdhost: Path, max_rss_growth_mb: float) -> Report:
    """Runs the soak and returns its report (failures included): its own daemon in a scratch
    folder, stopped by SIGTERM at the end, which must exit 0."""
    with tempfile.TemporaryDirectory(prefix="sdhost-soak-") as scratch:
        daemon = start_daemon(sdhost, Path(scratch))
        try:
            report = drive(daemon, clients, jobs, seed, max_rss_growth_mb)
        finally:
            code = daemon.stop()
        if code != 0:
            report.failures.append(f"sdhost serve exited with {code} on SIGTERM:\n"
                                   + "".join(daemon.output[-20:]))
        return report


def drive(daemon: Daemon, clients: int, jobs: int, seed: int, max_rss_growth_mb: float) -> Report:
    tally = Tally()
    warm_up(daemon)
    # The HTTP runtime lets an idle blocking thread go after 10 s: the baseline is without them,
    # so that a thread leaked by the run shows.
    time.sleep(11)
    before = settled(daemon, Usage(1 << 30, 1 << 30, 1 << 30), 0)
    rng = random.Random(seed)
    drivers: list[Any] = []
    for client in range(clients):
        http_client = client % 2 == 1
        plans = plan_jobs(rng, client, jobs, http_client)
        own = random.Random(rng.random())
        drivers.append(HttpDriver(daemon, tally, plans) if http_client
                       else SocketDriver(daemon, tally, own, plans))

    def guarded(driver: Any) -> None:
        try:
            driver.run()
        except Exception as e:  # a driver's own crash is a failed run, not a hang
            tally.fail(f"client crashed: {type(e).__name__}: {e}")

    peak = [before.rss_kb]
    running = threading.Event()
    running.set()

    seen_steps: set[int] = set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], Usage.of(daemon.pid).rss_kb)
            state = progress(daemon.http)
            if state["job_count"]:
                seen_steps.add(state["sampling_steps"])
            time.sleep(0.5)

    started = time.monotonic()
    threads = [threading.Thread(target=guarded, args=(d,)) for d in drivers]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    running.clear()
    sampler.join()
    # Every outcome counted is one job's: none lost means they add up to all of them.
    accounted = sum(n for what, n in tally.counts.items() if what != EXTRA_OUTCOME)
    if accounted != clients * jobs and not tally.failures:
        tally.fail(f"{clients * jobs - accounted} jobs lost: {accounted} of {clients * jobs} accounted for")
    ran = sorted(s - DROPPED_QUEUED_STEPS for s in seen_steps if 0 <= s - DROPPED_QUEUED_STEPS < clients)
    if ran:
        tally.fail(f"jobs queued behind a disconnect ran anyway (clients {ran})")
    after = settled(daemon, before, 30)
    if after.fds > before.fds:
        tally.fail(f"open files {before.fds} -> {after.fds}")
    if after.threads > before.threads:
        tally.fail(f"threads {before.threads} -> {after.threads}")
    growth = (after.rss_kb - before.rss_kb) / 1024
    if growth > max_rss_growth_mb:
        tally.fail(f"RSS grew {growth:.1f} MB (limit {max_rss_growth_mb} MB)")
    try:
        with Client.connect_unix(daemon.socket_path, timeout=30) as client:
            client.ping()
    except (OSError, ProtocolError) as e:
        tally.fail(f"the daemon does not answer ping after the run: {e}")
    if daemon.process.poll() is not None:
        tally.fail(f"the daemon exited with {daemon.process.returncode}")
    panics = [line for line in daemon.output if "panick" in line]
    if panics:
        tally.fail("the daemon panicked: " + "".join(panics[:5]))
    return Report(clients, jobs, wall, before, after, max(peak[0], after.rss_kb), dict(tally.counts), list(tally.failures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="clients at once, half socket, half HTTP")
    parser.add_argument("--jobs", type=int, default=50, help="jobs per client")
    parser.add_argument("--seed", type=int, default=1, help="seed of the cancels and disconnects")
    parser.add_argument("--sdhost", type=Path, default=default_sdhost(), help="the sdhost binary")
    parser.add_argument("--max-rss-growth-mb", type=float, default=RSS_GROWTH_LIMIT_MB,
                        help="fail when the daemon's RSS grows more than this over the run")
    args = parser.parse_args()
    report = soak(args.clients, args.jobs, args.seed, args.sdhost, args.max_rss_growth_mb)
    print("\n".join(report.lines()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
