"""UNet outputs at latent sizes that are not multiples of 2^levels, walked as A1111 walks them.

Usage: unet_sizes_reference.py CHECKPOINT OUT.safetensors --sizes 12x8,8x12,... [--dtypes fp32,bf16]

For every size (height x width) and dtype it stores the inputs (`{key}.x`, `.t`, `.context`),
A1111's output (`{key}.out`, a1111_unet.py) and diffusers' own output (`{key}.diffusers`), so
the Rust test can show both that it follows A1111 and that the two differ there. In bf16
every GroupNorm computes in fp32 and returns bf16, as sdhost's do: LDM's ResBlock norms are
`GroupNorm32` (`ldm/modules/diffusionmodules/util.py`), and under A1111's autocast every
`group_norm` runs in fp32; diffusers' GroupNorm computes in the tensor's dtype.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ldm_to_diffusers import build_unet, load_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TIMESTEPS = (1.0, 981.25)


def upcast_group_norm(norm: torch.nn.GroupNorm) -> None:
    """Makes `norm` compute in fp32 and return the input's dtype (LDM's GroupNorm32)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)

    norm.forward = forward


def upcast_norms(unet) -> None:
    """Every GroupNorm of the UNet: ResBlocks, transformers and the output."""
    for module in unet.modules():
        if isinstance(module, torch.nn.GroupNorm):
            upcast_group_norm(module)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--dtypes", default="fp32,bf16")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(4321)
    sd = load_checkpoint(args.checkpoint)
    out: dict[str, torch.Tensor] = {}
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        unet = build_unet(sd).to(dtype)
        upcast_norms(unet)
        channels, width = unet.config.in_channels, unet.config.cross_attention_dim
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            key = f"{dtype_name}.{h}x{w}"
            x = torch.randn((2, channels, h, w), generator=gen).to(dtype)
            context = (torch.randn((2, 77, width), generator=gen) * 0.5).to(dtype)
            t = torch.tensor(TIMESTEPS)
            out[f"{key}.x"], out[f"{key}.t"], out[f"{key}.context"] = x, t, context
            out[f"{key}.out"] = unet(x, t, encoder_hidden_states=context).sample
            out[f"{key}.diffusers"] = unet.diffusers_forward(x, t, context)
    save_file({k: v.contiguous() for k, v in out.items()}, args.out)


if __name__ == "__main__":
    main()
