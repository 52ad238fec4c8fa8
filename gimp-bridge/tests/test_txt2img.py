"""txt2img through the Python client against the real daemon: plain and with Hires. fix
(result sizes, seeds, infotext), previews, the same picture for the same parameters, and bad
parameters refused."""

from __future__ import annotations

import pytest

from sdhost_client import DaemonError

PARAMS = {"prompt": "a lighthouse", "negative_prompt": "fog", "seed": 11, "steps": 3,
          "sampler_name": "Euler a", "width": 40, "height": 32, "batch_size": 2}


def test_txt2img_results_seeds_and_infotext(daemon):
    with daemon.client() as client:
        results = client.run(client.txt2img(params=PARAMS))
        assert [r["seed"] for r in results] == [11, 12]
        image = results[0].attachments["image"]
        assert (image.width, image.height, image.format) == (40, 32, "rgba8")
        assert len(image.data) == 40 * 32 * 4
        infotext = results[0]["infotext"]
        assert infotext.startswith("a lighthouse\nNegative prompt: fog\n")
        assert "Seed: 11" in infotext and "Size: 40x32" in infotext
        assert "Denoising strength" not in infotext
        # The same parameters make the same pictures.
        again = client.run(client.txt2img(params=PARAMS))
        assert [r.attachments["image"].data for r in again] == [r.attachments["image"].data for r in results]


def test_hires_fix_doubles_the_size(daemon):
    params = dict(PARAMS, batch_size=1, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                  hr_second_pass_steps=2, denoising_strength=0.5)
    with daemon.client() as client:
        job = client.txt2img(params=params, preview={"method": "Approx cheap", "every": 1})
        total, steps, results = None, [], []
        for event in client.events(job):
            if event.type == "progress" and event["step"] == 0:
                total = event["total"]
            elif event.type == "progress":
                steps.append(event["step"])
            elif event.type == "result":
                results.append(event)
            elif event.type == "error":
                raise DaemonError(event["code"], event["message"], job)
        assert steps == list(range(1, total + 1))
        (result,) = results
        image = result.attachments["image"]
        assert (image.width, image.height) == (80, 64)
        infotext = result["infotext"]
        for part in ("Size: 40x32", "Denoising strength: 0.5", "Hires upscale: 2",
                     "Hires steps: 2", "Hires upscaler: Latent"):
            assert part in infotext, infotext


def test_bad_txt2img_parameters_are_refused(daemon):
    with daemon.client() as client:
        with pytest.raises(DaemonError) as error:
            client.txt2img(params={"stepz": 3})
        assert error.value.code == "bad_request" and "stepz" in error.value.message
        job = client.txt2img(params={"steps": 2, "width": 16, "height": 16, "sampler_name": "Nope"})
        with pytest.raises(DaemonError) as error:
            client.run(job)
        assert error.value.code == "invalid_params"
        client.ping()
