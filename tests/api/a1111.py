"""Small helpers of the API tests: pictures and masks as clients encode them (bare base64 or data
URLs), returned images decoded with their infotext, and A1111's `info` read."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image

SIZE = 64


def init_picture(size: int = SIZE) -> Image.Image:
    """A smooth RGB gradient, the image every img2img test starts from."""
    image = Image.new("RGB", (size, size))
    image.putdata([(x * 4 % 256, y * 4 % 256, 128) for y in range(size) for x in range(size)])
    return image


def square_mask(mode: str = "L", size: int = SIZE) -> Image.Image:
    """White (regenerate) in the middle square, black around it, in PIL `mode`."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return mask.convert(mode)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def b64(image: Image.Image) -> str:
    """Bare base64 of a PNG (G1, G3, GS, PS generation)."""
    return base64.b64encode(png_bytes(image)).decode()


def data_url(image: Image.Image) -> str:
    """A data URL of a PNG (webuiapi, SB, OO, PS png-info)."""
    return "data:image/png;base64," + b64(image)


def decode(text: str) -> Image.Image:
    """A returned image: bare base64 (no `data:` prefix) of a PNG."""
    assert not text.startswith("data:"), "outputs must be bare base64"
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


def info(answer: dict) -> dict:
    """`info` of a generation answer: a string holding JSON."""
    assert isinstance(answer["info"], str), "info is a JSON string"
    return json.loads(answer["info"])


def generation_checks(answer: dict, count: int, size: tuple[int, int] = (SIZE, SIZE)) -> list[Image.Image]:
    """The A1111 shape of a txt2img/img2img answer with `count` images: bare-base64 RGB PNGs of
    `size`, each carrying its infotext in the `parameters` text chunk."""
    assert set(answer) == {"images", "parameters", "info"}, str(answer)[:500]
    facts = info(answer)
    images = [decode(text) for text in answer["images"]]
    assert len(images) == count
    assert len(facts["infotexts"]) == count
    for image, infotext in zip(images, facts["infotexts"]):
        assert image.mode == "RGB"
        assert image.size == size
        assert image.info.get("parameters") == infotext
    return images
