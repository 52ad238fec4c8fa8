"""LoRA references for the tiny checkpoints: fixture files, diffusers' own loading, A1111's math.

Usage:
  lora_reference.py make CHECKPOINT OUT_DIR SEED
      Writes, from SEED, LoRA files covering every linear and convolution layer of the
      checkpoint's UNet and text encoder (LoCon: the 3x3 convolutions too):
        kohya.safetensors  kohya names (lora_unet_*, lora_te_*), ranks 4 (linear) and 2 (conv),
                           alphas 3 and 1.5 (not the rank)
        peft.safetensors   diffusers/PEFT names (unet.….lora_A.weight, text_encoder.…), rank 3,
                           no alphas
        other.safetensors  kohya names with the text encoder's and UNet's widths doubled: a
                           LoRA made for another architecture
        kohya_pickle.pt    kohya.safetensors's tensors saved by torch.save
  lora_reference.py diffusers CHECKPOINT LORA OUT.safetensors
      Loads LORA with diffusers (`StableDiffusionLoraLoaderMixin.lora_state_dict`,
      `load_lora_into_unet`, `load_lora_into_text_encoder`, PEFT's merge) into the checkpoint's
      UNet and CLIP text model and writes every merged weight under its LDM key.
  lora_reference.py a1111 CHECKPOINT OUT.safetensors LORA:TE:UNET[:DYN] ...
      Patches the checkpoint as A1111 does (a transcription of `networks.py:
      convert_diffusers_name_to_compvis`, `network_lora.py`, `lyco_helpers.rebuild_conventional`
      and `network_apply_weights`, with the 9-channel padding), networks in order, and writes
      the whole patched checkpoint.
  lora_reference.py make-family CHECKPOINT OUT_DIR SEED
      For an SD 2.x, SDXL or SDXL refiner checkpoint (sd1 too), writes FAMILY_kohya.safetensors
      in the key forms kohya's trainers use for it (see family_layers: SD2 text q/k/v/out as
      transformers names them, SDXL's LDM-named UNet, lora_te1_/lora_te2_), with kohya's
      metadata; for SDXL also sdxl_diffusers.safetensors (the same UNet LoRA under diffusers
      names) and sdxl_loha.safetensors (LoHa on every layer).
  lora_reference.py a1111-any CHECKPOINT OUT.safetensors LORA:TE:UNET ...
      A1111's patching on any family (`assign_network_names_to_compvis_modules`,
      `convert_diffusers_name_to_compvis` with its SD2/`lora_te2_` rules, `load_network`'s
      fallbacks, `network_apply_weights` with the MultiheadAttention branch that stacks q/k/v
      into in_proj_weight), LoRA and LoHa modules; writes the patched checkpoint and prints,
      per network, how many modules applied and how many file keys matched nothing.
  lora_reference.py batch JOBS.json
      Runs each argument list of JOBS.json (a list of lists, as above without the script) in
      one process, so the packages load once.
"""

from __future__ import annotations

import json
import os
import re
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from ldm_to_diffusers import CLIP, UNET, _sub, build_clip, build_unet, convert_unet, load_checkpoint, unet_shape  # noqa: E402
from lycoris_reference import Hada, Layer, rebuild_conventional  # noqa: E402

CLIP_TEXT = CLIP + "text_model."


