"""Writes tiny SD 2.x / SDXL single-file checkpoints with random weights (fixed seed).

Usage: tiny_sgm_files.py OUT_DIR [FAMILY ...]   (families: sd2 sd2-v sd2-inpaint sdxl
sdxl-inpaint sdxl-refiner; default all) -> OUT_DIR/<family>.safetensors

The layout is the A1111/LDM/sgm one of spec sd2-sdxl.md §2.1, §3.1, §4.2 with the shapes of
notes/presets.md (the same presets the Rust `sdhost dev make-tiny-model` writes), generated
here from the block rules alone (no diffusers model is involved, so a wrong key converter in
the reference cannot cancel out). Metadata `modelspec.prediction_type` says eps or v.
Also useful for family-detection tests: every marker key of spec §1.6 is present.
"""

from __future__ import annotations

import math
import os
import sys

import torch
from safetensors.torch import save_file

Shapes = dict[str, tuple[int, ...]]

SD2_UNET = dict(mc=64, mult=[1, 2, 2], attn=[True, True, False], depth=[1, 1, 1], mid=1, ctx=128, adm=None)
# depth 0: no transformers on that level; ctx 160 = CLIP-L 32 + bigG 128; adm = P 96 + 6 (5) × 256
SDXL_UNET = dict(mc=32, mult=[1, 2, 4], attn=[False, True, True], depth=[0, 1, 2], mid=2, ctx=160, adm=96 + 6 * 256)
REFINER_UNET = dict(mc=32, mult=[1, 2, 4, 4], attn=[False, True, True, False], depth=[0, 1, 1, 0], mid=1, ctx=128,
                    adm=96 + 5 * 256)
FAMILIES = {
    # family: (text encoders, UNet settings, input channels, prediction type)
    "sd2": ("sd2", SD2_UNET, 4, "epsilon"),
    "sd2-v": ("sd2", SD2_UNET, 4, "v"),
    "sd2-inpaint": ("sd2", SD2_UNET, 9, "epsilon"),
    "sdxl": ("sdxl", SDXL_UNET, 4, "epsilon"),
    "sdxl-inpaint": ("sdxl", SDXL_UNET, 9, "epsilon"),
    "sdxl-refiner": ("refiner", REFINER_UNET, 4, "epsilon"),
}
VOCAB, POSITIONS = 49408, 77


def open_clip_tower(prefix: str, width: int, layers: int, proj: int) -> Shapes:
    """OpenCLIP text tower (`cond_stage_model.model.` / `conditioner.embedders.N.model.`)."""
    s: Shapes = {f"{prefix}token_embedding.weight": (VOCAB, width), f"{prefix}positional_embedding": (POSITIONS, width)}
    for i in range(layers):
        b = f"{prefix}transformer.resblocks.{i}."
        s.update({b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
                  b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                  b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                  b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
                  b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
                  b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,)})
    s.update({f"{prefix}ln_final.weight": (width,), f"{prefix}ln_final.bias": (width,),
              f"{prefix}text_projection": (width, proj), f"{prefix}logit_scale": ()})
    return s


def clip_l_tower(prefix: str, width: int, layers: int) -> Shapes:
    """HF CLIP layout under `text_model.` (SD1 and SDXL embedder 0); position_ids added apart."""
    t = prefix + "text_model."
    s: Shapes = {t + "embeddings.token_embedding.weight": (VOCAB, width),
                 t + "embeddings.position_embedding.weight": (POSITIONS, width)}
    for i in range(layers):
        b = f"{t}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            s.update({b + n + ".weight": (width,), b + n + ".bias": (width,)})
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s.update({b + f"self_attn.{n}.weight": (width, width), b + f"self_attn.{n}.bias": (width,)})
        s.update({b + "mlp.fc1.weight": (4 * width, width), b + "mlp.fc1.bias": (4 * width,),
                  b + "mlp.fc2.weight": (width, 4 * width), b + "mlp.fc2.bias": (width,)})
    s.update({t + "final_layer_norm.weight": (width,), t + "final_layer_norm.bias": (width,)})
    return s


def resblock(p: str, cin: int, cout: int, temb: int) -> Shapes:
    s: Shapes = {p + "in_layers.0.weight": (cin,), p + "in_layers.0.bias": (cin,),
                 p + "in_layers.2.weight": (cout, cin, 3, 3), p + "in_layers.2.bias": (cout,),
                 p + "emb_layers.1.weight": (cout, temb), p + "emb_layers.1.bias": (cout,),
                 p + "out_layers.0.weight": (cout,), p + "out_layers.0.bias": (cout,),
                 p + "out_layers.3.weight": (cout, cout, 3, 3), p + "out_layers.3.bias": (cout,)}
    if cin != cout:
        s.update({p + "skip_connection.weight": (cout, cin, 1, 1), p + "skip_connection.bias": (cout,)})
    return s


