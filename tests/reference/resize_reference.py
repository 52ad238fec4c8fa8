"""A1111's img2img resize modes with Pillow (`modules/images.py: resize_image`), written from a
description of that function.

Usage: resize_reference.py OUT_DIR
Writes src_<i>.png and mode<m>_<i>.png for each case (source size, target size), and
rgba.png with flattened.png: A1111's `images.flatten` (paste onto the background colour with
the image's alpha as mask, then RGB) over white.
"""

import os
import sys

import numpy as np
from PIL import Image

CASES = [((37, 23), (64, 48)), ((50, 80), (64, 64)), ((100, 61), (40, 72)), ((13, 29), (56, 40)),
         ((64, 64), (48, 48)), ((90, 30), (32, 64))]


def resize_image(mode, im, width, height):
    lanczos = Image.Resampling.LANCZOS
    if mode == 0:
        return im.resize((width, height), resample=lanczos)
    ratio, src_ratio = width / height, im.width / im.height
    if mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = im.resize((src_w, src_h), resample=lanczos)
        res = Image.new("RGB", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res
    src_w = width if ratio < src_ratio else im.width * height // im.height
    src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=lanczos)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            res.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            res.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return res


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(5)
    for i, ((w, h), (tw, th)) in enumerate(CASES):
        # Smooth gradients plus noise: both edges and detail matter for the filters.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        src = Image.fromarray(pixels, "RGB")
        src.save(os.path.join(out, f"src_{i}.png"))
        for mode in (0, 1, 2):
            resize_image(mode, src, tw, th).save(os.path.join(out, f"mode{mode}_{i}.png"))
        with open(os.path.join(out, f"target_{i}.txt"), "w") as f:
            f.write(f"{tw} {th}")
    # Every alpha value against varied colours.
    alpha = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    colour = rng.integers(0, 256, (3, 256, 3), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([colour, alpha]), "RGBA")
    rgba.save(os.path.join(out, "rgba.png"))
    background = Image.new("RGBA", rgba.size, "#ffffff")
    background.paste(rgba, mask=rgba)
    background.convert("RGB").save(os.path.join(out, "flattened.png"))


if __name__ == "__main__":
    main()
