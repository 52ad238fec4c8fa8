"""The plug-in's editor-independent half: regions, parameters, placement, and jobs run on a
worker thread against the real daemon."""

from __future__ import annotations

import time

from sdhost_bridge import JobRunner, Region, Settings, context_region, expand_to_aspect, placements, reuse_request
from sdhost_link import Address, connect, start_daemon
from sdhost_client import Client, Image


def rgba(width: int, height: int) -> Image:
    return Image(bytes((x + y + c) % 256 for y in range(height) for x in range(width)
                       for c in range(4)), width, height)


def test_context_region_reads_only_what_the_daemon_crops():
    # Whole picture, or no selection: everything.
    assert context_region(200, 100, None, True, 32, 64, 64) == Region(0, 0, 200, 100)
    assert context_region(200, 100, (10, 10, 20, 20), False, 32, 64, 64) == Region(0, 0, 200, 100)
    # Only masked: bounds + padding, grown to the generation aspect, inside the image.
    assert context_region(200, 100, (90, 40, 110, 50), True, 5, 64, 64) == Region(85, 30, 30, 30)
    assert context_region(200, 100, (0, 0, 10, 10), True, 4, 128, 64) == Region(0, 0, 28, 14)
    # A small selection grown to a minimum context first, clamped by the image.
    region = context_region(200, 100, (98, 48, 102, 52), True, 0, 64, 64, min_context=80)
    assert region == Region(60, 10, 80, 80)
    assert expand_to_aspect(0, 0, 10, 40, 1, 1, 100, 100) == (0, 0, 40, 40)


def test_settings_become_a1111_parameters():
    settings = Settings(mode="inpaint", prompt="x", inpaint_full_res=True, inpainting_fill=0,
                        inpainting_mask_invert=True)
    region = Region(0, 0, 300, 200)
    params = settings.params(region)
    assert (params["width"], params["height"]) == (512, 512)
    assert params["inpainting_fill"] == 0 and params["inpainting_mask_invert"] is True
    assert Settings().params(region)["width"] == 300
    assert Settings(width=64, height=48).params(region)["height"] == 48


def test_a_job_runs_off_the_main_thread_and_places_its_patch(daemon):
    mask = bytearray(48 * 40)
    for y in range(10, 20):
        for x in range(10, 25):
            mask[y * 48 + x] = 255
    region = Region(100, 50, 48, 40)
    runner = JobRunner(daemon.client, {"mode": "inpaint", "params": {
        "prompt": "a tower", "steps": 3, "seed": 21, "inpaint_full_res": True, "width": 32,
        "height": 32, "inpaint_full_res_padding": 4}},
        [("image", rgba(48, 40)), ("mask", Image(bytes(mask), 48, 40, "y8"))])
    seen = []
    outcome = runner.wait(lambda fraction, text: seen.append(fraction))
    assert outcome.status == "done", outcome.error
    assert seen and seen[-1] == 1.0
    (placed,) = placements(outcome.results, region, "a tower")
    assert placed.patch and placed.seed == 21 and placed.name == "sdhost: a tower (21)"
    assert 100 <= placed.x and placed.x + placed.width <= 148
    assert 50 <= placed.y and placed.y + placed.height <= 90
    assert len(placed.rgba) == placed.width * placed.height * 4


def test_a_deadline_cancels_and_an_absent_daemon_is_explained(daemon):
    runner = JobRunner(daemon.client, {"params": {"steps": 1000, "n_iter": 64, "denoising_strength": 1}},
                       [("image", rgba(16, 16))])
    start = time.monotonic()
    outcome = runner.wait(lambda *_: None, lambda: time.monotonic() - start > 0.5)
    assert outcome.status == "cancelled"
    runner = JobRunner(lambda: connect(Address(path="/nonexistent/sdhost.sock")), {}, [])
    outcome = runner.wait(lambda *_: None)
    assert outcome.status == "error" and "sdhost serve" in outcome.error


def test_the_plug_in_can_start_a_detached_daemon(tmp_path):
    from conftest import SDHOST
    import os
    import signal
    socket_path = str(tmp_path / "run" / "sdhost.sock")
    os.environ["XDG_DATA_HOME"] = str(tmp_path / "data")
    try:
        start_daemon(str(SDHOST), socket_path)
        with Client.connect_unix(socket_path) as client:
            assert client.welcome["model"]["demo"] is True
            pid_hint = client.welcome["daemon"]
        assert pid_hint.startswith("sdhost")
    finally:
        os.environ.pop("XDG_DATA_HOME", None)
        # Stop it: it runs in its own session, found by its socket's owner process.
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                except OSError:
                    continue
                if socket_path.encode() in cmd:
                    os.kill(int(pid), signal.SIGTERM)


