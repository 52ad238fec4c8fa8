"""UNet outputs with token merging as A1111 applies it: the `tomesd` package on the UNet.

Usage: token_merging_reference.py CHECKPOINT OUT.safetensors --sizes 16x16,13x9 --ratios 0.3,0.5

A1111's `modules/sd_models.py: apply_token_merging` calls `tomesd.apply_patch(model, ratio=…,
use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False)` and keeps tomesd's
other defaults (max_downsample=1, sx=sy=2). Here the same call patches diffusers' UNet (walked as
A1111 walks LDM's, a1111_unet.py): tomesd replaces every `BasicTransformerBlock`'s forward and
reads the latent's size from a hook on the UNet's forward.

For every size (height x width) it stores the inputs (`{size}.x`, `.t`, `.context`), the
unpatched output (`{size}.plain`) and, per ratio, the patched output (`{size}.{ratio}.out`).
"""

from __future__ import annotations

import argparse

import tomesd
import torch
from safetensors.torch import save_file

from ldm_to_diffusers import build_unet, load_checkpoint

TIMESTEPS = (1.0, 981.25)


def a1111_patch(unet, ratio: float) -> None:
    """`apply_token_merging`'s call, as A1111 v1.10.1 makes it."""
    tomesd.apply_patch(unet, ratio=ratio, use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--ratios", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(2718)
    unet = build_unet(load_checkpoint(args.checkpoint))
    channels, width = unet.config.in_channels, unet.config.cross_attention_dim
    out: dict[str, torch.Tensor] = {}
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        x = torch.randn((2, channels, h, w), generator=gen)
        context = torch.randn((2, 77, width), generator=gen) * 0.5
        t = torch.tensor(TIMESTEPS)
        out[f"{size}.x"], out[f"{size}.t"], out[f"{size}.context"] = x, t, context
        tomesd.remove_patch(unet)
        out[f"{size}.plain"] = unet(x, t, encoder_hidden_states=context).sample
        for ratio in args.ratios.split(","):
            a1111_patch(unet, float(ratio))
            # The size hook reads the sample from the positional arguments.
            out[f"{size}.{ratio}.out"] = unet(x, t, encoder_hidden_states=context).sample
            tomesd.remove_patch(unet)
    save_file({k: v.contiguous() for k, v in out.items()}, args.out)


if __name__ == "__main__":
    main()
