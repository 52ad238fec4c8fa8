"""Writes external VAE files for the VAE-override tests, as users have them.

Usage: vae_files.py BASE_CHECKPOINT DONOR_CHECKPOINT OUT_DIR

From the donor checkpoint's autoencoder (`first_stage_model.*`):
  vae.safetensors   the autoencoder's state dict (safetensors.torch.save_file)
  vae.pt            torch.save({"state_dict": ...}) with a `loss.*` tensor and the EMA counters
                    A1111 drops (`vae_ignore_keys`)
  vae.ckpt          torch.save of the plain state dict
and the reference for a swapped VAE:
  merged.safetensors  the base checkpoint with the donor's autoencoder in place of its own
"""

import sys

import torch
from safetensors.torch import load_file, save_file

PREFIX = "first_stage_model."


def main() -> None:
    base_path, donor_path, out = sys.argv[1:4]
    base = load_file(base_path)
    donor = load_file(donor_path)
    vae = {k[len(PREFIX):]: v.contiguous() for k, v in donor.items() if k.startswith(PREFIX)}
    save_file(vae, f"{out}/vae.safetensors")

    wrapped = dict(vae)
    # A1111's trainer leaves the discriminator loss and EMA counters in some VAE files.
    wrapped["loss.logvar"] = torch.tensor([0.25])
    wrapped["model_ema.decay"] = torch.tensor(0.9999)
    wrapped["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    torch.save({"state_dict": wrapped, "global_step": 1000}, f"{out}/vae.pt")
    torch.save(vae, f"{out}/vae.ckpt")

    merged = {k: v for k, v in base.items() if not k.startswith(PREFIX)}
    merged.update({PREFIX + k: v for k, v in vae.items()})
    save_file(merged, f"{out}/merged.safetensors")


if __name__ == "__main__":
    main()
