"""sdhost's A1111 API driven by the `webuiapi` client from PyPI (pinned 0.9.17), as its users
call it: generation, inpainting, options and model switching, the listings, png-info, progress,
interrupt and `util_wait_for_ready`."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest
import webuiapi
from PIL import Image, ImageChops

from a1111 import SIZE, generation_checks, init_picture, square_mask
from conftest import SDHOST, sdhost_env

TITLE = re.compile(r"^(?P<name>.+\.safetensors) \[(?P<hash>[0-9a-f]{10})\]$")


@pytest.fixture
def api(server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host=server.host, port=server.port, steps=4)


def titles(api: webuiapi.WebUIApi) -> dict[str, str]:
    """Checkpoint stem → its `/sd-models` title."""
    return {m["model_name"]: m["title"] for m in api.get_sd_models()}


def test_txt2img_answers_images_with_infotext_and_info(api):
    result = api.txt2img(prompt="a red house", negative_prompt="blurry", seed=123, batch_size=2,
                         width=SIZE, height=SIZE, cfg_scale=6)
    assert len(result.images) == 2
    info = result.info
    assert info["seed"] == 123
    assert info["all_seeds"] == [123, 124]
    assert info["prompt"] == "a red house"
    assert info["sampler_name"] == "Euler a"
    assert info["index_of_first_image"] == 0
    assert len(info["infotexts"]) == 2
    for image, infotext, seed in zip(result.images, info["infotexts"], (123, 124)):
        assert image.size == (SIZE, SIZE)
        assert image.mode == "RGB"
        assert image.info["parameters"] == infotext
        assert infotext.startswith("a red house\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a")
        assert f"Seed: {seed}," in infotext
    assert result.parameters["prompt"] == "a red house"
    again = api.txt2img(prompt="a red house", negative_prompt="blurry", seed=124, width=SIZE,
                        height=SIZE, cfg_scale=6)
    # The same seed alone gives the same picture, up to the last bit of a batched convolution.
    difference = ImageChops.difference(again.images[0], result.images[1].convert("RGB"))
    assert max(high for _, high in difference.getextrema()) <= 2


def test_img2img_is_deterministic_and_keeps_the_size(api):
    init = init_picture()
    kwargs = dict(images=[init], prompt="a cottage", seed=7, width=SIZE, height=SIZE,
                  denoising_strength=0.5)
    first = api.img2img(**kwargs)
    second = api.img2img(**kwargs)
    assert first.images[0].size == (SIZE, SIZE)
    assert first.images[0].tobytes() == second.images[0].tobytes()
    assert first.info["all_seeds"] == [7]
    assert "Denoising strength: 0.5" in first.info["infotexts"][0]
    assert first.parameters["init_images"] is None, "not echoed without include_init_images"


def test_inpainting_with_a_mask_changes_only_the_masked_area(api):
    init = init_picture()
    result = api.img2img(images=[init], mask_image=square_mask(), prompt="a window", seed=3,
                         width=SIZE, height=SIZE, inpainting_fill=1, inpaint_full_res=False,
                         mask_blur=2, denoising_strength=1.0)
    out = result.images[0].convert("RGB")
    assert out.size == (SIZE, SIZE)
    corner = (0, 0, SIZE // 8, SIZE // 8)
    assert out.crop(corner).tobytes() == init.crop(corner).tobytes(), "outside the mask kept"
    middle = (3 * SIZE // 8, 3 * SIZE // 8, 5 * SIZE // 8, 5 * SIZE // 8)
    assert ImageChops.difference(out.crop(middle), init.crop(middle)).getbbox() is not None
    assert "Mask blur: 2" in result.info["infotexts"][0]


def test_inpainting_with_the_inpainting_checkpoint(api, alpha_loaded):
    inpainting = titles(api)["gamma-inpainting"]
    result = api.img2img(images=[init_picture()], mask_image=square_mask("RGB"), prompt="a door",
                         seed=4, width=SIZE, height=SIZE,
                         override_settings={"sd_model_checkpoint": inpainting})
    assert result.info["is_using_inpainting_conditioning"] is True
    assert "Model: gamma-inpainting" in result.info["infotexts"][0]


def test_options_get_and_set(api):
    options = api.get_options()
    current = options["sd_model_checkpoint"]
    assert current == titles(api)["alpha"], "the loaded model's exact /sd-models title"
    for key in ("sd_checkpoint_hash", "sd_vae", "CLIP_stop_at_last_layers",
                "img2img_color_correction", "inpainting_mask_weight"):
        assert key in options, key
    assert "use_scale_latent_for_hires_fix" not in options, "OO would use the old hires API"
    assert api.set_options({"CLIP_stop_at_last_layers": 2, "a_private_setting": "kept"}) is None
    options = api.get_options()
    assert options["CLIP_stop_at_last_layers"] == 2
    assert options["a_private_setting"] == "kept"
    clip_skip = api.txt2img(prompt="x", seed=1, width=SIZE, height=SIZE)
    assert "Clip skip: 2" in clip_skip.info["infotexts"][0]
    api.set_options({"CLIP_stop_at_last_layers": 1})


def test_model_switch_by_title_and_back(api, alpha_loaded):
    names = titles(api)
    first = api.txt2img(prompt="a boat", seed=11, width=SIZE, height=SIZE)
    api.util_set_model("beta")  # find_closest: "beta" → the beta title
    # Once loaded it is hashed, and its title (read again) gains " [hash]".
    assert api.util_get_current_model() == titles(api)["beta"]
    assert TITLE.match(titles(api)["beta"])
    other = api.txt2img(prompt="a boat", seed=11, width=SIZE, height=SIZE)
    assert "Model: beta" in other.info["infotexts"][0]
    assert other.info["sd_model_name"] == "beta"
    assert other.images[0].tobytes() != first.images[0].tobytes()
    api.util_set_model(names["alpha"], find_closest=False)
    assert api.util_get_current_model() == names["alpha"]
    back = api.txt2img(prompt="a boat", seed=11, width=SIZE, height=SIZE)
    assert back.images[0].tobytes() == first.images[0].tobytes()


def test_listings(api, server):
    models = api.get_sd_models()
    assert sorted(m["model_name"] for m in models) == ["alpha", "beta", "gamma-inpainting"]
    for model in models:
        # hash and sha256 are null until the file was hashed, and the title then has no hash.
        if model["hash"] is None:
            assert model["title"] == f"{model['model_name']}.safetensors"
            assert model["sha256"] is None
        else:
            assert model["title"] == f"{model['model_name']}.safetensors [{model['hash']}]"
            assert re.fullmatch(r"[0-9a-f]{64}", model["sha256"])
            assert model["sha256"].startswith(model["hash"])
        assert model["filename"].endswith(f"{model['model_name']}.safetensors")
    loaded = next(m for m in models if m["model_name"] == "alpha")
    assert TITLE.match(loaded["title"]), "the loaded model is hashed"
    assert api.util_get_model_names() == sorted(m["title"] for m in models)

    samplers = api.get_samplers()
    names = [s["name"] for s in samplers]
    assert names[0] == "DPM++ 2M"
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(names)
    for sampler in samplers:
        assert isinstance(sampler["aliases"], list)
        assert all(isinstance(v, str) for v in sampler["options"].values())

    schedulers = api.get_schedulers()
    assert schedulers[0]["name"] == "automatic" and schedulers[0]["label"] == "Automatic"
    assert {"karras", "exponential", "sgm_uniform"} <= {s["name"] for s in schedulers}

    upscalers = [u["name"] for u in api.get_upscalers()]
    assert upscalers[:3] == ["None", "Lanczos", "Nearest"]
    assert [m["name"] for m in api.get_latent_upscale_modes()][0] == "Latent"

    loras = api.get_loras()
    assert [lora["name"] for lora in loras] == ["detail"]
    assert loras[0]["path"].endswith("detail.safetensors")

    embeddings = api.get_embeddings()
    assert set(embeddings) == {"loaded", "skipped"}
    assert "kl-f8.safetensors" in [v["model_name"] for v in api.get_sd_vae()]
    assert isinstance(api.get_hypernetworks(), list)
    assert isinstance(api.get_scripts(), dict)


def test_png_info_round_trip(api):
    made = api.txt2img(prompt="a lighthouse, (storm:1.2)", negative_prompt="sunny", seed=21,
                       width=SIZE, height=SIZE)
    image = made.images[0]
    result = api.png_info(image)  # a data URL keeping the PNG's text chunks
    assert result.info == made.info["infotexts"][0], "webuiapi falls back to the raw infotext"
    parameters = result.parameters
    assert parameters["Prompt"] == "a lighthouse, (storm:1.2)"
    assert parameters["Negative prompt"] == "sunny"
    assert parameters["Seed"] == "21"
    assert parameters["Steps"] == "4"
    assert parameters["Size-1"] == str(SIZE)
    bare = api.png_info(Image.new("RGB", (8, 8)))
    assert bare.info == ""


def test_progress_is_monotonic_and_interrupt_returns_the_partial_result(api):
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    answers: list = []

    def job() -> None:
        try:
            answers.append(api.img2img(images=[init_picture()], prompt="slow", seed=9, steps=40,
                                       n_iter=4, width=SIZE, height=SIZE, denoising_strength=1.0))
        except Exception as error:  # noqa: BLE001 - reported below
            answers.append(error)

    thread = threading.Thread(target=job)
    thread.start()
    seen: list[float] = []
    deadline = time.monotonic() + 120
    while True:
        progress = api.get_progress()
        if progress["state"]["job_count"] != 0:
            assert progress["progress"] > 0, progress
            seen.append(progress["progress"])
            if progress["state"]["job_no"] >= 1:
                assert api.interrupt() == {}
                break
        assert thread.is_alive() and time.monotonic() < deadline, f"the job ended first: {seen}"
        time.sleep(0.02)
    thread.join(timeout=120)
    assert len(seen) >= 3, seen
    assert seen == sorted(seen), f"monotonic: {seen}"
    result = answers[0]
    assert not isinstance(result, Exception), result
    assert 1 <= len(result.images) < 4, "the finished batches and the interrupted one"
    assert result.info["all_seeds"] == [9, 10, 11, 12], "every planned seed"
    api.util_wait_for_ready(check_interval=0.1)
    after = api.get_progress()
    assert after["progress"] == 0 and after["state"]["job_count"] == 0
    assert after["state"]["interrupted"] is True, "stays set until the next job"
    assert api.skip() is None


def test_wait_for_ready_returns_at_once_when_idle(api):
    start = time.monotonic()
    api.util_wait_for_ready(check_interval=5.0)
    assert time.monotonic() - start < 1.0


def test_the_other_helpers_answer_json(api):
    """webuiapi hands these answers back as they come (`response.json()`, no status check)."""
    assert api.get_scripts() == {"txt2img": [], "img2img": []}, "no extension arguments added"
    assert api.has_controlnet is False and api.has_adetailer is False
    assert api.refresh_checkpoints() is None
    assert isinstance(api.get_cmd_flags(), dict)
    assert set(api.get_memory()) >= {"ram", "cuda"}
    assert api.get_face_restorers() == []
    assert isinstance(api.get_prompt_styles(), list)
    assert api.get_artists() == {"detail": "Not Found"}, "removed from A1111: a JSON 404"


def test_interrogate_answers_what_sdhost_interrogate_prints(api, server, models, tmp_path):
    """`api.interrogate` (A1111's `/sdapi/v1/interrogate`) for both models equals the command
    line's prompt (itself checked against A1111's code path), and reads `/options`."""
    picture = init_picture()
    path = tmp_path / "picture.png"
    picture.save(path)

    def printed(method: str, *flags: str) -> str:
        out = subprocess.run([str(SDHOST), "interrogate", str(path), "--method", method,
                              "--models-dir", str(models), "--json", *flags],
                             env=sdhost_env(tmp_path), capture_output=True, check=True)
        return json.loads(out.stdout)["caption"]

    for model, method in (("clip", "clip"), ("deepdanbooru", "deepbooru")):
        assert api.interrogate(picture, model=model).info == printed(method)
    api.set_options({"interrogate_return_ranks": True})
    try:
        assert api.interrogate(picture).info == printed("clip", "--return-ranks")
    finally:
        api.set_options({"interrogate_return_ranks": False})
