"""Reference outputs of the networks of an SD 2.x / SDXL / SDXL-refiner checkpoint, for the Rust
parity tests (the SD2/SDXL counterpart of make_references.py), with self-checks.

Usage: sd2_sdxl_references.py CHECKPOINT OUT.safetensors [--latent-size N] [--image-size N]
                              [--width W --height H]

Inputs are drawn with torch.randn / randint from a fixed seed and stored next to the outputs.
fp32, CPU. The family comes from key presence (sd2_sdxl_models.detect_family). Tensors:
  SD2:     text.input_ids (2,77) int64, A1111's OpenCLIP chunk (BOS, words, EOS, 0 padding);
           text.hidden.{0..L-1} (embeddings, then after each of the L−1 blocks that run);
           text.context = ln_final(text.hidden.{L-1}) (spec §2.2).
  SDXL:    clip_l.input_ids (EOS padding), big_g.input_ids (the same words, 0 after the first EOS);
           clip_l.hidden.{0..L}, clip_l.context = clip_l.hidden.{L-1} (no final LN);
           big_g.hidden.{0..L}, big_g.context = big_g.hidden.{L-1} (no ln_final),
           big_g.pooled = ln_final(big_g.hidden.{L})[argmax ids]·text_projection;
           cond.crossattn = [clip_l.context | big_g.context] (last axis);
           cond.vector = [big_g.pooled | emb(H) emb(W) emb(0) emb(0) emb(H) emb(W)] (--height/--width).
  refiner: big_g.* from embedder 0; cond.crossattn = big_g.context;
           cond.vector = [big_g.pooled | emb(H) emb(W) emb(0) emb(0) emb(6.0)].
  UNet:    unet.x (2,C,N,N: one latent twice), unet.context (= text.context / cond.crossattn),
           unet.y (= cond.vector, SDXL-style only), unet.t{i} (2,), unet.out{i} for t = 1.0, 981.25,
           A1111's walk (a1111_unet.py) with y through label_emb.
  4-channel SD2 also: vtest.mean (scalar), A1111's v test (spec §1.3) at the file's own widths:
           mean(unet(0.5·ones(1,4,8,8), t=999, context=0.5·ones(1,2,ctx)) − x); v iff < −1.
  VAE:     vae.image, vae.mean, vae.logvar, vae.z, vae.decoded (as make_references.py; the family's
           scale factor is applied outside the VAE and not involved here).
Self-checks (assertions; a summary line with the max |diff| of each goes to stdout): the UNet
and bigG weights as renamed here vs diffusers' single-file converters (identical); SD2 context vs the L-layer model's final_layer_norm(hidden_states[-2])
and vs ldm's OpenCLIP walk on the stored tensors (open_clip_oracle); bigG context/pooled vs that
walk; CLIP-L final_layer_norm(hidden[-1]) == last_hidden_state and ctx = sum of text widths;
the UNet with y through label_emb vs diffusers' own forward with text_embeds + time_ids.
"""

from __future__ import annotations

import argparse

import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint
from safetensors.torch import save_file

from ldm_to_diffusers import _sub, build_vae, load_checkpoint
from sd2_sdxl_models import (
    REFINER, SD2, SDXL, big_g_outputs, build_open_clip, build_sgm_unet, build_text, clip_l_context,
    detect_family, ln_final, open_clip_oracle, sd2_context, sdxl_vector, size_scalars, text_prefixes,
)

BOS, EOS = 49406, 49407
TIMESTEPS = (1.0, 981.25)
TOL = dict(rtol=0, atol=2e-5)
CHECKS: dict[str, float] = {}


