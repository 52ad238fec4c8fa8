"""Writes the starting corpus of every fuzz target into fuzz/seeds/<target>/ (small, valid
inputs of each format, so that AFL++ starts inside the parsers rather than at their first
check). Run with the test venv's Python (it needs torch for the pickles):

    .venv/bin/python fuzz/make_seeds.py
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import torch

SEEDS = Path(__file__).resolve().parent / "seeds"

INFOTEXTS = [
    "a cottage on a green hill, (golden hour:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, "
    "Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x48, Denoising strength: 0.6, "
    'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1',
    "a [cat:dog:5] <lora:x:0.5>\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 3, Size: 512x512, "
    "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Denoising strength: 0.5, Clip skip: 2, "
    "Variation seed: 9, Variation seed strength: 0.3, Seed resize from: 256x256, RNG: CPU, "
    "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Token merging ratio: 0.5",
    "just a prompt",
]


def write(target: str, name: str, data: bytes) -> None:
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def frame(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return b"SDH1" + struct.pack(">II", len(head), len(payload)) + head + payload


def png(width: int, height: int, texts: dict[str, str], compressed: bool = False) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\0" + bytes((x * 40) % 256 for x in range(width * 3)) for _ in range(height))
    chunks = [chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    for key, value in texts.items():
        if compressed:
            chunks.append(chunk(b"zTXt", key.encode("latin-1") + b"\0\0" + zlib.compress(value.encode("latin-1", "replace"))))
        else:
            chunks.append(chunk(b"iTXt", key.encode() + b"\0\0\0\0\0" + value.encode()))
    chunks.append(chunk(b"IDAT", zlib.compress(raw)))
    chunks.append(chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def frames() -> None:
    rgba = bytes(i % 256 for i in range(8 * 8 * 4))
    mask = bytes(255 if i % 8 > 3 else 0 for i in range(8 * 8))
    attach = [
        {"name": "image", "format": "rgba8", "width": 8, "height": 8, "length": len(rgba)},
        {"name": "mask", "format": "y8", "width": 8, "height": 8, "length": len(mask)},
    ]
    hello = frame({"type": "hello", "id": 1, "protocol": 1, "client": "seed"})
    write("frame", "hello_img2img", hello + frame(
        {"type": "img2img", "id": 2, "mode": "inpaint", "attachments": attach,
         "params": {"prompt": "a", "steps": 3, "width": 16, "height": 16, "denoising_strength": 0.5}},
        rgba + mask))
    write("frame", "txt2img", frame({"type": "txt2img", "id": 3, "params": {"prompt": "b", "steps": 2, "width": 16, "height": 16, "enable_hr": True, "hr_scale": 2}}))
    picture = png(4, 4, {"parameters": INFOTEXTS[0]})
    write("frame", "png_info", frame(
        {"type": "png_info", "id": 4, "attachments": [{"name": "image", "format": "png", "length": len(picture)}]},
        picture))
    write("frame", "cancel_ping", frame({"type": "cancel", "id": 5, "job": 1}) + frame({"type": "ping", "id": 6}))


def requests() -> None:
    write("request", "img2img", json.dumps({
        "type": "img2img", "id": 1, "mode": "inpaint",
        "params": {"prompt": "a <lora:x:1>", "steps": 4, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
                   "width": 16, "height": 16, "mask_blur": 4, "inpaint_full_res": True,
                   "inpaint_full_res_padding": 8, "inpainting_fill": 1, "n_iter": 2, "batch_size": 2,
                   "seed": 5, "subseed": 6, "subseed_strength": 0.5, "seed_resize_from_w": 8,
                   "seed_resize_from_h": 8, "override_settings": {"CLIP_stop_at_last_layers": 2}},
        "preview": {"method": "Full", "every": 2}}).encode())
    write("request", "txt2img_xyz", json.dumps({
        "type": "txt2img", "id": 2,
        "params": {"prompt": "b", "steps": 3, "width": 24, "height": 16, "enable_hr": True, "hr_scale": 1.5,
                   "hr_second_pass_steps": 2, "hr_upscaler": "Latent"},
        "script_name": "X/Y/Z plot", "script_args": [4, "10-20 (+5)", [], 7, "1,2", [], 0, "", [], True, False, False, False, 0, False]}).encode())
    write("request", "interrogate", json.dumps({"type": "interrogate", "id": 3, "method": "clip"}).encode())
    write("request", "upscale", json.dumps({"type": "upscale", "id": 5, "upscaler": "Lanczos", "scale": 2.5,
                                            "upscaler_2": "Nearest", "upscaler_2_visibility": 0.3}).encode())
    write("request", "upscale_size", json.dumps({"type": "upscale", "id": 6, "upscaler": "None",
                                                 "width": 40, "height": 24}).encode())
    write("request", "sketch", json.dumps({"type": "img2img", "id": 4, "mode": "inpaint_sketch",
                                           "params": {"mask_blur_x": 2, "mask_alpha": 50, "sampler_name": "DDIM"}}).encode())


def api_bodies() -> None:
    dot = png(8, 8, {})
    import base64

    image = base64.b64encode(dot).decode()
    write("api_body", "img2img", b"\x00" + json.dumps({
        "init_images": [image], "mask": image, "prompt": "a", "steps": 3, "width": 16, "height": 16,
        "sampler_name": "Euler a", "denoising_strength": 0.4, "inpainting_fill": 2,
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "None"},
        "script_name": "x/y/z plot", "script_args": [7, "5,10", [], 0, "", [], 0, "", []]}).encode())
    write("api_body", "txt2img", b"\x01" + json.dumps({
        "prompt": "b", "negative_prompt": "c", "steps": 4, "sampler_index": "DPM++ SDE Karras",
        "enable_hr": True, "hr_resize_x": 32, "hr_resize_y": 32, "infotext": INFOTEXTS[1], "seed": -1,
        "styles": [], "alwayson_scripts": {}}).encode())


def pickles() -> None:
    torch.manual_seed(0)
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4, 3, 3),
             "model.diffusion_model.input_blocks.0.0.bias": torch.randn(4).half()}
    for name, obj, zipped in [
        ("state_dict_zip", {"state_dict": state, "global_step": 1}, True),
        ("state_dict_legacy", state, False),
        ("embedding", {"string_to_param": {"*": torch.randn(2, 8)}, "name": "e", "step": 3}, True),
        ("hypernetwork", {768: [torch.randn(4, 2), torch.randn(4)], "layer_structure": [1, 2, 1],
                          "activation_func": "relu", "name": "h"}, True),
        ("upscaler", {"conv_first.weight": torch.randn(2, 3, 3, 3), "conv_first.bias": torch.randn(2)}, True),
    ]:
        buffer = io.BytesIO()
        torch.save(obj, buffer, _use_new_zipfile_serialization=zipped)
        write("pickle", name, buffer.getvalue())


def safetensors_files() -> None:
    from safetensors.torch import save

    torch.manual_seed(1)
    write("safetensors", "checkpoint", save({
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4, 3, 3),
        "first_stage_model.decoder.conv_in.bias": torch.randn(4).half(),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.randn(8, 4).bfloat16(),
    }, metadata={"modelspec.title": "seed", "ss_tag_frequency": json.dumps({"a": {"cat": 2}})}))
    write("safetensors", "lora", save({
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(4, 2),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(1.0),
    }))


def text_targets() -> None:
    write("png_info", "itxt", png(4, 4, {"parameters": INFOTEXTS[0]}))
    write("png_info", "ztxt", png(4, 4, {"parameters": INFOTEXTS[1]}, compressed=True))
    for i, text in enumerate(INFOTEXTS):
        write("infotext", f"infotext{i}", text.encode())
    for i, prompt in enumerate([
        "a (cat:1.2) [dog:0.5] ((very)) [[low]] \\(escaped\\)",
        "[a:b:0.3] [c:d:5] [x|y|z] AND e :0.5 BREAK f",
        "<lora:add_detail:0.7:0.3> <lyco:l:1:unet=0.5:dyn=4> <hypernet:h:1> g",
    ]):
        write("prompt", f"prompt{i}", bytes([20]) + prompt.encode())
    for i, values in enumerate(["1-5, 8, 10-20 (+3)", "0.1-1 [5], 2.5", "Euler a, DPM++ 2M, \"q, r\"", "a, b, c"]):
        write("xyz_values", f"values{i}", bytes([i]) + values.encode())
    write("xyz_values", "script_args", bytes([2]) + json.dumps(
        [1, "", ["DPM++ 2M", "Euler"], 4, "1-3", [], 0, "", [], True, False, False, False, 0, False]).encode())
    write("lora_keys", "kohya", "\n".join([
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
        "lora_unet_input_blocks_1_1_proj_in.hada_w1_a",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lokr_w1",
    ]).encode())
    write("lora_keys", "peft", "\n".join([
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_linear_layer.up.weight",
        "unet.mid_block.attentions.0.proj_out.lora.down.weight",
    ]).encode())


def main() -> int:
    frames()
    requests()
    api_bodies()
    pickles()
    safetensors_files()
    text_targets()
    return 0


if __name__ == "__main__":
    sys.exit(main())
