"""Reference noise: torch.Generator streams and A1111's per-image noise source (ImageRNG).

Usage: rng_reference.py IN.json OUT.safetensors

IN.json: {"device": "cpu" | "cuda",
  "generators": [{"seed", "draws": [{"shape", "dtype"}]}]        -> "gen/{i}/{j}"
  "image_rngs": [{"name", "seeds", "shape", "subseeds", "strength", "resize_from": [h, w] | null,
                  "ensd", "calls"}]                              -> "img/{name}/{k}"}
Generators: torch.Generator(device).manual_seed(seed), then successive torch.randn draws.
ImageRNG follows A1111 v1.10.1 `modules/rng.py: ImageRNG, slerp, randn` (written from a
description of that module, not from its code): the seed noise and the variation noise of
"randn(seed, shape)" come from the global generator re-seeded with torch.manual_seed, later draws
from each image's own generator, re-created with seed + ENSD after the first call.
"""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import save_file

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def new_generator(seed: int, device: str) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def global_randn(seed: int, shape, device: str) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(shape, device=device)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    # Norms over dim 1 of (C, H, W): A1111's quirk (`modules/rng.py: slerp`).
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cos = (low_unit * high_unit).sum(1)
    if cos.mean() > 0.9995:
        return low * val + high * (1 - val)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    low_weight = (torch.sin((1.0 - val) * angle) / sin).unsqueeze(1)
    high_weight = (torch.sin(val * angle) / sin).unsqueeze(1)
    return low_weight * low + high_weight * high


class ImageNoise:
    def __init__(self, case: dict, device: str):
        self.shape = tuple(case["shape"])
        self.seeds = case["seeds"]
        self.subseeds = case["subseeds"]
        self.strength = case["strength"]
        self.resize_from = case["resize_from"]
        self.ensd = case["ensd"]
        self.device = device
        self.generators = [new_generator(seed, device) for seed in self.seeds]
        self.started = False

    def first(self) -> torch.Tensor:
        c, height, width = self.shape
        if self.resize_from and self.resize_from[0] > 0 and self.resize_from[1] > 0:
            noise_shape = (c, self.resize_from[0] // 8, self.resize_from[1] // 8)
        else:
            noise_shape = self.shape
        images = []
        for i, (seed, gen) in enumerate(zip(self.seeds, self.generators)):
            sub = None
            if self.strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                sub = global_randn(subseed, noise_shape, self.device)
            if noise_shape != self.shape:
                noise = global_randn(seed, noise_shape, self.device)
            else:
                noise = torch.randn(self.shape, generator=gen, device=self.device)
            if sub is not None:
                noise = slerp(self.strength, noise, sub)
            if noise_shape != self.shape:
                full = torch.randn(self.shape, generator=gen, device=self.device)
                # Centre the old-size noise; a negative margin crops it instead (floor division).
                my, mx = (height - noise_shape[1]) // 2, (width - noise_shape[2]) // 2
                h = noise_shape[1] if my >= 0 else noise_shape[1] + 2 * my
                w = noise_shape[2] if mx >= 0 else noise_shape[2] + 2 * mx
                ty, tx, sy, sx = max(my, 0), max(mx, 0), max(-my, 0), max(-mx, 0)
                full[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
                noise = full
            images.append(noise)
        if self.ensd:
            self.generators = [new_generator(seed + self.ensd, self.device) for seed in self.seeds]
        return torch.stack(images)

    def next(self) -> torch.Tensor:
        if not self.started:
            self.started = True
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device) for g in self.generators])


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    device = spec["device"]
    out = {}
    for i, case in enumerate(spec.get("generators", [])):
        gen = new_generator(case["seed"], device)
        for j, draw in enumerate(case["draws"]):
            t = torch.randn(draw["shape"], generator=gen, dtype=DTYPES[draw["dtype"]], device=device)
            out[f"gen/{i}/{j}"] = t.cpu().contiguous()
    for case in spec.get("image_rngs", []):
        rng = ImageNoise(case, device)
        for k in range(case["calls"]):
            out[f"img/{case['name']}/{k}"] = rng.next().cpu().contiguous()
    save_file(out, sys.argv[2])


if __name__ == "__main__":
    main()
