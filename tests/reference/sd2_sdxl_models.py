"""SD 2.x / SDXL / SDXL-refiner models from an A1111/LDM/sgm single-file state dict.

The reference side of the SD2/SDXL parity tests (spec sd2-sdxl.md §1.6, §2, §3, §4, §8.3).
Everything is configured explicitly from tensor shapes plus the family constants the weights
cannot tell (64-wide heads, gelu vs quick_gelu, which hidden state is the context), and the
weights are renamed here, so no hub config and no diffusers single-file detection is used.

* `detect_family`: key presence only (never widths), as §1.6.
* `build_sgm_unet`: diffusers UNet2DConditionModel (A1111 walk, a1111_unet.py) with per-level
  attention and depth, middle depth, C/64 heads, linear projections, `text_time` vector input.
* `build_open_clip`: OpenCLIP text tower as transformers CLIPTextModel(WithProjection),
  hidden_act "gelu": `in_proj` rows q,k,v; `positional_embedding`; `ln_final`;
  `text_projection` stored (W,P) and used x·P, so the HF weight is Pᵀ.
* `sd2_context`, `big_g_outputs`, `clip_l_context`: the per-encoder outputs of §2.2 / §3.2.
* `size_embedding`, `sdxl_vector`: sgm's `timestep_embedding(·, 256)` (cos first) of the size /
  crop / aesthetic scalars (§3.4), concatenated after the pooled vector.
* `open_clip_oracle`: ldm/sgm's OpenCLIP walk written with torch.nn.MultiheadAttention on the
  file's own tensors (the layout open_clip runs), for the self-checks.
"""

from __future__ import annotations

import math

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from a1111_unet import A1111UNet
from ldm_to_diffusers import UNET, _count, _sub, build_clip, convert_unet, unet_shape

SD1, SD2, SDXL, REFINER = "sd1", "sd2", "sdxl", "refiner"
SD2_TEXT = "cond_stage_model.model."
CLIP_L_XL = "conditioner.embedders.0.transformer."
BIG_G = "conditioner.embedders.1.model."
BIG_G_REFINER = "conditioner.embedders.0.model."
SCALE = {SD1: 0.18215, SD2: 0.18215, SDXL: 0.13025, REFINER: 0.13025}


def detect_family(sd: dict) -> str:
    """sd1 / sd2 / sdxl / refiner by marker keys (spec §1.6); inpainting is the 9-channel stem."""
    if "conditioner.embedders.1.model.ln_final.weight" in sd:
        return SDXL
    if "conditioner.embedders.0.model.ln_final.weight" in sd:
        return REFINER
    if "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in sd:
        return SD2
    if any(k.startswith("cond_stage_model.transformer.") for k in sd):
        return SD1
    raise ValueError("unknown checkpoint family")


def text_prefixes(family: str) -> dict[str, str]:
    """Encoder name → key prefix: `text` (SD2), `clip_l` + `big_g` (SDXL), `big_g` (refiner)."""
    return {SD2: {"text": SD2_TEXT}, SDXL: {"clip_l": CLIP_L_XL, "big_g": BIG_G},
            REFINER: {"big_g": BIG_G_REFINER}}[family]


def heads(width: int) -> int:
    """64-wide heads, one below 64 (SD2/SDXL UNet and every OpenCLIP/CLIP-L tower here)."""
    return max(1, width // 64)


def build_sgm_unet(sd: dict[str, torch.Tensor]) -> A1111UNet:
    """UNet of an SD2/SDXL/refiner file (§8.3), walked as A1111 (a1111_unet.py)."""
    u = _sub(sd, UNET)
    s = unet_shape(u)
    widths = [s.model_channels * m for m in s.mult]
    depth = [d if a else 1 for d, a in zip(s.depth, s.attention)]
    # diffusers' mid block takes the last entry; a last level without attention ignores its own.
    if s.attention[-1]:
        assert depth[-1] == s.middle_depth, "middle depth differs from the last attention level's"
    depth[-1] = s.middle_depth
    assert s.linear_proj, "SD2/SDXL UNets use linear proj_in/proj_out"
    extra = {}
    if s.adm is not None:
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=s.adm, class_embed_type=None)
    unet = A1111UNet(
        sample_size=64,
        in_channels=s.in_channels,
        out_channels=s.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s.attention)),
        block_out_channels=tuple(widths),
        layers_per_block=s.res_blocks,
        transformer_layers_per_block=depth,
        cross_attention_dim=s.context_dim,
        attention_head_dim=[heads(w) for w in widths],  # diffusers' name for the head count
        norm_num_groups=32,
        norm_eps=1e-5,
        use_linear_projection=True,
        **extra,
    )
    unet.load_state_dict(convert_unet(u, s), strict=True)
    return unet.eval()


