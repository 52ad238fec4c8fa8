"""Build diffusers/transformers models from an A1111/CompVis (LDM) single-file checkpoint.

The reference side of the parity tests. It reads the architecture from tensor shapes on its
own (independently of the Rust inference) and renames LDM keys to diffusers' names, so that
diffusers and transformers run on exactly the weights sdhost runs on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from a1111_unet import A1111UNet

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer."


def _sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _count(sd: dict, pattern: str) -> int:
    n = 0
    while pattern.format(n) in sd:
        n += 1
    return n


@dataclass
class UNetShape:
    in_channels: int
    out_channels: int
    model_channels: int
    mult: list[int]
    res_blocks: int
    attention: list[bool]
    context_dim: int
    # SD2/SDXL additions (spec sd2-sdxl.md §4.3); SD1 files give depth 1 and conv projections.
    depth: list[int] | None = None  # transformer blocks per level (0 where a level has none)
    middle_depth: int = 1
    linear_proj: bool = False
    adm: int | None = None  # width of the vector input y (label_emb), SDXL-style UNets only


def unet_shape(u: dict[str, torch.Tensor]) -> UNetShape:
    mc, cin = u["input_blocks.0.0.weight"].shape[:2]
    mult, attention, depth = [], [], []
    index, in_level, res_blocks, channels, attn, level_depth = 1, 0, 0, 0, False, 0
    while True:
        if f"input_blocks.{index}.0.op.weight" in u:
            mult.append(channels // mc)
            attention.append(attn)
            depth.append(level_depth)
            res_blocks, in_level, attn, level_depth = in_level, 0, False, 0
        elif f"input_blocks.{index}.0.in_layers.2.weight" in u:
            channels = u[f"input_blocks.{index}.0.in_layers.2.weight"].shape[0]
            if f"input_blocks.{index}.1.proj_in.weight" in u and not attn:
                attn = True
                level_depth = _count(u, f"input_blocks.{index}.1.transformer_blocks.{{}}.attn1.to_q.weight")
            in_level += 1
        else:
            break
        index += 1
    mult.append(channels // mc)
    attention.append(attn)
    depth.append(level_depth)
    res_blocks = res_blocks or in_level
    context = u["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    label = u.get("label_emb.0.0.weight")
    return UNetShape(
        cin, u["out.2.weight"].shape[0], mc, mult, res_blocks, attention, context,
        depth=depth,
        middle_depth=_count(u, "middle_block.1.transformer_blocks.{}.attn1.to_q.weight"),
        linear_proj=u["middle_block.1.proj_in.weight"].dim() == 2,
        adm=None if label is None else label.shape[1],
    )


_RES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _res(rest: str) -> str:
    for old, new in _RES.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    raise KeyError(rest)


def convert_unet(u: dict[str, torch.Tensor], s: UNetShape) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    nrb = s.res_blocks
    fixed = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1",  # SDXL's vector embedding (spec §4.1)
        "label_emb.0.2": "add_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    for key, value in u.items():
        head = key.rsplit(".", 1)[0]
        if head in fixed:
            out[fixed[head] + key[len(head):]] = value
            continue
        m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
        if m:
            n, layer, rest = int(m[1]), int(m[2]), m[3]
            level, j = divmod(n - 1, nrb + 1)
            if j == nrb:
                out[f"down_blocks.{level}.downsamplers.0.conv.{rest.split('.', 1)[1]}"] = value
            elif layer == 0:
                out[f"down_blocks.{level}.resnets.{j}.{_res(rest)}"] = value
            else:
                out[f"down_blocks.{level}.attentions.{j}.{rest}"] = value
            continue
        m = re.match(r"middle_block\.(\d+)\.(.*)", key)
        if m:
            layer, rest = int(m[1]), m[2]
            if layer == 1:
                out[f"mid_block.attentions.0.{rest}"] = value
            else:
                out[f"mid_block.resnets.{layer // 2}.{_res(rest)}"] = value
            continue
        m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
        if m:
            n, layer, rest = int(m[1]), int(m[2]), m[3]
            up, j = divmod(n, nrb + 1)
            if rest.startswith("conv."):  # Upsample: .2 after a transformer, .1 without (§4.2)
                out[f"up_blocks.{up}.upsamplers.0.{rest}"] = value
            elif layer == 0:
                out[f"up_blocks.{up}.resnets.{j}.{_res(rest)}"] = value
            else:
                out[f"up_blocks.{up}.attentions.{j}.{rest}"] = value
            continue
        raise KeyError(f"unmapped UNet key {key}")
    return out


def build_unet(sd: dict[str, torch.Tensor]) -> A1111UNet:
    """diffusers' UNet with the checkpoint's weights, walked as A1111 walks LDM's (a1111_unet.py)."""
    u = _sub(sd, UNET)
    s = unet_shape(u)
    unet = A1111UNet(
        sample_size=64,
        in_channels=s.in_channels,
        out_channels=s.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s.attention)),
        block_out_channels=tuple(s.model_channels * m for m in s.mult),
        layers_per_block=s.res_blocks,
        cross_attention_dim=s.context_dim,
        attention_head_dim=8,  # diffusers' name for SD1's fixed 8 heads
        norm_num_groups=32,
        norm_eps=1e-5,
        use_linear_projection=False,
    )
    unet.load_state_dict(convert_unet(u, s), strict=True)
    return unet.eval()


