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
  lora_reference.py batch JOBS.json
      Runs each argument list of JOBS.json (a list of lists, as above without the script) in
      one process, so the packages load once.
"""

from __future__ import annotations

import os
import re
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from ldm_to_diffusers import CLIP, UNET, _sub, build_clip, build_unet, convert_unet, load_checkpoint, unet_shape  # noqa: E402

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


def run(argv: list[str]) -> None:
    command = argv[0]
    if command == "make":
        make(argv[1], argv[2], int(argv[3]))
    elif command == "diffusers":
        diffusers_merge(*argv[1:4])
    elif command == "a1111":
        a1111_patch(argv[1], argv[2], argv[3:])
    elif command == "batch":
        import json
        for job in json.load(open(argv[1])):
            run(job)
    else:
        raise SystemExit(f"unknown command {command}")


def main() -> None:
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
