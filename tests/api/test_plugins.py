"""Raw requests shaped like each surveyed editor plug-in's (shared/spec/a1111-api-clients.md §b.1,
§f): what G1/G3 (GIMP 2/3 stable-gimpfusion), SB (gimp-stable-boy), GS (gimp_stableize), PS (the
Photoshop panel) and OO (openOutpaint) send, and what they read back."""

from __future__ import annotations

import requests
from PIL import Image

from a1111 import SIZE, b64, data_url, decode, generation_checks, info, init_picture, square_mask

TIMEOUT = 120


def post(server, path: str, body) -> requests.Response:
    return requests.post(server.api(path), json=body, timeout=TIMEOUT)


def test_gimpfusion_bare_base64_and_legacy_sampler_index(server):
    """G1/G3: bare base64 init and grey selection mask, `sampler_index` only, with a legacy
    "X Karras" name (no `scheduler` key: the suffix gives the schedule)."""
    body = {"prompt": "a tree", "negative_prompt": "", "seed": -1, "steps": 4, "cfg_scale": 7,
            "batch_size": 1, "width": SIZE, "height": SIZE, "sampler_index": "DPM++ 2M Karras",
            "denoising_strength": 0.6, "init_images": [b64(init_picture())],
            "mask": b64(square_mask("L")), "mask_blur": 4, "inpainting_fill": 1,
            "inpaint_full_res": False, "inpaint_full_res_padding": 10,
            "inpainting_mask_invert": 0, "resize_mode": 0}
    answer = post(server, "img2img", body).json()
    generation_checks(answer, 1)
    facts = info(answer)
    assert facts["sampler_name"] == "DPM++ 2M"
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in facts["infotexts"][0]
    assert facts["seed"] == facts["all_seeds"][0] >= 0, "-1 draws a seed"
    # G3's txt2img: the same fields without images; `enable_hr` false.
    answer = post(server, "txt2img", {"prompt": "a tree", "seed": 5, "steps": 4, "width": SIZE,
                                      "height": SIZE, "sampler_index": "LMS Karras",
                                      "enable_hr": False, "batch_size": 2}).json()
    generation_checks(answer, 2)
    facts = info(answer)
    assert facts["all_seeds"] == [5, 6], "G1/G3 pair images[i] with all_seeds[i]"
    assert "Sampler: LMS, Schedule type: Karras" in facts["infotexts"][0]


def test_stable_boy_string_seed_float_steps_data_url(server):
    """SB: seed as a string, steps as a float (GIMP slider), data-URL init and mask, mask
    inverted, then reads `images[i].split(",", 1)[0]`: outputs must be bare base64."""
    body = {"prompt": "a cat", "seed": "42", "steps": 4.0, "cfg_scale": 7.5, "width": SIZE,
            "height": SIZE, "sampler_index": "Euler a", "denoising_strength": 0.5,
            "init_images": [data_url(init_picture())], "mask": data_url(square_mask("RGB")),
            "mask_blur": 4, "inpainting_fill": 1, "inpaint_full_res": False,
            "inpaint_full_res_padding": 32, "inpainting_mask_invert": 1, "restore_faces": False,
            "batch_size": 1}
    answer = post(server, "img2img", body).json()
    generation_checks(answer, 1)
    assert info(answer)["all_seeds"] == [42]
    assert answer["parameters"]["steps"] == 4
    assert "," not in answer["images"][0]


def test_gimp_stableize_lax_types_rgba_mask_grid_and_checkpoint_override(server, alpha_loaded):
    """GS: its startup GETs (ControlNet lists included), then an img2img with `inpainting_fill`
    as a string, a float padding, a bool invert, an RGBA mask whose transparency is the mask,
    every GIMP procedure property as unknown keys, `save_images: true` (the grid leads when
    there are several images) and `override_settings` naming the checkpoint by title."""
    for path in ("prompt-styles", "sd-models", "options", "samplers", "schedulers",
                 "latent-upscale-modes", "upscalers"):
        assert requests.get(server.api(path), timeout=TIMEOUT).status_code == 200, path
    models = requests.get(f"{server.url}/controlnet/model_list", timeout=TIMEOUT)
    assert (models.status_code, models.json()) == (200, {"model_list": []})
    modules = requests.get(f"{server.url}/controlnet/module_list", timeout=TIMEOUT)
    assert (modules.status_code, modules.json()) == (200, {"module_list": ["none"]})
    beta = next(m["title"] for m in requests.get(server.api("sd-models"), timeout=TIMEOUT).json()
                if m["model_name"] == "beta")

    mask = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 0))  # transparent: keep
    mask.paste((255, 255, 255, 255), (16, 16, 48, 48))  # opaque: regenerate
    body = {"prompt": "a bird", "negative_prompt": "", "seed": 8, "steps": 4, "cfg_scale": 7,
            "width": SIZE, "height": SIZE, "sampler_name": "Euler a", "scheduler": "Automatic",
            "batch_size": 2, "n_iter": 1, "restore_faces": False, "tiling": False, "styles": [],
            "denoising_strength": 0.9, "init_images": [b64(init_picture())], "mask": b64(mask),
            "mask_blur": 0, "inpainting_fill": "1", "inpaint_full_res": False,
            "inpaint_full_res_padding": 32.0, "inpainting_mask_invert": False,
            "save_images": True, "override_settings": {"sd_model_checkpoint": beta},
            "model": beta, "use_control_net": False, "controlnet_weight": 1.0,
            "use_inpainting": True}
    answer = post(server, "img2img", body).json()
    assert len(answer["images"]) == 3, "the grid, then the two samples"
    facts = info(answer)
    assert facts["index_of_first_image"] == 1
    assert facts["all_seeds"] == [8, 9]
    assert len(facts["infotexts"]) == 3
    assert "Model: beta" in facts["infotexts"][1]
    grid, first, second = (decode(text) for text in answer["images"])
    assert grid.size == (2 * SIZE, SIZE)
    assert first.size == second.size == (SIZE, SIZE)
    init = init_picture()
    corner = (0, 0, 12, 12)
    assert first.crop(corner).tobytes() == init.crop(corner).tobytes(), "transparent: kept"
    # GS drops images[0] when there are several; with one image there is no grid.
    body["batch_size"] = 1
    answer = post(server, "img2img", body).json()
    assert len(answer["images"]) == 1
    assert info(answer)["index_of_first_image"] == 0


