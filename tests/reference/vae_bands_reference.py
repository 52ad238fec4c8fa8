"""diffusers' AutoencoderKL, untiled, on an image large enough that sdhost computes the tiny
VAE's full-resolution layers in row bands (an activation over 64 MiB: 32 channels x 800 x 768
in fp32 is 75 MiB, so bands of 170 rows and a shorter last one).

Usage: vae_bands_reference.py CHECKPOINT OUT_DIR
Writes bands.safetensors: image, mean (encode), z, decoded (decode).
"""

import os
import sys

import torch
from safetensors.torch import save_file

from ldm_to_diffusers import build_vae, load_checkpoint

HEIGHT, WIDTH = 800, 768


@torch.no_grad()
def main():
    checkpoint, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    vae = build_vae(load_checkpoint(checkpoint))
    generator = torch.Generator().manual_seed(6)
    image = torch.rand((1, 3, HEIGHT, WIDTH), generator=generator) * 2 - 1
    mean = vae.encode(image).latent_dist.mean
    z = torch.randn((1, 4, HEIGHT // 8, WIDTH // 8), generator=generator)
    decoded = vae.decode(z).sample
    save_file({"image": image, "mean": mean.contiguous(), "z": z,
               "decoded": decoded.contiguous()},
              os.path.join(out, "bands.safetensors"))


if __name__ == "__main__":
    main()
