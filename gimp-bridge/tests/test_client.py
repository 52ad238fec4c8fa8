"""The Python client against the real daemon: handshake, jobs in every attachment format,
inpainting patches, png_info, model selection, errors, a client killed mid-job, interrogation
and upscaling."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from PIL import Image as Pil

from conftest import ROOT, SDHOST
from sdhost_client import Client, DaemonError, Image, encode_frame


def rgba(width: int, height: int) -> Image:
    pixels = bytes((x * 7 + y * 3 + c * 50) % 256 for y in range(height) for x in range(width)
                   for c in range(4))
    return Image(pixels, width, height, "rgba8")


def test_welcome_lists_models_samplers_and_limits(daemon):
    with daemon.client() as client:
        welcome = client.welcome
        assert welcome["protocol"] == 1
        assert welcome["daemon"].startswith("sdhost ")
        assert welcome["models"] == ["alpha", "beta"]
        assert welcome["model"]["name"] == "alpha"
        assert welcome["model"]["demo"] is False
        assert "Euler a" in [s["name"] for s in welcome["samplers"]]
        assert "Karras" in welcome["schedules"]
        assert welcome["limits"]["max_pixels"] > 0
        client.ping()
        assert client.list()["models"] == ["alpha", "beta"]


def test_img2img_and_inpaint_results(daemon):
    with daemon.client() as client:
        job = client.img2img(rgba(40, 32), params={"prompt": "a house", "seed": 7, "steps": 3,
                                                   "n_iter": 2, "sampler_name": "Euler a"})
        results = client.run(job)
        assert [r["seed"] for r in results] == [7, 8]
        image = results[0].attachments["image"]
        assert (image.width, image.height, image.format) == (40, 32, "rgba8")
        assert len(image.data) == 40 * 32 * 4
        assert "Seed: 7" in results[0]["infotext"]

        # A PNG input and a y8 mask: the patch comes back with its offset.
        buffer = io.BytesIO()
        Pil.frombytes("RGBA", (48, 48), rgba(48, 48).data).save(buffer, format="PNG")
        mask = bytearray(48 * 48)
        for y in range(10, 20):
            for x in range(30, 40):
                mask[y * 48 + x] = 255
        job = client.img2img(Image(buffer.getvalue(), format="png"),
                             params={"steps": 2, "seed": 1, "inpaint_full_res": True,
                                     "inpaint_full_res_padding": 4, "width": 32, "height": 32},
                             mask=Image(bytes(mask), 48, 48, "y8"))
        (result,) = client.run(job)
        patch = result.attachments["patch"]
        x, y = result["patch"]["x"], result["patch"]["y"]
        assert 0 <= x and x + patch.width <= 48 and 0 <= y and y + patch.height <= 48
        assert result.attachments["image"].width == 48
        assert "Inpaint area: Only masked" in result["infotext"]


def test_png_info_reads_infotext(daemon):
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nNegative prompt: dog\nSteps: 5, Sampler: Euler, Seed: 3")
    buffer = io.BytesIO()
    Pil.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    with daemon.client() as client:
        answer = client.png_info(buffer.getvalue())
    assert answer["prompt"] == "a cat"
    assert answer["negative_prompt"] == "dog"
    assert answer["parameters"]["Steps"] == "5"


def test_errors_are_daemon_errors_and_the_connection_goes_on(daemon):
    with daemon.client() as client:
        with pytest.raises(DaemonError) as error:
            client.img2img(rgba(8, 8), params={"stepz": 3})
        assert error.value.code == "bad_request"
        job = client.img2img(rgba(16, 16), params={"sampler_name": "Nope"})
        with pytest.raises(DaemonError) as error:
            client.run(job)
        assert error.value.code == "invalid_params"
        with pytest.raises(DaemonError) as error:
            client.request({"type": "teleport"})
        assert error.value.code == "unknown_request"
        client.ping()


def test_select_model_switches_and_reports(daemon):
    with daemon.client() as client:
        job = client.select_model("beta")
        events = list(client.events(job))
        assert events[-1].type == "done" and events[-1]["model"] == "beta"
        assert client.list()["model"]["name"] == "beta"
        job = client.img2img(rgba(16, 16), params={"steps": 2})
        (result,) = client.run(job)
        assert "Model: beta" in result["infotext"]
        with pytest.raises(DaemonError) as error:
            client.run(client.select_model("gamma"))
        assert error.value.code == "unknown_model"
        client.run(client.select_model("alpha"))


def test_cancel_stops_a_job(daemon):
    with daemon.client() as client:
        job = client.img2img(rgba(16, 16), params={"steps": 1000, "n_iter": 64, "denoising_strength": 1})
        for event in client.events(job):
            if event.type == "progress" and event["step"] >= 1:
                client.cancel(job)
            if event.type in ("cancelled", "done", "error"):
                assert event.type == "cancelled"
                break


def test_a_killed_client_frees_the_daemon(daemon):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "gimp-bridge")!r})
        from sdhost_client import Client, Image
        client = Client.connect_unix({str(daemon.socket)!r})
        job = client.img2img(Image(bytes(16 * 16 * 4), 16, 16), params={{"steps": 1000, "n_iter": 64}})
        for event in client.events(job):
            if event.type == "progress":
                print("running", flush=True)
                break
        import time
        time.sleep(600)
    """)
    doomed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert doomed.stdout.readline().strip() == "running"
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    # Its 64000-step job must have stopped, or this one would never run (the socket
    # timeout turns a hang into a failure).
    with daemon.client() as client:
        (result,) = client.run(client.img2img(rgba(16, 16), params={"steps": 2, "seed": 9}))
        assert result["seed"] == 9