def test_photoshop_string_seed_private_keys_and_png_info(server):
    """PS: `seed.toString()`, `sampler_index` only, ~12 private keys, then every result image
    posted to /png-info as a data URL and `info` split on "Negative prompt: ", "," and ":"."""
    body = {"prompt": "a lamp", "negative_prompt": "dark", "seed": "77", "steps": 4,
            "cfg_scale": 7, "width": SIZE, "height": SIZE, "batch_size": 1, "n_iter": 1,
            "sampler_index": "Euler", "denoising_strength": 0.7, "restore_faces": False,
            "init_images": [b64(init_picture())], "mask_blur": 4, "inpainting_fill": 1,
            "inpaint_full_res": False, "inpaint_full_res_padding": 0,
            "uniqueDocumentId": "doc-1", "selection_info": {"left": 0, "top": 0},
            "mode": "img2img", "use_sharp_mask": False, "use_prompt_shortcut": True,
            "prompt_shortcut_ui_dict": {}, "original_prompt": "a lamp",
            "original_negative_prompt": "dark", "clip_skip": 1, "mask_expansion": 0,
            "expanded_mask": ""}
    answer = post(server, "img2img", body).json()
    generation_checks(answer, 1)
    reply = post(server, "png-info", {"image": "data:image/png;base64," + answer["images"][0]})
    assert reply.status_code == 200
    text = reply.json()["info"]
    assert text == info(answer)["infotexts"][0]
    prompt, rest = text.split("\nNegative prompt: ")
    assert prompt == "a lamp"
    settings = dict(part.strip().split(": ", 1) for part in rest.split("\n", 1)[1].split(","))
    assert settings["Seed"] == "77"
    assert settings["Sampler"] == "Euler"
    # PS calls .json() on the options POST reply.
    reply = post(server, "options", {"CLIP_stop_at_last_layers": 1, "inpainting_mask_weight": 1.0})
    assert (reply.status_code, reply.json()) == (200, None)


def test_openoutpaint_trailing_slash_empty_mask_and_no_script_args(server):
    """OO: options POSTed to the trailing-slash URL, txt2img with `"mask": ""` and the
    init/mask keys it sends on every request, its own private keys, `sampler_index` only and
    no script args; reads `all_seeds` and prepends the data-URL prefix itself."""
    reply = requests.post(server.api("options/"), json={"img2img_color_correction": False},
                          timeout=TIMEOUT)
    assert (reply.status_code, reply.json()) == (200, None)
    body = {"prompt": "a hill", "negative_prompt": "", "seed": 13, "steps": 4, "cfg_scale": 7,
            "width": SIZE, "height": SIZE, "batch_size": 1, "n_iter": 1,
            "sampler_index": "DDIM", "scheduler": "Automatic", "restore_faces": False,
            "enable_hr": False, "denoising_strength": 1, "styles": [], "mask": "",
            "init_images": [], "outpainting_fill": 2, "hr_square_aspect": False,
            "inpainting_fill": 1, "mask_blur": 0}
    answer = post(server, "txt2img", body).json()
    generation_checks(answer, 1)
    assert info(answer)["all_seeds"] == [13]
    assert "Sampler: DDIM" in info(answer)["infotexts"][0]
    # img2img with "mask": "" is plain img2img.
    body.update(init_images=[data_url(init_picture())], denoising_strength=0.5)
    answer = post(server, "img2img", body).json()
    generation_checks(answer, 1)
    assert "Mask blur" not in info(answer)["infotexts"][0]
    progress = requests.get(server.api("progress") + "?skip_current_image=true", timeout=TIMEOUT)
    assert progress.json()["current_image"] is None


def test_interrupt_and_skip_bodies_clients_send(server):
    """interrupt: no body (OO, W), `{}` (KR), a JSON content type with no body (PS): `{}`;
    skip: `null`. Idle, they change nothing for the next job."""
    for kwargs in ({}, {"json": {}}, {"headers": {"Content-Type": "application/json"}}):
        reply = requests.post(server.api("interrupt"), timeout=TIMEOUT, **kwargs)
        assert (reply.status_code, reply.json()) == (200, {}), kwargs
    reply = requests.post(server.api("skip"), timeout=TIMEOUT)
    assert (reply.status_code, reply.json()) == (200, None)
    answer = post(server, "img2img", {"init_images": [b64(init_picture())], "steps": 2,
                                      "width": SIZE, "height": SIZE, "n_iter": 2}).json()
    generation_checks(answer, 2)
