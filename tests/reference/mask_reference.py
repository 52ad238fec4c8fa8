"""A1111's mask preparation with the libraries it uses (OpenCV, Pillow), written from a
description of `modules/processing.py: create_binary_mask, StableDiffusionProcessingImg2Img.init`
and `modules/masking.py: get_crop_region_v2, expand_crop_region, fill`.

Usage: mask_reference.py OUT_DIR
Writes:
  mask_<i>.png            test masks (L): blobs, soft gradient, border-touching, one pixel,
                          full, empty, thin and extreme aspect ratios;
  blur_<i>_<x>_<y>.png    cv2.GaussianBlur along x then y, A1111's kernel sizes;
  rgb.png, luma.png       Pillow's convert('L');
  alpha.png, binary.png   create_binary_mask of an RGBA mask with transparency;
  image.png, fill_<i>.png masking.fill of image.png under blurred masks;
  regions.json            get_crop_region_v2 + expand_crop_region per (mask, pad, W, H) case.
"""

from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps

BLURS = [(4, 4), (8, 8), (1, 1), (0, 3), (5, 0), (2, 7), (64, 64)]
REGION_CASES = [(64, 48, 0), (64, 48, 32), (48, 64, 8), (512, 64, 4), (64, 512, 4), (40, 40, 200)]


def a1111_blur(mask: np.ndarray, blur_x: int, blur_y: int) -> np.ndarray:
    if blur_x > 0:
        k = 2 * int(2.5 * blur_x + 0.5) + 1
        mask = cv2.GaussianBlur(mask, (k, 1), blur_x)
    if blur_y > 0:
        k = 2 * int(2.5 * blur_y + 0.5) + 1
        mask = cv2.GaussianBlur(mask, (1, k), blur_y)
    return mask


def crop_region(mask: Image.Image, pad: int):
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand(region, width, height, image_width, image_height):
    x1, y1, x2, y2 = region
    ratio_region = (x2 - x1) / (y2 - y1)
    ratio = width / height
    if ratio_region > ratio:
        diff = int((x2 - x1) / ratio - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_height:
            y1 -= y2 - image_height
            y2 -= y2 - image_height
        if y1 < 0:
            y2 -= y1
            y1 = 0
        if y2 >= image_height:
            y2 = image_height
    else:
        diff = int((y2 - y1) * ratio - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_width:
            x1 -= x2 - image_width
            x2 -= x2 - image_width
        if x1 < 0:
            x2 -= x1
            x1 = 0
        if x2 >= image_width:
            x2 = image_width
    return [x1, y1, x2, y2]


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    result = Image.new("RGBA", image.size)
    holed = Image.new("RGBa", image.size)
    holed.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        layer = holed.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(layer)
    return result.convert("RGB")


def masks(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    blobs = np.zeros((61, 83), np.uint8)
    yy, xx = np.mgrid[0:61, 0:83]
    blobs[((xx - 30) ** 2 + (yy - 25) ** 2) < 150] = 255
    blobs[40:55, 60:75] = 255
    out.append(blobs)
    out.append(np.clip(xx * 3.1 + yy * 0.7, 0, 255).astype(np.uint8)[:50, :70])  # soft gradient
    border = np.zeros((40, 90), np.uint8)
    border[0:12, 70:90] = 255  # touches top and right
    border[30:40, 0:3] = 255  # touches bottom and left
    out.append(border)
    one = np.zeros((33, 29), np.uint8)
    one[16, 14] = 255
    out.append(one)
    out.append(np.full((24, 32), 255, np.uint8))  # full
    out.append(np.zeros((24, 32), np.uint8))  # empty
    thin = np.zeros((9, 200), np.uint8)
    thin[4, 20:180] = 255
    out.append(thin)
    tall = (rng.random((150, 7)) > 0.8).astype(np.uint8) * 255
    out.append(tall)
    return out


def main() -> None:
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    regions = []
    image = Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8))
    image.save(os.path.join(out, "image.png"))
    for i, mask in enumerate(masks(rng)):
        Image.fromarray(mask).save(os.path.join(out, f"mask_{i}.png"))
        for bx, by in BLURS:
            blurred = a1111_blur(mask, bx, by)
            Image.fromarray(blurred).save(os.path.join(out, f"blur_{i}_{bx}_{by}.png"))
        for width, height, pad in REGION_CASES:
            pil = Image.fromarray(mask)
            region = crop_region(pil, pad)
            expanded = None if region is None else expand(region, width, height, pil.width, pil.height)
            regions.append({"mask": i, "width": width, "height": height, "pad": pad,
                            "region": None if region is None else list(region), "expanded": expanded})
        if mask.shape == (61, 83):
            blurred = Image.fromarray(a1111_blur(mask, 4, 4))
            fill(image, blurred).save(os.path.join(out, f"fill_{i}.png"))
    json.dump(regions, open(os.path.join(out, "regions.json"), "w"))

    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    rgb.save(os.path.join(out, "rgb.png"))
    rgb.convert("L").save(os.path.join(out, "luma.png"))
    alpha = np.dstack([rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
                       rng.integers(0, 256, (20, 30), dtype=np.uint8)])
    rgba = Image.fromarray(alpha, "RGBA")
    rgba.save(os.path.join(out, "alpha.png"))
    rgba.split()[-1].convert("L").point(lambda x: 255 if x > 128 else 0).save(os.path.join(out, "binary.png"))


if __name__ == "__main__":
    main()
