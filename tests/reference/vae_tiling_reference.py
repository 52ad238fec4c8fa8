"""diffusers' tiled VAE (`AutoencoderKL.enable_tiling()`) on the tiny model, with tiles small
enough that a small image spans several, partial edge tiles included.

Usage: vae_tiling_reference.py CHECKPOINT OUT_DIR
Writes tiling.safetensors: image, mean, logvar (tiled encode), z, decoded (tiled decode).
"""

import os
import sys

import torch
from safetensors.torch import save_file

from ldm_to_diffusers import build_vae, load_checkpoint

TILE = 64  # pixels; the tiny VAE's latents are 1/8 of that


@torch.no_grad()
def main():
    checkpoint, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    vae = build_vae(load_checkpoint(checkpoint))
    vae.enable_tiling()
    vae.tile_sample_min_size = TILE
    vae.tile_latent_min_size = TILE // 8
    vae.tile_overlap_factor = 0.25
    generator = torch.Generator().manual_seed(5)
    image = torch.rand((1, 3, 136, 200), generator=generator) * 2 - 1
    dist = vae.encode(image).latent_dist
    z = torch.randn((1, 4, 21, 27), generator=generator)
    decoded = vae.decode(z).sample
    save_file({"image": image, "mean": dist.mean.contiguous(), "logvar": dist.logvar.contiguous(),
               "z": z, "decoded": decoded.contiguous()},
              os.path.join(out, "tiling.safetensors"))


if __name__ == "__main__":
    main()