def test_frames_match_the_documented_layout():
    frame = encode_frame({"type": "ping", "id": 1})
    assert frame[:4] == b"SDH1"
    head_len = int.from_bytes(frame[4:8], "big")
    assert int.from_bytes(frame[8:12], "big") == 0
    assert frame[12:12 + head_len] == b'{"type": "ping", "id": 1}'


def test_interrogate_gives_the_prompt_of_sdhost_interrogate(daemon, tmp_path):
    """`Client.interrogate` (the GIMP procedure's call) answers what the command line prints."""
    width, height = 40, 24
    rgba = b"".join(bytes((x * 6 % 256, y * 9 % 256, 70, 255)) for y in range(height) for x in range(width))
    path = tmp_path / "picture.png"
    Pil.frombytes("RGBA", (width, height), rgba).save(path)
    models = daemon.models.parent
    with daemon.client() as client:
        for method in ("clip", "deepbooru"):
            printed = subprocess.run([str(SDHOST), "interrogate", str(path), "--method", method,
                                      "--models-dir", str(models), "--json"],
                                     capture_output=True, check=True,
                                     env=dict(os.environ, SDHOST_CACHE_DIR=str(tmp_path)))
            expected = json.loads(printed.stdout)["caption"]
            assert client.interrogate(Image(rgba, width, height), method) == expected
        with pytest.raises(DaemonError) as refused:
            client.interrogate(Image(rgba, width, height), "blip")
        assert refused.value.code == "bad_request"


def test_upscale_by_a_scale_or_to_a_size_with_the_listed_upscalers(daemon):
    """`Client.upscale` (the GIMP `sdhost-upscale` procedure's call): Lanczos as Pillow's, alpha
    kept; the tiny ESRGAN of the models folder to cover a size; refusals as DaemonError."""
    width, height = 20, 12
    pixels = b"".join(bytes((x * 12 % 256, y * 20 % 256, 90, 0 if x < 10 else 255))
                      for y in range(height) for x in range(width))
    with daemon.client() as client:
        assert client.welcome["upscalers"] == ["None", "Lanczos", "Nearest", "tiny_esrgan"]
        assert client.list()["upscalers"] == client.welcome["upscalers"]
        out = client.upscale(Image(pixels, width, height), "Lanczos", scale=2)
        assert (out.width, out.height, out.format) == (40, 24, "rgba8")
        got = Pil.frombytes("RGBA", (40, 24), out.data)
        # A1111's Lanczos upscaler is Pillow's LANCZOS resize.
        expected = Pil.frombytes("RGBA", (width, height), pixels).convert("RGB").resize(
            (40, 24), Pil.LANCZOS)
        diff = max(abs(a - b) for a, b in zip(got.convert("RGB").tobytes(), expected.tobytes()))
        assert diff <= 1
        assert got.getpixel((0, 0))[3] == 0 and got.getpixel((39, 23))[3] == 255

        # Scale 2.5 covers 50x30; 50x30 rounded down to multiples of 8.
        out = client.upscale(Image(pixels, width, height), "tiny_esrgan", width=50, height=30)
        assert (out.width, out.height) == (48, 24)

        with pytest.raises(DaemonError) as refused:
            client.upscale(Image(pixels, width, height), "4x-UltraSharp")
        assert refused.value.code == "invalid_params"
        assert "None, Lanczos, Nearest, tiny_esrgan" in refused.value.message
        with pytest.raises(DaemonError) as refused:
            client.upscale(Image(pixels, width, height), "Lanczos", scale=9)
        assert refused.value.code == "invalid_params"
        client.ping()