def transformer(p: str, c: int, depth: int, ctx: int) -> Shapes:
    """SpatialTransformer with linear proj_in/out (spec §4.2)."""
    s: Shapes = {p + "norm.weight": (c,), p + "norm.bias": (c,), p + "proj_in.weight": (c, c), p + "proj_in.bias": (c,),
                 p + "proj_out.weight": (c, c), p + "proj_out.bias": (c,)}
    for d in range(depth):
        b = f"{p}transformer_blocks.{d}."
        for a, kv in (("attn1", c), ("attn2", ctx)):
            s.update({b + f"{a}.to_q.weight": (c, c), b + f"{a}.to_k.weight": (c, kv), b + f"{a}.to_v.weight": (c, kv),
                      b + f"{a}.to_out.0.weight": (c, c), b + f"{a}.to_out.0.bias": (c,)})
        for n in ("norm1", "norm2", "norm3"):
            s.update({b + n + ".weight": (c,), b + n + ".bias": (c,)})
        s.update({b + "ff.net.0.proj.weight": (8 * c, c), b + "ff.net.0.proj.bias": (8 * c,),
                  b + "ff.net.2.weight": (c, 4 * c), b + "ff.net.2.bias": (c,)})
    return s


def unet(cin: int, mc: int, mult: list[int], attn: list[bool], depth: list[int], mid: int, ctx: int,
         adm: int | None, res: int = 2) -> Shapes:
    """LDM/sgm UNetModel keys by the block rules of spec §4.2."""
    p = "model.diffusion_model."
    temb = 4 * mc
    s: Shapes = {p + "time_embed.0.weight": (temb, mc), p + "time_embed.0.bias": (temb,),
                 p + "time_embed.2.weight": (temb, temb), p + "time_embed.2.bias": (temb,),
                 p + "input_blocks.0.0.weight": (mc, cin, 3, 3), p + "input_blocks.0.0.bias": (mc,)}
    if adm is not None:
        s.update({p + "label_emb.0.0.weight": (temb, adm), p + "label_emb.0.0.bias": (temb,),
                  p + "label_emb.0.2.weight": (temb, temb), p + "label_emb.0.2.bias": (temb,)})
    skips, ch, block, n = [mc], mc, 1, len(mult)
    for level, m in enumerate(mult):
        for _ in range(res):
            s.update(resblock(f"{p}input_blocks.{block}.0.", ch, mc * m, temb))
            ch = mc * m
            if attn[level]:
                s.update(transformer(f"{p}input_blocks.{block}.1.", ch, depth[level], ctx))
            skips.append(ch)
            block += 1
        if level < n - 1:
            s.update({f"{p}input_blocks.{block}.0.op.weight": (ch, ch, 3, 3), f"{p}input_blocks.{block}.0.op.bias": (ch,)})
            skips.append(ch)
            block += 1
    s.update(resblock(f"{p}middle_block.0.", ch, ch, temb))
    s.update(transformer(f"{p}middle_block.1.", ch, mid, ctx))
    s.update(resblock(f"{p}middle_block.2.", ch, ch, temb))
    block = 0
    for level in reversed(range(n)):
        for i in range(res + 1):
            out = mc * mult[level]
            s.update(resblock(f"{p}output_blocks.{block}.0.", ch + skips.pop(), out, temb))
            ch = out
            layer = 1
            if attn[level]:
                s.update(transformer(f"{p}output_blocks.{block}.1.", ch, depth[level], ctx))
                layer = 2
            if level > 0 and i == res:
                s.update({f"{p}output_blocks.{block}.{layer}.conv.weight": (ch, ch, 3, 3),
                          f"{p}output_blocks.{block}.{layer}.conv.bias": (ch,)})
            block += 1
    s.update({p + "out.0.weight": (mc,), p + "out.0.bias": (mc,),
              p + "out.2.weight": (4, mc, 3, 3), p + "out.2.bias": (4,)})
    return s