def check(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """A self-check: assert within 2e-5 and remember the max |diff| for the summary line."""
    torch.testing.assert_close(actual, expected, **TOL)
    CHECKS[name] = (actual - expected).abs().max().item()


def words(batch: int, gen: torch.Generator) -> list[list[int]]:
    return [torch.randint(0, BOS, (5 + 30 * b,), generator=gen).tolist() for b in range(batch)]


def chunk(ids: list[int], pad: int) -> list[int]:
    """A1111 chunk: BOS, ids, EOS, then `pad` (EOS for CLIP-L, 0 for OpenCLIP)."""
    return [BOS] + ids + [EOS] + [pad] * (75 - len(ids))


def check_state_dict(name: str, ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Our key conversion against diffusers' single-file converter (same names, same tensors)."""
    assert set(ours) == set(theirs), f"{name}: key sets differ: {sorted(set(ours) ^ set(theirs))[:5]}"
    CHECKS[name] = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert CHECKS[name] == 0.0, name


def check_open_clip(sd, prefix: str, ids: torch.Tensor, context: torch.Tensor, sd2: bool,
                    pooled: torch.Tensor | None = None) -> None:
    t = _sub(sd, prefix)
    states = open_clip_oracle(t, ids)
    if sd2:
        check("sd2 context vs OpenCLIP walk", context, ln_final(t, states[-2]))
        full = build_open_clip(sd, prefix)  # the alternative: all L layers
        alt = full(input_ids=ids, output_hidden_states=True)
        check("sd2 context vs L-layer final_layer_norm(hidden[-2])", context, full.final_layer_norm(alt.hidden_states[-2]))
    else:
        check("bigG context vs OpenCLIP walk", context, states[-2])
        last = ln_final(t, states[-1])
        manual = last[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ t["text_projection"]
        check("bigG pooled vs ln_final(last)[argmax]·P", pooled, manual)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--latent-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1234)

    sd = load_checkpoint(args.checkpoint)
    family = detect_family(sd)
    assert family in (SD2, SDXL, REFINER), f"not an SD2/SDXL file: {family}"
    prefixes = text_prefixes(family)
    out: dict[str, torch.Tensor] = {}

    texts = words(2, gen)
    models = build_text(sd, family)
    if family == SD2:
        ids = torch.tensor([chunk(w, 0) for w in texts])
        result = models["text"](input_ids=ids, output_hidden_states=True)
        out["text.input_ids"] = ids
        for i, hidden in enumerate(result.hidden_states):
            out[f"text.hidden.{i}"] = hidden
        out["text.context"] = sd2_context(models["text"], ids)
        check_open_clip(sd, prefixes["text"], ids, out["text.context"], sd2=True)
        context, vector = out["text.context"], None
    else:
        g_ids = torch.tensor([chunk(w, 0) for w in texts])
        context_g, pooled, hidden_g = big_g_outputs(models["big_g"], g_ids)
        check_open_clip(sd, prefixes["big_g"], g_ids, context_g, sd2=False, pooled=pooled)
        check_state_dict("bigG weights vs diffusers convert_open_clip_checkpoint", models["big_g"].state_dict(),
                         convert_open_clip_checkpoint(models["big_g"], sd, prefix=prefixes["big_g"]))
        out["big_g.input_ids"] = g_ids
        for i, hidden in enumerate(hidden_g):
            out[f"big_g.hidden.{i}"] = hidden
        out["big_g.context"], out["big_g.pooled"] = context_g, pooled
        parts = [context_g]
        if family == SDXL:
            l_ids = torch.tensor([chunk(w, EOS) for w in texts])
            clip_l = models["clip_l"]
            context_l, hidden_l = clip_l_context(clip_l, l_ids)
            check("CLIP-L final_layer_norm(hidden[-1]) vs last_hidden_state",
                  clip_l.final_layer_norm(hidden_l[-1]), clip_l(input_ids=l_ids).last_hidden_state)
            out["clip_l.input_ids"] = l_ids
            for i, hidden in enumerate(hidden_l):
                out[f"clip_l.hidden.{i}"] = hidden
            out["clip_l.context"] = context_l
            parts = [context_l, context_g]
        out["cond.crossattn"] = torch.cat(parts, dim=-1)
        scalars = size_scalars(family, args.width, args.height)
        out["cond.vector"] = sdxl_vector(pooled, scalars)
        context, vector = out["cond.crossattn"], out["cond.vector"]
    del models

    unet = build_sgm_unet(sd)
    check_state_dict("UNet weights vs diffusers convert_ldm_unet_checkpoint", unet.state_dict(),
                     convert_ldm_unet_checkpoint(sd, dict(unet.config)))
    assert unet.config.cross_attention_dim == context.shape[-1], "ctx ≠ the text widths (spec §4.3 step 8)"
    channels, n = unet.config.in_channels, args.latent_size
    latent = torch.randn((1, channels, n, n), generator=gen).repeat(2, 1, 1, 1)
    out["unet.x"], out["unet.context"] = latent, context.clone()
    if vector is not None:
        out["unet.y"] = vector.clone()
    for i, t in enumerate(TIMESTEPS):
        timesteps = torch.full((2,), t)
        out[f"unet.t{i}"] = timesteps
        out[f"unet.out{i}"] = unet(latent, timesteps, encoder_hidden_states=context, y=vector).sample
    if vector is not None:  # label_emb(y) == diffusers' add_embedding(text_embeds, time_ids)
        side = 2 ** (len(unet.config.block_out_channels) - 1) * 2
        x = torch.randn((2, channels, side, side), generator=gen)
        ids = torch.tensor([scalars, scalars], dtype=torch.float32)
        ours = unet(x, torch.full((2,), 981.25), encoder_hidden_states=context, y=vector).sample
        theirs = unet.diffusers_forward(x, torch.full((2,), 981.25), context,
                                        added_cond_kwargs={"text_embeds": out["big_g.pooled"], "time_ids": ids})
        check("UNet label_emb(y) vs diffusers text_embeds+time_ids", ours, theirs)
    if family == SD2 and channels == 4:
        x = torch.full((1, 4, 8, 8), 0.5)
        ctx = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
        v = unet(x, torch.tensor([999]), encoder_hidden_states=ctx).sample
        out["vtest.mean"] = (v - x).mean()
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

    print(family, "self-checks (max |diff|):", ", ".join(f"{k} {v:.1e}" for k, v in CHECKS.items()))
    save_file({k: v.clone().contiguous() for k, v in out.items()}, args.out)  # some share storage


if __name__ == "__main__":
    main()
