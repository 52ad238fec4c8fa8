"""Bad input gets A1111 v1.10.1's error shapes (spec §d.1) and the server keeps serving after
each; `--api-auth` with webuiapi's credentials; a public address without auth refuses to start."""

from __future__ import annotations

import subprocess

import pytest
import requests
import webuiapi

from a1111 import SIZE, b64, init_picture
from conftest import SDHOST, sdhost_env, start_server

TIMEOUT = 120


def still_serving(server) -> None:
    """A small job still runs after the error."""
    answer = requests.post(server.api("img2img"), json={"init_images": [b64(init_picture())],
                                                         "steps": 2, "width": SIZE,
                                                         "height": SIZE, "seed": 1},
                           timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["images"]) == 1


def exception_body(detail: str) -> dict:
    return {"error": "HTTPException", "detail": detail, "body": "", "errors": ""}


def test_malformed_json_is_a_422(server):
    reply = requests.post(server.api("img2img"), data=b'{"prompt": "x",',
                          headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and {"loc", "msg", "type"} <= set(detail[0])
    still_serving(server)


def test_wrong_types_are_a_422_in_pydantics_shape(server):
    reply = requests.post(server.api("img2img"), json={"steps": "many", "width": SIZE},
                          timeout=TIMEOUT)
    assert reply.status_code == 422
    assert reply.json() == {"detail": [{"loc": ["body", "steps"],
                                        "msg": "value is not a valid integer",
                                        "type": "type_error.integer"}]}
    still_serving(server)


def test_a_huge_body_is_refused_and_the_server_goes_on(server):
    """One byte over the default 256 MiB limit, streamed so that the test holds 1 MiB at a time."""
    total = (256 << 20) + 1
    chunk = b"x" * (1 << 20)

    def body():
        yield b'{"prompt": "'
        left = total - 14
        while left > 0:
            part = chunk[:left]
            left -= len(part)
            yield part
        yield b'"}'

    headers = {"Content-Type": "application/json", "Content-Length": str(total)}
    try:
        reply = requests.post(server.api("img2img"), data=body(), headers=headers, timeout=TIMEOUT)
        assert reply.status_code == 413, reply.text[:200]
        assert reply.json()["detail"]
    except requests.ConnectionError:
        pass  # the server may close the connection before reading the rest: a refusal too
    still_serving(server)


def test_bad_base64_is_a1111s_invalid_encoded_image(server):
    for init in ("not base64 at all!", "data:image/png;base64,AAAA", b64(init_picture())[:100]):
        reply = requests.post(server.api("img2img"),
                              json={"init_images": [init], "steps": 2, "width": SIZE,
                                    "height": SIZE}, timeout=TIMEOUT)
        assert reply.status_code == 500, init
        assert reply.json() == {"error": "HTTPException", "detail": "Invalid encoded image",
                                "body": "", "errors": ""}
    still_serving(server)


def test_bad_base64_in_png_info(server):
    reply = requests.post(server.api("png-info"), json={"image": "@@@"}, timeout=TIMEOUT)
    assert reply.status_code == 500
    assert reply.json() == exception_body("Invalid encoded image")


def test_img2img_without_init_images_is_a_404(server):
    reply = requests.post(server.api("img2img"), json={"steps": 2}, timeout=TIMEOUT)
    assert reply.status_code == 404
    assert reply.json() == exception_body("Init image not found")


def test_unknown_routes_are_json_404s(server):
    for method, path in (("GET", "/sdapi/v1/artists"), ("GET", "/sdapi/v1/sd-modules"),
                         ("GET", "/controlnet/version"), ("POST", "/sdapi/v1/txt2img/script"),
                         ("POST", "/sdapi/interpause/txt2img"), ("GET", "/nothing/here")):
        reply = requests.request(method, server.url + path, timeout=TIMEOUT)
        assert reply.status_code == 404, path
        assert reply.json() == {"detail": "Not Found"}, path
    reply = requests.get(server.api("img2img"), timeout=TIMEOUT)
    assert (reply.status_code, reply.json()) == (405, {"detail": "Method Not Allowed"})
    still_serving(server)


def test_unknown_checkpoint_in_options_is_a_500_runtime_error(server):
    reply = requests.post(server.api("options"), json={"sd_model_checkpoint": "nope"},
                          timeout=TIMEOUT)
    assert reply.status_code == 500
    assert reply.json() == {"error": "RuntimeError", "detail": "", "body": "",
                            "errors": "model 'nope' not found"}
    still_serving(server)


@pytest.fixture(scope="module")
def authed(tmp_path_factory, models):
    running = start_server(tmp_path_factory.mktemp("auth"), models, "--api-auth", "ann:s3cret")
    yield running
    running.stop()


def test_basic_auth_with_webuiapi(authed):
    for user, password, detail in ((None, None, "Not authenticated"),
                                   ("ann", "wrong", "Incorrect username or password")):
        auth = (user, password) if user else None
        reply = requests.get(authed.api("options"), auth=auth, timeout=TIMEOUT)
        assert reply.status_code == 401
        assert reply.json() == exception_body(detail)
        assert "WWW-Authenticate" not in reply.headers
    api = webuiapi.WebUIApi(host=authed.host, port=authed.port, username="ann",
                            password="s3cret", steps=2)
    result = api.img2img(images=[init_picture()], prompt="x", seed=2, width=SIZE, height=SIZE)
    assert result.info["all_seeds"] == [2]
    assert api.get_progress()["state"]["job_count"] == 0


def test_a_public_address_without_auth_refuses_to_start(tmp_path, models):
    run = subprocess.run([str(SDHOST), "serve", "--models-dir", str(models), "--socket",
                          str(tmp_path / "s.sock"), "--api-addr", "0.0.0.0:0"],
                         env=sdhost_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "--api-auth" in run.stderr