def test_infotext_of_a_result_is_reused(daemon):
    text = ('a "quoted" cat, (red:1.2)\nsecond line\nNegative prompt: dog\nSteps: 12, Sampler: Euler a, '
            'Schedule type: Karras, CFG scale: 6.5, Seed: 77, Size: 512x384, Denoising strength: 0.4, '
            'Mask blur: 8, Inpaint area: Only masked, Masked area padding: 16, Masked content: fill, '
            'Lora hashes: "a: 1, b: 2"')
    with daemon.client() as client:
        request = client.read_infotext(text)
    settings = reuse_request(Settings(), request)
    assert settings.prompt == 'a "quoted" cat, (red:1.2)\nsecond line' and settings.negative_prompt == "dog"
    assert (settings.steps, settings.sampler_name, settings.scheduler, settings.seed) == (12, "Euler a", "Karras", 77)
    assert (settings.width, settings.height, settings.cfg_scale) == (512, 384, 6.5)
    assert settings.inpaint_full_res and settings.inpaint_full_res_padding == 16 and settings.inpainting_fill == 0
    assert settings.mask_blur == 8 and settings.denoising_strength == 0.4
    # What the dialog sends back is the same request.
    params = settings.params(Region(0, 0, 512, 384))
    for name in ("steps", "sampler_name", "scheduler", "seed", "cfg_scale", "inpainting_fill"):
        assert params[name] == request[name], name


def test_dialog_lists_come_from_the_daemon(daemon):
    from sdhost_bridge import SAMPLERS, fetch_choices, from_slug, slug
    choices = fetch_choices(Address(path=str(daemon.socket)))
    assert choices.models == ("alpha", "beta")
    assert "DPM++ 2M SDE Heun" in choices.samplers and "Karras" in choices.schedules
    assert slug("DPM++ 2M SDE Heun") == "dpmpp-2m-sde-heun" and slug("Euler a") == "euler-a"
    assert from_slug("euler-a", choices.samplers) == "Euler a"
    # Without a daemon: A1111's lists, no models.
    offline = fetch_choices(Address(path="/nonexistent/sdhost.sock"))
    assert offline.samplers == SAMPLERS and offline.models == ()
    assert len({slug(name) for name in SAMPLERS}) == len(SAMPLERS), "identifiers are unique"


def test_settings_send_only_request_fields_with_the_daemons_defaults(daemon):
    """The dialog's parameters are fields of the daemon's one request type (its `list` says
    which, with A1111's defaults), so a renamed or dropped field fails here, not in GIMP."""
    with Client.connect_unix(str(daemon.socket), timeout=30) as client:
        fields = {f["name"]: f["default"] for f in client.list()["request_fields"]}
    params = Settings().params(Region(0, 0, 64, 48))
    shorthands = {"mask_blur"}  # A1111's: sets mask_blur_x and mask_blur_y
    assert set(params) - set(fields) <= shorthands, set(params) - set(fields) - shorthands
    for name in ("prompt", "sampler_name", "scheduler", "steps", "cfg_scale",
                 "denoising_strength", "seed", "n_iter", "batch_size", "clip_skip",
                 "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
                 "resize_mode", "mask_alpha"):
        assert params[name] == fields[name], (name, params[name], fields[name])
    assert params["mask_blur"] == fields["mask_blur_x"] == fields["mask_blur_y"]


def test_dialog_defaults_are_the_daemons_and_the_same_offline(daemon):
    from sdhost_bridge import fetch_choices
    online, offline = fetch_choices(Address(path=str(daemon.socket))), fetch_choices(Address(path="/nonexistent/sdhost.sock"))
    assert online.defaults and not offline.defaults
    for name in ("sampler_name", "scheduler", "steps", "cfg_scale", "denoising_strength", "seed",
                 "n_iter", "batch_size", "resize_mode", "clip_skip", "mask_blur_x",
                 "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res_padding"):
        assert online.default(name) == offline.default(name), name


def test_parasites_carry_any_utf8_text():
    """GIMP's parasite data are C chars (signed in PyGObject): non-ASCII text round-trips."""
    from sdhost_bridge import parasite_payload, parasite_text

    text = "un café, d’été, Cedric Seaut (Keos Masons)"
    payload = parasite_payload(text)
    assert all(-128 <= b <= 127 for b in payload)
    assert parasite_text(payload) == text
    assert parasite_text(text.encode("utf-8")) == text


def test_a_daemon_killed_mid_job_is_explained_and_its_restart_reclaims_the_socket(daemon, tmp_path):
    from conftest import SDHOST
    import os
    import signal
    import subprocess
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_RUNTIME_DIR=str(tmp_path / "run"), SDHOST_CACHE_DIR=str(tmp_path / "cache"))
    socket_path = str(tmp_path / "sdhost.sock")

    def serve() -> subprocess.Popen:
        process = subprocess.Popen([str(SDHOST), "serve", "--socket", socket_path, "--threads", "1", "--model",
                                    str(daemon.models / "alpha.safetensors")], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                Client.connect_unix(socket_path, timeout=5).close()
                return process
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the daemon did not start"
                time.sleep(0.05)

    connect = lambda: Client.connect_unix(socket_path, timeout=60)  # noqa: E731
    first = serve()
    second = None
    try:
        runner = JobRunner(connect, {"params": {"steps": 1000, "n_iter": 64, "denoising_strength": 1}},
                           [("image", rgba(16, 16))])

        def kill_on_first_step(*_: object) -> None:
            if first.poll() is None:
                first.send_signal(signal.SIGKILL)
                first.wait()

        outcome = runner.wait(kill_on_first_step)
        assert outcome.status == "error"
        assert "the sdhost daemon stopped during the job" in outcome.error, outcome.error
        assert os.path.exists(socket_path), "SIGKILL leaves the socket file"
        # A new daemon replaces the stale socket and runs jobs.
        second = serve()
        outcome = JobRunner(connect, {"params": {"steps": 2, "seed": 4}}, [("image", rgba(16, 16))]).wait(
            lambda *_: None)
        assert outcome.status == "done", outcome.error
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
