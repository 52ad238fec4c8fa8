"""A1111's "Approx cheap" live preview, written from its code (modules/sd_vae_approx.py
`cheap_approximation` for SD1/SD2 and modules/sd_samplers_common.py `single_sample_to_image`):
per pixel RGB = latent · coefficient matrix, then x·0.5 + 0.5, clamp to [0, 1], ×255 and
numpy's astype(np.uint8) (truncation).

Usage: preview_reference.py OUT_DIR
Writes preview.safetensors: `latent` (scaled latents [2, 4, 7, 9], f32, wide enough that some
pixels clamp at both ends) and `rgb` (uint8 [2, 7, 9, 3], one preview per latent).
"""

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

COEFFS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]


def cheap_approximation(sample):
    coefs = torch.tensor(COEFFS).to(sample.device)
    return torch.einsum("...lxy,lr -> ...rxy", sample, coefs)


def single_sample_to_image(sample):
    x_sample = cheap_approximation(sample) * 0.5 + 0.5
    x_sample = torch.clamp(x_sample, min=0.0, max=1.0)
    x_sample = 255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)
    return x_sample.astype(np.uint8)


@torch.no_grad()
def main():
    out = sys.argv[1]
    torch.set_num_threads(1)
    latent = torch.randn((2, 4, 7, 9), generator=torch.Generator().manual_seed(21)) * 1.6
    rgb = np.stack([single_sample_to_image(latent[i]) for i in range(latent.shape[0])])
    save_file({"latent": latent.contiguous(), "rgb": torch.from_numpy(np.ascontiguousarray(rgb))},
              os.path.join(out, "preview.safetensors"))


if __name__ == "__main__":
    main()