def convert_vae(v: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    for key, value in v.items():
        new = key
        new = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
        m = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(.*)", new)
        if m:
            i = levels - 1 - int(m[1])
            new = f"decoder.up_blocks.{i}." + ("resnets." if m[2] == "block" else "upsamplers.0.") + m[3]
        new = re.sub(r"\.mid\.block_(\d)\.", lambda x: f".mid_block.resnets.{int(x[1]) - 1}.", new)
        new = new.replace(".nin_shortcut.", ".conv_shortcut.")
        new = new.replace(".norm_out.", ".conv_norm_out.")
        m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$", new)
        if m:
            new = f"{m[1]}.mid_block.attentions.0.{attn[m[2]]}.{m[3]}"
            if m[2] != "norm" and value.dim() == 4:
                value = value[:, :, 0, 0]
        out[new] = value
    return out


def build_vae(sd: dict[str, torch.Tensor]) -> AutoencoderKL:
    v = _sub(sd, VAE)
    ch = v["encoder.conv_in.weight"].shape[0]
    levels = _count(v, "encoder.down.{}.block.0.conv1.weight")
    mult = [v[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels)]
    nrb = _count(v, "encoder.down.0.block.{}.conv1.weight")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(ch * m for m in mult),
        layers_per_block=nrb,
        latent_channels=v["decoder.conv_in.weight"].shape[1],
        norm_num_groups=32,
    )
    vae.load_state_dict(convert_vae(v, levels), strict=True)
    return vae.eval()


def build_clip(sd: dict[str, torch.Tensor], prefix: str = CLIP) -> CLIPTextModel:
    """CLIP ViT-L-style text model (quick_gelu) under `prefix` (SDXL: embedder 0's)."""
    c = _sub(sd, prefix)
    # Current A1111 files nest under `text_model.` (old transformers did not); the model here
    # is addressed without it.
    c = {k.removeprefix("text_model."): v for k, v in c.items()}
    c.pop("embeddings.position_ids", None)
    vocab, width = c["embeddings.token_embedding.weight"].shape
    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=c["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(c, "encoder.layers.{}.mlp.fc1.weight"),
        num_attention_heads=width // 64 if width >= 64 and width % 64 == 0 else 1,
        max_position_embeddings=c["embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    model = CLIPTextModel(config)
    model.load_state_dict(c, strict=True)
    return model.eval()


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """All tensors of `path`, floating ones in fp32 (the parity tests run fp32)."""
    sd = load_file(path)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
