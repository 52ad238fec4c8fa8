"""API img2img and CLI `sdhost img2img` with the same parameters give pixel-identical PNGs with
the same infotext, for plain img2img and for inpainting with a mask."""

from __future__ import annotations

import subprocess

import pytest
import requests
from PIL import Image

from a1111 import SIZE, b64, decode, info, init_picture, square_mask
from conftest import SDHOST, sdhost_env


@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
def test_api_and_cli_img2img_are_pixel_identical(server, tmp_path, masked):
    init_path = tmp_path / "init.png"
    init_picture().save(init_path)
    body = {"init_images": [b64(init_picture())], "prompt": "a red house, (dusk:1.2)",
            "negative_prompt": "blurry", "steps": 5, "seed": 1234, "cfg_scale": 6,
            "width": SIZE, "height": SIZE, "denoising_strength": 0.6,
            "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 2,
            "override_settings": {"sd_model_checkpoint": "alpha"}}
    flags = ["--prompt", "a red house, (dusk:1.2)", "--negative-prompt", "blurry", "--steps", "5",
             "--seed", "1234", "--cfg-scale", "6", "--width", str(SIZE), "--height", str(SIZE),
             "--denoising-strength", "0.6", "--sampler-name", "DPM++ 2M", "--scheduler", "Karras",
             "--batch-size", "2", "--randn-source", "CPU"]
    if masked:
        mask_path = tmp_path / "mask.png"
        square_mask().save(mask_path)
        body.update(mask=b64(square_mask()), mask_blur=4, inpainting_fill=1,
                    inpaint_full_res=False)
        flags += ["--mask", str(mask_path), "--inpainting-fill", "1", "--inpaint-full-res", "false"]
    reply = requests.post(server.api("img2img"), json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    api_images = [decode(text) for text in answer["images"]]
    out = tmp_path / "out"
    run = subprocess.run([str(SDHOST), "img2img", "--models-dir", str(server.models),
                          "--model", "alpha", "--init-image", str(init_path), "--out-dir",
                          str(out), "--threads", "1", *flags],
                         env=sdhost_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == len(api_images) == 2
    for file, api_image, infotext in zip(files, api_images, info(answer)["infotexts"]):
        cli_image = Image.open(file)
        assert cli_image.convert("RGB").tobytes() == api_image.tobytes(), file.name
        assert cli_image.info.get("parameters") == infotext