def open_clip_to_hf(t: dict[str, torch.Tensor], layers: int, projection: bool) -> dict[str, torch.Tensor]:
    """OpenCLIP text keys (§2.1) → transformers CLIP text keys, first `layers` blocks only."""
    out = {
        "embeddings.token_embedding.weight": t["token_embedding.weight"],
        "embeddings.position_embedding.weight": t["positional_embedding"],
        "final_layer_norm.weight": t["ln_final.weight"],
        "final_layer_norm.bias": t["ln_final.bias"],
    }
    width = t["token_embedding.weight"].shape[1]
    for i in range(layers):
        a, b = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for old, new in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[f"{b}{new}.weight"] = t[f"{a}{old}.weight"]
            out[f"{b}{new}.bias"] = t[f"{a}{old}.bias"]
        w, bias = t[a + "attn.in_proj_weight"], t[a + "attn.in_proj_bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):  # rows q, k, v
            out[f"{b}self_attn.{name}.weight"] = w[j * width:(j + 1) * width]
            out[f"{b}self_attn.{name}.bias"] = bias[j * width:(j + 1) * width]
    if projection:
        out = {"text_model." + k: v for k, v in out.items()}
        out["text_projection.weight"] = t["text_projection"].t()  # stored (W,P), used x·P
    return out


def build_open_clip(sd: dict[str, torch.Tensor], prefix: str, layers: int | None = None,
                    projection: bool = False) -> CLIPTextModel | CLIPTextModelWithProjection:
    """OpenCLIP text tower under `prefix` with its first `layers` blocks (default all)."""
    t = _sub(sd, prefix)
    vocab, width = t["token_embedding.weight"].shape
    total = _count(t, "transformer.resblocks.{}.attn.in_proj_weight")
    layers = total if layers is None else layers
    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=t["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=heads(width),
        max_position_embeddings=t["positional_embedding"].shape[0],
        hidden_act="gelu",  # exact GELU (nn.GELU), not CLIP-L's quick_gelu
        layer_norm_eps=1e-5,
        projection_dim=t["text_projection"].shape[1],
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    model.load_state_dict(open_clip_to_hf(t, layers, projection), strict=True)
    return model.eval()


def build_text(sd: dict[str, torch.Tensor], family: str) -> dict[str, torch.nn.Module]:
    """The family's text encoders by name (see text_prefixes)."""
    models: dict[str, torch.nn.Module] = {}
    for name, prefix in text_prefixes(family).items():
        if name == "text":  # SD2: the last block never runs (penultimate + ln_final)
            layers = _count(_sub(sd, prefix), "transformer.resblocks.{}.attn.in_proj_weight")
            models[name] = build_open_clip(sd, prefix, layers - 1)
        elif name == "big_g":
            models[name] = build_open_clip(sd, prefix, projection=True)
        else:
            models[name] = build_clip(sd, prefix)
    return models


def sd2_context(model: CLIPTextModel, ids: torch.Tensor) -> torch.Tensor:
    """SD2: ln_final(x after L−1 blocks) = last_hidden_state of the (L−1)-layer model (§2.2)."""
    return model(input_ids=ids).last_hidden_state


def big_g_outputs(model: CLIPTextModelWithProjection, ids: torch.Tensor):
    """SDXL bigG: (context = hidden_states[-2] without ln_final, pooled = ln_final(last)[argmax ids]·P,
    all hidden states)."""
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-2], out.text_embeds, out.hidden_states


def clip_l_context(model: CLIPTextModel, ids: torch.Tensor):
    """SDXL CLIP-L: (hidden_states[-2] without final LayerNorm, all hidden states)."""
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-2], out.hidden_states


def size_embedding(values: list[float], dim: int = 256) -> torch.Tensor:
    """sgm `timestep_embedding(s, 256)` per scalar, cos first, concatenated in order (§3.4)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    parts = []
    for s in values:
        args = torch.tensor(float(s), dtype=torch.float32) * freqs
        parts.append(torch.cat([torch.cos(args), torch.sin(args)]))
    return torch.cat(parts)


def size_scalars(family: str, width: int, height: int, crop_top: int = 0, crop_left: int = 0,
                 aesthetic: float = 6.0) -> list[float]:
    """diffusers' `time_ids` order = sgm's embedder order: orig (h,w), crop (top,left), then target
    (h,w) (base/inpaint) or the aesthetic score (refiner)."""
    if family == REFINER:
        return [height, width, crop_top, crop_left, aesthetic]
    return [height, width, crop_top, crop_left, height, width]


def sdxl_vector(pooled: torch.Tensor, scalars: list[float]) -> torch.Tensor:
    """y = [pooled | emb(s) for each scalar], one row per pooled row."""
    emb = size_embedding(scalars).to(pooled.dtype)
    return torch.cat([pooled, emb.expand(pooled.shape[0], -1)], dim=1)


def open_clip_oracle(t: dict[str, torch.Tensor], ids: torch.Tensor) -> list[torch.Tensor]:
    """ldm/sgm's `text_transformer_forward` on the OpenCLIP tensors as stored: x entering each
    block, then after the last one (L+1 states); nn.MultiheadAttention uses in_proj unsplit."""
    width = t["token_embedding.weight"].shape[1]
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf")).triu_(1)
    x = t["token_embedding.weight"][ids] + t["positional_embedding"][:n]
    states = [x]
    for i in range(_count(t, "transformer.resblocks.{}.attn.in_proj_weight")):
        p = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads(width), batch_first=True)
        attn.load_state_dict({name: t[p + "attn." + name] for name in
                              ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
        h = torch.nn.functional.layer_norm(x, (width,), t[p + "ln_1.weight"], t[p + "ln_1.bias"], 1e-5)
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = torch.nn.functional.layer_norm(x, (width,), t[p + "ln_2.weight"], t[p + "ln_2.bias"], 1e-5)
        h = torch.nn.functional.linear(h, t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"])
        h = torch.nn.functional.gelu(h)  # exact (erf) GELU
        x = x + torch.nn.functional.linear(h, t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"])
        states.append(x)
    return states


def ln_final(t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], t["ln_final.weight"], t["ln_final.bias"], 1e-5)
