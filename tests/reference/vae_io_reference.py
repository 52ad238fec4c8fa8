"""A1111's VAE round trip on diffusers' AutoencoderKL: init image → scaled latent (mean, and
a sample with a given generator), and latents → 8-bit images (each decoded alone, clamp, ×255,
truncation), written from A1111's `modules/sd_samplers_common.py: images_tensor_to_samples`
(with ldm's `LatentDiffusion.get_first_stage_encoding`) and `modules/processing.py:
decode_latent_batch`, `process_images_inner`.

Usage: vae_io_reference.py CHECKPOINT OUT_DIR
Writes init.png, latents.safetensors (mean, sample, z) and decoded_<i>.png.
"""

import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from ldm_to_diffusers import build_vae, load_checkpoint

SCALE = 0.18215


@torch.no_grad()
def main():
    checkpoint, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    vae = build_vae(load_checkpoint(checkpoint))
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(out, "init.png"))
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    x = (2.0 * x - 1.0).permute(2, 0, 1).unsqueeze(0)
    dist = vae.encode(x).latent_dist
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(77))
    sample = dist.mean + dist.std * noise
    z = torch.randn((2, 4, 6, 5), generator=torch.Generator().manual_seed(8)) * 0.8
    for i in range(z.shape[0]):
        decoded = vae.decode(z[i:i + 1] / SCALE).sample[0]
        image = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)
        image = (255.0 * np.moveaxis(image.numpy(), 0, 2)).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(out, f"decoded_{i}.png"))
    # Resize mode 3 (latent upscale): bilinear, align_corners=False, to the job's latent size.
    z_resized = torch.nn.functional.interpolate(z, size=(9, 7), mode="bilinear", align_corners=False)
    save_file({"mean": (dist.mean * SCALE).contiguous(), "sample": (sample * SCALE).contiguous(), "z": z,
               "z_resized": z_resized.contiguous()},
              os.path.join(out, "latents.safetensors"))


if __name__ == "__main__":
    main()
