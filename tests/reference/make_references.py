"""Write reference outputs of diffusers/transformers for a checkpoint, for the Rust parity tests.

Usage: make_references.py CHECKPOINT OUT.safetensors [--latent-size N] [--image-size N]

Inputs are drawn with torch.randn from a fixed seed and stored next to the outputs, so the
Rust side feeds the networks exactly the same tensors. Everything runs in fp32 on the CPU.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file

from ldm_to_diffusers import build_clip, build_unet, build_vae, load_checkpoint

BOS, EOS = 49406, 49407
TIMESTEPS = (1.0, 981.25)  # one near the end, one fractional near the start of sampling


def token_ids(batch: int, length: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """A1111-shaped chunks: BOS, some words, EOS, then EOS padding."""
    ids = torch.full((batch, length), EOS, dtype=torch.int64)
    ids[:, 0] = BOS
    for b in range(batch):
        words = 5 + 30 * b
        ids[b, 1 : 1 + words] = torch.randint(0, min(vocab, BOS), (words,), generator=gen)
    return ids


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--latent-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1234)

    sd = load_checkpoint(args.checkpoint)
    out: dict[str, torch.Tensor] = {}

    clip = build_clip(sd)
    cfg = clip.config
    ids = token_ids(2, cfg.max_position_embeddings, cfg.vocab_size, gen)
    result = clip(input_ids=ids, output_hidden_states=True)
    out["clip.input_ids"] = ids
    for i, hidden in enumerate(result.hidden_states):
        out[f"clip.hidden.{i}"] = hidden
    out["clip.final"] = clip.final_layer_norm(result.hidden_states[-1])
    out["clip.final_skip2"] = clip.final_layer_norm(result.hidden_states[-2])
    torch.testing.assert_close(out["clip.final"], result.last_hidden_state)
    del clip

    unet = build_unet(sd)
    # A CFG batch: the same latent twice, under the two prompts' conditioning.
    channels = unet.config.in_channels
    n = args.latent_size
    latent = torch.randn((1, channels, n, n), generator=gen).repeat(2, 1, 1, 1)
    context = out["clip.final"].clone()
    out["unet.x"] = latent
    out["unet.context"] = context
    for i, t in enumerate(TIMESTEPS):
        timesteps = torch.full((2,), t)
        out[f"unet.t{i}"] = timesteps
        out[f"unet.out{i}"] = unet(latent, timesteps, encoder_hidden_states=context).sample
    del unet

    vae = build_vae(sd)
    image = torch.rand((1, 3, args.image_size, args.image_size), generator=gen) * 2 - 1
    posterior = vae.encode(image).latent_dist
    out["vae.image"] = image
    out["vae.mean"] = posterior.mean
    out["vae.logvar"] = posterior.logvar
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    z = torch.randn((1, vae.config.latent_channels, args.image_size // scale, args.image_size // scale), generator=gen)
    out["vae.z"] = z
    out["vae.decoded"] = vae.decode(z).sample

    save_file({k: v.contiguous() for k, v in out.items()}, args.out)


if __name__ == "__main__":
    main()