def ldm_to_diffusers_names(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """LDM UNet key (with prefix) → diffusers UNet key, by converting the keys' own tensors."""
    u = _sub(sd, UNET)
    converted = convert_unet(u, unet_shape(u))
    by_id = {id(v): k for k, v in converted.items()}
    return {UNET + k: by_id[id(v)] for k, v in u.items()}


def clip_key(sd: dict[str, torch.Tensor], rest: str) -> str:
    """The checkpoint key of CLIP's `rest` (`encoder.layers.0.…`), with or without `text_model.`."""
    return CLIP_TEXT + rest if CLIP_TEXT + rest in sd else CLIP + rest


def layers(sd: dict[str, torch.Tensor]):
    """(kind, diffusers-style name, LDM key, shape) of every LoRA-able layer: UNet linears and
    convolutions, CLIP encoder linears."""
    names = ldm_to_diffusers_names(sd)
    for ldm, diff in sorted(names.items()):
        w = sd[ldm]
        if ldm.endswith(".weight") and w.dim() in (2, 4):
            yield "unet", diff[: -len(".weight")], ldm[: -len(".weight")], tuple(w.shape)
    for key, w in sorted(sd.items()):
        m = re.match(r"cond_stage_model\.transformer\.(?:text_model\.)?(encoder\.layers\.\d+\.(?:self_attn\.[qkvo]\w*_proj|mlp\.fc\d))\.weight$", key)
        if m:
            yield "te", "text_model." + m[1], key[: -len(".weight")], tuple(w.shape)


def make(checkpoint: str, out_dir: str, seed: int) -> None:
    sd = load_checkpoint(checkpoint)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std):
        return torch.randn(*shape, generator=g) * std

    kohya, peft, other = {}, {}, {}
    for kind, diff, _, shape in layers(sd):
        out, inp = shape[0], shape[1]
        conv = len(shape) == 4
        kernel = shape[2:] if conv else ()
        kname = ("lora_unet_" if kind == "unet" else "lora_te_") + diff.replace(".", "_")
        rank, alpha = (2, 1.5) if conv else (4, 3.0)
        kohya[kname + ".lora_down.weight"] = randn(rank, inp, *kernel, std=0.2)
        kohya[kname + ".lora_up.weight"] = randn(out, rank, *((1, 1) if conv else ()), std=0.2)
        kohya[kname + ".alpha"] = torch.tensor(alpha)
        pname = ("unet." if kind == "unet" else "text_encoder.") + diff
        peft[pname + ".lora_A.weight"] = randn(3, inp, *kernel, std=0.15)
        peft[pname + ".lora_B.weight"] = randn(out, 3, *((1, 1) if conv else ()), std=0.15)
        other[kname + ".lora_down.weight"] = randn(rank, inp * 2, *kernel, std=0.2)
        other[kname + ".lora_up.weight"] = randn(out * 2, rank, *((1, 1) if conv else ()), std=0.2)
        other[kname + ".alpha"] = torch.tensor(alpha)
    os.makedirs(out_dir, exist_ok=True)
    save_file(kohya, os.path.join(out_dir, "kohya.safetensors"), metadata={"ss_output_name": "kohya_alias"})
    save_file(peft, os.path.join(out_dir, "peft.safetensors"))
    save_file(other, os.path.join(out_dir, "other.safetensors"))
    torch.save(kohya, os.path.join(out_dir, "kohya_pickle.pt"))


def diffusers_merge(checkpoint: str, lora: str, out: str) -> None:
    from diffusers import StableDiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    sd = load_checkpoint(checkpoint)
    unet, clip = build_unet(sd), build_clip(sd)
    state, alphas = StableDiffusionPipeline.lora_state_dict(load_file(lora))
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=unet, adapter_name="test")
    StableDiffusionPipeline.load_lora_into_text_encoder(state, alphas, text_encoder=clip, prefix="text_encoder", adapter_name="test")
    for model in (unet, clip):
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
    merged = {}
    unet_sd = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items()}
    for ldm, diff in ldm_to_diffusers_names(sd).items():
        merged[ldm] = unet_sd[diff].contiguous()
    clip_sd = {k.replace(".base_layer", ""): v for k, v in clip.state_dict().items()}
    for key in sd:
        if key.startswith(CLIP) and not key.endswith("position_ids"):
            rest = key[len(CLIP):].removeprefix("text_model.")
            merged[key] = clip_sd[rest].contiguous()
    save_file(merged, out)


# --- A1111's math, transcribed -------------------------------------------------------------

RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
          "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def compvis_name(key: str) -> str:
    """`convert_diffusers_name_to_compvis` for SD1 (`is_sd2` false)."""
    def m(pattern):
        return re.match(pattern, key)
    if r := m(r"lora_unet_conv_in(.*)"):
        return f"diffusion_model_input_blocks_0_0{r[1]}"
    if r := m(r"lora_unet_conv_out(.*)"):
        return f"diffusion_model_out_2{r[1]}"
    if r := m(r"lora_unet_time_embedding_linear_(\d+)(.*)"):
        return f"diffusion_model_time_embed_{int(r[1]) * 2 - 2}{r[2]}"
    if r := m(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = RESNET.get(r[4], r[4]) if r[2] == "resnets" else r[4]
        return f"diffusion_model_input_blocks_{1 + int(r[1]) * 3 + int(r[3])}_{1 if r[2] == 'attentions' else 0}_{suffix}"
    if r := m(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"):
        suffix = RESNET.get(r[3], r[3]) if r[1] == "resnets" else r[3]
        return f"diffusion_model_middle_block_{1 if r[1] == 'attentions' else int(r[2]) * 2}_{suffix}"
    if r := m(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = RESNET.get(r[4], r[4]) if r[2] == "resnets" else r[4]
        return f"diffusion_model_output_blocks_{int(r[1]) * 3 + int(r[3])}_{1 if r[2] == 'attentions' else 0}_{suffix}"
    if r := m(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"):
        return f"diffusion_model_input_blocks_{3 + int(r[1]) * 3}_0_op"
    if r := m(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"):
        b = int(r[1])
        return f"diffusion_model_output_blocks_{2 + b * 3}_{2 if b > 0 else 1}_conv"
    if r := m(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"):
        return f"transformer_text_model_encoder_layers_{r[1]}_{r[2]}"
    return key


def kohya_form(key: str) -> tuple[str, str]:
    """A file key as (kohya layer name, tensor name); PEFT keys converted as diffusers names them."""
    for prefix, kohya in (("unet.", "lora_unet_"), ("text_encoder.", "lora_te_")):
        if key.startswith(prefix):
            layer, a, b = key[len(prefix):].rsplit(".", 2)
            part = {"lora_A": "lora_down", "lora_B": "lora_up"}.get(a, a) + "." + b
            return kohya + layer.replace(".", "_"), part
    layer, part = key.split(".", 1)
    return layer, part


def a1111_patch(checkpoint: str, out: str, specs: list[str]) -> None:
    sd = load_checkpoint(checkpoint)
    by_name = {}
    for key in sd:
        if key.startswith(UNET) and key.endswith(".weight"):
            by_name["diffusion_model_" + key[len(UNET):-7].replace(".", "_")] = key
        elif key.startswith(CLIP) and key.endswith(".weight"):
            rest = key[len(CLIP):-7].removeprefix("text_model.")
            by_name["transformer_text_model_" + rest.replace(".", "_")] = key
    for spec in specs:
        path, te, unet, *rest = spec.split(":")
        te, unet = float(te), float(unet)
        dyn = int(rest[0]) if rest else None
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in load_file(path).items():
            layer, part = kohya_form(key)
            name = compvis_name(layer)
            if name in by_name:
                modules.setdefault(name, {})[part] = value
        for name, w in modules.items():
            weight_key = by_name[name]
            weight = sd[weight_key]
            up, down = w["lora_up.weight"], w["lora_down.weight"]
            if weight.dim() == 2:
                up, down = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
            elif down.dim() == 2:
                down = down.reshape(down.shape[0], -1, 1, 1)
            output_shape = [up.shape[0], down.shape[1]] + (list(down.shape[2:]) if down.dim() == 4 else [])
            u, d = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
            if dyn is not None:
                u, d = u[:, :dyn], d[:dyn, :]
            updown = (u @ d).reshape(output_shape)
            if len(output_shape) == 4:
                updown = updown.reshape(output_shape)
            if weight.numel() == updown.numel():
                updown = updown.reshape(weight.shape)
            scale = w["alpha"].item() / down.shape[0] if "alpha" in w else 1.0
            multiplier = te if "transformer" in name[:20] else unet
            updown = updown * scale
            updown = updown * multiplier
            if weight.dim() == 4 and weight.shape[1] == 9:
                updown = torch.nn.functional.pad(updown, (0, 0, 0, 0, 0, 5))
            if updown.shape != weight.shape:
                continue  # A1111 counts an error for the network and leaves the layer
            sd[weight_key] = weight + updown
    save_file({k: v.contiguous() for k, v in sd.items()}, out)


# --- SD 2.x, SDXL and the refiner: files in each family's key forms, and A1111 on any family ----

TE1 = "conditioner.embedders.0.transformer.text_model."


def family(sd: dict[str, torch.Tensor]) -> str:
    """sd1, sd2, sdxl or refiner, from the text encoders' keys."""
    if any(k.startswith("conditioner.embedders.1.model.") for k in sd):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.0.model.") for k in sd):
        return "refiner"
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        return "sd2"
    return "sd1"


def diffusers_unet_name(rest: str) -> str | None:
    """An LDM UNet module path (`input_blocks.4.1.proj_in`) in diffusers' naming, written out from
    the block layout (two resnets per level, as all these UNets have); `None` for SDXL's
    `label_emb`, which diffusers calls `add_embedding` and A1111 has no rule for (it is kept
    under that name so the file has it)."""
    res = {v.replace("_", "."): k for k, v in RESNET.items()}
    parts = rest.split(".")

    def block(kind: str, tail: list[str]) -> str:
        t = ".".join(tail)
        return res.get(t, t) if kind == "resnets" else t

    if rest.startswith("input_blocks.0.0"):
        return "conv_in"
    if rest.startswith("out.2"):
        return "conv_out"
    if parts[0] == "time_embed":
        return f"time_embedding.linear_{int(parts[1]) // 2 + 1}"
    if parts[0] == "label_emb":
        return f"add_embedding.linear_{int(parts[2]) // 2 + 1}"
    if parts[0] == "input_blocks":
        n, sub = int(parts[1]), int(parts[2])
        b, i = (n - 1) // 3, (n - 1) % 3
        if i == 2:
            return f"down_blocks.{b}.downsamplers.0.conv"
        kind = "attentions" if sub == 1 else "resnets"
        return f"down_blocks.{b}.{kind}.{i}.{block(kind, parts[3:])}"
    if parts[0] == "middle_block":
        n = int(parts[1])
        if n == 1:
            return f"mid_block.attentions.0.{'.'.join(parts[2:])}"
        return f"mid_block.resnets.{n // 2}.{block('resnets', parts[2:])}"
    if parts[0] == "output_blocks":
        n, sub = int(parts[1]), int(parts[2])
        b, i = n // 3, n % 3
        if parts[3] == "conv":
            return f"up_blocks.{b}.upsamplers.0.conv"
        kind = "attentions" if sub == 1 else "resnets"
        return f"up_blocks.{b}.{kind}.{i}.{block(kind, parts[3:])}"
    raise ValueError(rest)


def family_layers(sd: dict[str, torch.Tensor]):
    """(file layer name, shape) of every LoRA-able layer in the key forms kohya's trainers write
    for the checkpoint's family: SD2 UNet in diffusers names and its text encoder as
    transformers' CLIP (`lora_te_…_self_attn_{q,k,v,out}_proj`, `mlp_fc1/2`); SDXL and refiner
    UNets in LDM names (`lora_unet_input_blocks_…`), CLIP-L as `lora_te1_text_model_…` and
    bigG as `lora_te2_text_model_…` (the refiner's bigG too, which A1111 cannot match)."""
    fam = family(sd)
    for key, w in sorted(sd.items()):
        if not (key.startswith(UNET) and key.endswith(".weight") and w.dim() in (2, 4)):
            continue
        rest = key[len(UNET):-len(".weight")]
        if fam == "sd2":
            yield "lora_unet_" + diffusers_unet_name(rest).replace(".", "_"), tuple(w.shape)
        else:
            yield "lora_unet_" + rest.replace(".", "_"), tuple(w.shape)
    open_clip = {"sd2": ("cond_stage_model.model.", "lora_te_"),
                 "sdxl": ("conditioner.embedders.1.model.", "lora_te2_"),
                 "refiner": ("conditioner.embedders.0.model.", "lora_te2_")}.get(fam)
    if open_clip:
        prefix, kohya = open_clip
        for key, w in sorted(sd.items()):
            m = re.match(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$", key)
            if not m:
                continue
            name = f"{kohya}text_model_encoder_layers_{m[1]}_"
            if m[2] == "attn.in_proj_weight":
                width = w.shape[1]
                for p in "qkv":
                    yield f"{name}self_attn_{p}_proj", (width, width)
            else:
                part = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1",
                        "mlp.c_proj.weight": "mlp_fc2"}[m[2]]
                yield name + part, tuple(w.shape)
    if fam == "sdxl":
        for key, w in sorted(sd.items()):
            m = re.match(re.escape(TE1) + r"(encoder\.layers\.\d+\.(?:self_attn\.[qkvo]\w*_proj|mlp\.fc\d))\.weight$", key)
            if m:
                yield "lora_te1_text_model_" + m[1].replace(".", "_"), tuple(w.shape)


def make_family(checkpoint: str, out_dir: str, seed: int) -> None:
    """NAME_kohya.safetensors (LoRA, LoCon convolutions, alphas not the rank), and for SDXL also
    NAME_diffusers.safetensors (its UNet under kohya's diffusers-derived names) and
    NAME_loha.safetensors (LoHa on every layer), NAME being the family; kohya's metadata
    (`ss_base_model_version`, `ss_v2`) says the family."""
    sd = load_checkpoint(checkpoint)
    fam = family(sd)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std):
        return torch.randn(*shape, generator=g) * std

    kohya, diffusers_named, loha = {}, {}, {}
    for name, shape in family_layers(sd):
        out, inp = shape[0], shape[1]
        conv = len(shape) == 4
        kernel = shape[2:] if conv else ()
        rank, alpha = (2, 1.5) if conv else (4, 3.0)
        lora = {"lora_down.weight": randn(rank, inp, *kernel, std=0.2),
                "lora_up.weight": randn(out, rank, *((1, 1) if conv else ()), std=0.2),
                "alpha": torch.tensor(alpha)}
        kohya.update({f"{name}.{k}": v for k, v in lora.items()})
        loha.update({f"{name}.hada_w1_a": randn(out, 2, std=0.3), f"{name}.hada_w1_b": randn(2, inp, *kernel, std=0.3),
                     f"{name}.hada_w2_a": randn(out, 2, std=0.3), f"{name}.hada_w2_b": randn(2, inp, *kernel, std=0.3),
                     f"{name}.alpha": torch.tensor(1.0)})
    if fam == "sdxl":
        for key, w in sorted(sd.items()):
            if key.startswith(UNET) and key.endswith(".weight") and w.dim() in (2, 4):
                rest = key[len(UNET):-len(".weight")]
                name = "lora_unet_" + diffusers_unet_name(rest).replace(".", "_")
                kohya_name = "lora_unet_" + rest.replace(".", "_")
                for part in ("lora_down.weight", "lora_up.weight", "alpha"):
                    diffusers_named[f"{name}.{part}"] = kohya[f"{kohya_name}.{part}"]
    metadata = {"sd2": {"ss_base_model_version": "sd_v2", "ss_v2": "True"},
                "sdxl": {"ss_base_model_version": "sdxl_base_v1-0"},
                "refiner": {"ss_base_model_version": "sdxl_base_v1-0"},
                "sd1": {"ss_base_model_version": "sd_v1"}}[fam]
    os.makedirs(out_dir, exist_ok=True)
    save_file(kohya, os.path.join(out_dir, f"{fam}_kohya.safetensors"), metadata=metadata)
    if fam == "sdxl":
        save_file(diffusers_named, os.path.join(out_dir, "sdxl_diffusers.safetensors"), metadata=metadata)
        save_file(loha, os.path.join(out_dir, "sdxl_loha.safetensors"), metadata=metadata)


def convert_any(key: str, is_sd2: bool) -> str:
    """`convert_diffusers_name_to_compvis` with its SD2 and `lora_te2_` rules."""
    def open_clip(prefix: str, i: str, rest: str) -> str:
        if "mlp_fc1" in rest:
            return f"{prefix}model_transformer_resblocks_{i}_{rest.replace('mlp_fc1', 'mlp_c_fc')}"
        if "mlp_fc2" in rest:
            return f"{prefix}model_transformer_resblocks_{i}_{rest.replace('mlp_fc2', 'mlp_c_proj')}"
        return f"{prefix}model_transformer_resblocks_{i}_{rest.replace('self_attn', 'attn')}"
    if (r := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)) and is_sd2:
        return open_clip("", r[1], r[2])
    if r := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
        return open_clip("1_", r[1], r[2])
    return compvis_name(key)


def a1111_modules(sd: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[str, str]], bool]:
    """`assign_network_names_to_compvis_modules`: module name → (kind, checkpoint key of its
    weight), kind `plain` or `mha` (an `nn.MultiheadAttention`, whose weight is `in_proj_weight`);
    and A1111's `is_sd2` (the module `model_transformer_resblocks` exists: SD2 only)."""
    names = {}
    for key in sd:
        if key.endswith("in_proj_weight"):
            module, kind = key[: -len(".in_proj_weight")], "mha"
        elif key.endswith(".weight"):
            module, kind = key[: -len(".weight")], "plain"
        else:
            continue
        if module.startswith(UNET):
            name = "diffusion_model_" + module[len(UNET):]
        elif module.startswith("conditioner.embedders."):
            name = module[len("conditioner.embedders."):]
        elif module.startswith(CLIP):
            name = "transformer_text_model_" + module[len(CLIP):].removeprefix("text_model.")
        elif module.startswith("cond_stage_model."):
            name = module[len("cond_stage_model."):]
        else:
            continue
        names[name.replace(".", "_")] = (kind, key)
    is_sd2 = any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in sd)
    return names, is_sd2


def match_any(layer: str, names: dict, is_sd2: bool) -> tuple[str, str] | None:
    """`load_network`'s lookups: (sd_key, module name) or None."""
    key = convert_any(layer, is_sd2)
    if key in names:
        return key, key
    if m := re.match(r"(.*)_([qkv]_proj)$", key):
        if m[1] in names:
            return key, m[1]
    if "lora_unet" in layer:
        key = layer.replace("lora_unet", "diffusion_model")
        return (key, key) if key in names else None
    if "lora_te1_text_model" in layer:
        for to in ("0_transformer_text_model", "transformer_text_model"):
            key = layer.replace("lora_te1_text_model", to)
            if key in names:
                return key, key
    return None


def lora_updown(w: dict[str, torch.Tensor], orig: torch.Tensor) -> torch.Tensor:
    """network_lora.py's calc_updown and finalize_updown's reshape and scale (no multiplier)."""
    up, down = w["lora_up.weight"], w["lora_down.weight"]
    if orig.dim() == 2:
        up, down = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
    elif down.dim() == 2:
        down = down.reshape(down.shape[0], -1, 1, 1)
    output_shape = [up.shape[0], down.shape[1]] + (list(down.shape[2:]) if down.dim() == 4 else [])
    updown = rebuild_conventional(up, down, output_shape)
    if orig.numel() == updown.numel():
        updown = updown.reshape(orig.shape)
    scale = w["alpha"].item() / down.shape[0] if "alpha" in w else 1.0
    return updown * scale


def module_updown(w: dict[str, torch.Tensor], orig: torch.Tensor, sd_key: str, te: float, unet: float,
                  module_shape) -> torch.Tensor:
    """The change one module makes to `orig`, multiplier included (LoRA or LoHa)."""
    if "hada_w1_a" in w:
        case = {"sd_key": sd_key, "te": te, "unet": unet, "layer_obj": Layer("linear", torch.empty(module_shape))}
        updown, _ = Hada(case, w).calc_updown(orig)
        return updown
    multiplier = te if "transformer" in sd_key[:20] else unet
    return lora_updown(w, orig) * multiplier


def a1111_patch_any(checkpoint: str, out: str, specs: list[str]) -> None:
    """A1111's load_network and network_apply_weights on any family, networks in order: the MHA
    of an OpenCLIP block takes its q/k/v modules stacked as rows of in_proj_weight and out_proj's
    module, only when all four are in the file; everything else adds its module's change."""
    sd = load_checkpoint(checkpoint)
    names, is_sd2 = a1111_modules(sd)
    report = {}
    for spec in specs:
        path, te, unet = spec.split(":")
        te, unet = float(te), float(unet)
        modules: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}
        unmatched = []
        for key, value in load_file(path).items():
            layer, part = key.split(".", 1)
            found = match_any(layer, names, is_sd2)
            if found is None:
                unmatched.append(key)
                continue
            sd_key, module = found
            modules.setdefault(sd_key, (module, {}))[1][part] = value
        applied = 0
        for sd_key, (module, w) in modules.items():
            kind, weight_key = names[module]
            if kind == "mha":
                continue  # the q/k/v modules are applied with their attention below
            mha = sd_key.removesuffix("_out_proj")
            if sd_key.endswith("_out_proj") and names.get(mha, ("",))[0] == "mha":
                continue  # out_proj of an MHA: applied only by the MHA's branch
            weight = sd[weight_key]
            updown = module_updown(w, weight, sd_key, te, unet, weight.shape)
            if weight.dim() == 4 and weight.shape[1] == 9:
                updown = torch.nn.functional.pad(updown, (0, 0, 0, 0, 0, 5))
            if updown.shape != weight.shape:
                continue  # A1111 counts an error for the network and leaves the layer
            sd[weight_key] = weight + updown
            applied += 1
        for mha, (kind, weight_key) in names.items():
            if kind != "mha":
                continue
            parts = [modules.get(f"{mha}_{p}_proj") for p in ("q", "k", "v", "out")]
            if not all(parts):
                continue
            out_key = weight_key.replace("in_proj_weight", "out_proj.weight")
            out_w = sd[out_key]
            thirds = sd[weight_key].chunk(3, 0)
            qkv = [module_updown(p[1], t, f"{mha}_{n}_proj", te, unet, out_w.shape)
                   for p, t, n in zip(parts, thirds, "qkv")]
            sd[weight_key] = sd[weight_key] + torch.vstack(qkv)
            sd[out_key] = out_w + module_updown(parts[3][1], out_w, f"{mha}_out_proj", te, unet, out_w.shape)
            applied += 4
        report[spec] = {"applied": applied, "unmatched": len(unmatched)}
    save_file({k: v.contiguous() for k, v in sd.items()}, out)
    print(json.dumps(report))


def run(argv: list[str]) -> None:
    command = argv[0]
    if command == "make":
        make(argv[1], argv[2], int(argv[3]))
    elif command == "diffusers":
        diffusers_merge(*argv[1:4])
    elif command == "a1111":
        a1111_patch(argv[1], argv[2], argv[3:])
    elif command == "make-family":
        make_family(argv[1], argv[2], int(argv[3]))
    elif command == "a1111-any":
        a1111_patch_any(argv[1], argv[2], argv[3:])
    elif command == "batch":
        for job in json.load(open(argv[1])):
            run(job)
    else:
        raise SystemExit(f"unknown command {command}")


def main() -> None:
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