def vae(ch: int = 32, mult: tuple[int, ...] = (1, 1, 2, 2), res: int = 1, z: int = 4) -> Shapes:
    """The SD1 tiny autoencoder in LDM layout (`first_stage_model.`)."""
    p = "first_stage_model."
    s: Shapes = {}

    def rb(q: str, a: int, b: int) -> None:
        s.update({q + "norm1.weight": (a,), q + "norm1.bias": (a,),
                  q + "conv1.weight": (b, a, 3, 3), q + "conv1.bias": (b,),
                  q + "norm2.weight": (b,), q + "norm2.bias": (b,),
                  q + "conv2.weight": (b, b, 3, 3), q + "conv2.bias": (b,)})
        if a != b:
            s.update({q + "nin_shortcut.weight": (b, a, 1, 1), q + "nin_shortcut.bias": (b,)})

    def mid(q: str, c: int) -> None:
        rb(q + "mid.block_1.", c, c)
        rb(q + "mid.block_2.", c, c)
        s.update({q + "mid.attn_1.norm.weight": (c,), q + "mid.attn_1.norm.bias": (c,)})
        for n in ("q", "k", "v", "proj_out"):
            s.update({q + f"mid.attn_1.{n}.weight": (c, c, 1, 1), q + f"mid.attn_1.{n}.bias": (c,)})

    e = p + "encoder."
    s.update({e + "conv_in.weight": (ch, 3, 3, 3), e + "conv_in.bias": (ch,)})
    c = ch
    for i, m in enumerate(mult):
        for j in range(res):
            rb(f"{e}down.{i}.block.{j}.", c, ch * m)
            c = ch * m
        if i < len(mult) - 1:
            s.update({f"{e}down.{i}.downsample.conv.weight": (c, c, 3, 3), f"{e}down.{i}.downsample.conv.bias": (c,)})
    mid(e, c)
    s.update({e + "norm_out.weight": (c,), e + "norm_out.bias": (c,),
              e + "conv_out.weight": (2 * z, c, 3, 3), e + "conv_out.bias": (2 * z,)})
    s.update({p + "quant_conv.weight": (2 * z, 2 * z, 1, 1), p + "quant_conv.bias": (2 * z,),
              p + "post_quant_conv.weight": (z, z, 1, 1), p + "post_quant_conv.bias": (z,)})
    d = p + "decoder."
    c = ch * mult[-1]
    s.update({d + "conv_in.weight": (c, z, 3, 3), d + "conv_in.bias": (c,)})
    mid(d, c)
    for i in reversed(range(len(mult))):
        for j in range(res + 1):
            rb(f"{d}up.{i}.block.{j}.", c, ch * mult[i])
            c = ch * mult[i]
        if i > 0:
            s.update({f"{d}up.{i}.upsample.conv.weight": (c, c, 3, 3), f"{d}up.{i}.upsample.conv.bias": (c,)})
    s.update({d + "norm_out.weight": (c,), d + "norm_out.bias": (c,),
              d + "conv_out.weight": (3, c, 3, 3), d + "conv_out.bias": (3,)})
    return s


def schedule() -> dict[str, torch.Tensor]:
    """spec §6: the scaled-linear schedule in float64, stored float32."""
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas[:-1]])
    return {"betas": betas.float(), "alphas_cumprod": alphas.float(), "alphas_cumprod_prev": prev.float()}


def fill(shapes: Shapes, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights: std 0.05, norm scales 1±0.1, embeddings std 0.5 (visible text effects)."""
    out = {}
    for key, shape in shapes.items():
        if key.endswith("logit_scale"):
            out[key] = torch.tensor(math.log(1 / 0.07))
            continue
        t = torch.randn(shape, generator=gen)
        norm = any(n in key for n in ("norm", "ln_", "layer_norm", "in_layers.0.", "out_layers.0.", ".out.0."))
        if norm and key.endswith("weight") and len(shape) == 1:
            t = 1 + 0.1 * t
        elif "embedding" in key:
            t = 0.5 * t
        else:
            t = 0.05 * t
        out[key] = t
    return out


def family_shapes(family: str) -> tuple[Shapes, dict[str, torch.Tensor], str]:
    text, u, cin, prediction = FAMILIES[family]
    s: Shapes = {}
    extra: dict[str, torch.Tensor] = {}
    if text == "sd2":
        s.update(open_clip_tower("cond_stage_model.model.", 128, 3, 96))
    elif text == "sdxl":
        s.update(clip_l_tower("conditioner.embedders.0.transformer.", 32, 3))
        s.update(open_clip_tower("conditioner.embedders.1.model.", 128, 3, 96))
        extra["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(POSITIONS)[None]
    else:
        s.update(open_clip_tower("conditioner.embedders.0.model.", 128, 3, 96))
    s.update(unet(cin=cin, **u))
    s.update(vae())
    return s, extra, prediction


def write(family: str, path: str, seed: int = 19) -> None:
    shapes, extra, prediction = family_shapes(family)
    gen = torch.Generator().manual_seed(seed)
    tensors = fill(shapes, gen)
    tensors.update(extra)
    tensors.update(schedule())
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"modelspec.prediction_type": prediction})


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for family in sys.argv[2:] or list(FAMILIES):
        write(family, os.path.join(out, f"{family}.safetensors"))


if __name__ == "__main__":
    main()
