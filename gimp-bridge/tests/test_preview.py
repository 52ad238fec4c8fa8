"""Live previews through the Python client against the real daemon: the `preview` option of
img2img, previews on exactly the asked steps with their sizes, none without the option, and
bad settings refused."""

from __future__ import annotations

import pytest

from sdhost_client import DaemonError, Image

PARAMS = {"prompt": "a boat", "seed": 4, "steps": 4, "sampler_name": "Euler",
          "denoising_strength": 1.0, "batch_size": 2}


def rgba(width: int, height: int) -> Image:
    pixels = bytes((x * 5 + y * 11 + c * 40) % 256 for y in range(height) for x in range(width)
                   for c in range(4))
    return Image(pixels, width, height, "rgba8")


def run(client, preview=None):
    """(total steps, [(step, preview header, preview image)] of the sampler steps, results)."""
    job = client.img2img(rgba(40, 32), params=PARAMS, preview=preview)
    total, steps, results = None, [], []
    for event in client.events(job):
        if event.type == "progress" and event["step"] == 0:
            total = event["total"]
        elif event.type == "progress":
            steps.append((event["step"], event.get("preview"), event.preview_image))
        elif event.type == "result":
            results.append(event)
        elif event.type == "error":
            raise DaemonError(event["code"], event["message"], job)
    return total, steps, results


def test_previews_on_the_asked_steps(daemon):
    with daemon.client() as client:
        assert client.welcome["preview_methods"] == ["Approx cheap", "Full"]
        total, steps, with_previews = run(client, {"method": "Approx cheap", "every": 2})
        assert total >= 4 and len(steps) == total
        shown = [step for step, header, image in steps if image is not None]
        assert shown == [s for s in range(1, total + 1) if s % 2 == 0]
        for step, header, image in steps:
            if image is None:
                assert header is None
                continue
            # Latent resolution (1/8 of 40x32), the batch's first image, opaque RGBA.
            assert header == {"width": 5, "height": 4, "index": 0}
            assert (image.width, image.height, image.format) == (5, 4, "rgba8")
            assert len(image.data) == 5 * 4 * 4
            assert all(alpha == 255 for alpha in image.data[3::4])

        total, steps, _ = run(client, {"method": "Full", "every": 3})
        shown = [(step, image.width, image.height) for step, _, image in steps if image]
        assert shown == [(s, 40, 32) for s in range(1, total + 1) if s % 3 == 0]

        # Without the option: no previews, and the same pictures (previews do not touch
        # sampling).
        total, steps, without = run(client)
        assert all(header is None and image is None for _, header, image in steps)
        assert [r.attachments["image"].data for r in without] == \
            [r.attachments["image"].data for r in with_previews]


@pytest.mark.parametrize("preview, needle", [
    ({"method": "TAESD", "every": 1}, "TAESD"),
    ({"method": "Full", "every": 0}, "at least 1"),
])
def test_bad_preview_settings_are_refused(daemon, preview, needle):
    with daemon.client() as client:
        with pytest.raises(DaemonError) as error:
            client.img2img(rgba(16, 16), params={"steps": 2}, preview=preview)
        assert error.value.code == "bad_request"
        assert needle in error.value.message and "preview" in error.value.message
        client.ping()
