"""Tiny random upscaler models made with spandrel 0.4.2's own architecture classes, and what
spandrel and A1111 v1.10.1 compute with them: the network outputs (spandrel's `ModelLoader`
reading the saved files, so detection and key conversion are spandrel's too) and A1111's two
tiled upscales, transcribed from `modules/upscaler_utils.py` (`upscale_with_model` over
`modules/images.py: split_grid`/`combine_grid`, and `upscale_2`/`tiled_upscale_2`).

Usage: upscaler_reference.py OUT_DIR
Writes OUT_DIR/models/<name>.pth|.safetensors, hostile.pth, unknown.safetensors,
outputs.safetensors (input and each model's output), detected.json (spandrel's architecture
and scale per file), tile_input.png, grid_<tile>_<overlap>.png (upscale_with_model with the
ESRGAN model), tiled2_<tile>_<overlap>.png (upscale_2 with the SwinIR model) and
untiled.png (the compact model, tile 0).
"""

import json
import math
import os
import sys
import types

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

# A1111's modules/images.py Grid, transcribed once for the grid and upscaler references.
from grid_reference import combine_grid, split_grid  # noqa: E402


def stub_torchvision():
    """spandrel imports torchvision for LaMa and RestoreFormer only; the architectures used
    here never touch it, so a stand-in saves installing it."""
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    def absent(*_args, **_kwargs):
        raise RuntimeError("torchvision is not installed")

    functional.InterpolationMode = type("InterpolationMode", (), {})
    functional.rotate = absent
    functional.normalize = absent
    tv.transforms = transforms
    transforms.functional = functional
    sys.modules.update({
        "torchvision": tv,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    })


stub_torchvision()
from spandrel import ModelLoader  # noqa: E402
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402


def randomize(model, seed):
    """Non-degenerate weights: every parameter (norms, biases, position tables) moved off its
    initial value by seeded noise, so no term of the forward pass vanishes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            fan_in = p[0].numel() if p.dim() > 1 else 1
            std = 0.5 / math.sqrt(fan_in) if p.dim() > 1 else 0.1
            p.add_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()


def brighten(model):
    """Random ESRGAN bodies answer near zero, which the [0, 1] clamp would flatten: the last
    convolution is widened and lifted to mid-grey so the pictures keep their structure."""
    last = model.model[-1]
    with torch.no_grad():
        last.weight.mul_(12.0)
        last.bias.add_(0.45)
    return model


def esrgan_new_keys(state):
    """spandrel's old-arch ESRGAN keys in Real-ESRGAN's (basicsr) new layout, the layout of
    `RealESRGAN_x4plus.pth` and friends."""
    seq = max(int(k.split(".")[1]) for k in state) + 1
    blocks = max(int(k.split(".")[3]) for k in state if k.startswith("model.1.sub.")
                 and ".RDB" in k) + 1
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        index = int(parts[1])
        if index == 0:
            out[f"conv_first.{parts[-1]}"] = v
        elif index == 1:
            if ".RDB" in k:
                # model.1.sub.N.RDBr.convc.0.weight -> body.N.rdbr.convc.weight
                out[f"body.{parts[3]}.rdb{parts[4][3:]}.{parts[5]}.{parts[-1]}"] = v
            else:
                assert int(parts[3]) == blocks
                out[f"conv_body.{parts[-1]}"] = v
        elif index == seq - 1:
            out[f"conv_last.{parts[-1]}"] = v
        elif index == seq - 3:
            out[f"conv_hr.{parts[-1]}"] = v
        else:
            assert index % 3 == 0
            out[f"conv_up{index // 3}.{parts[-1]}"] = v
    return out


def models():
    """(name, network, state dict as saved, formats)."""
    made = []
    esrgan = brighten(randomize(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4), 1))
    made.append(("esrgan_4x", esrgan, esrgan.state_dict(), ("pth", "safetensors")))
    plus = randomize(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2, plus=True), 2)
    made.append(("esrgan_plus_2x", plus, plus.state_dict(), ("pth",)))
    # RealESRGAN_x2plus: pixel-unshuffled input (12 channels), a 4x body, 2x overall.
    unshuffle = randomize(ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=2, scale=4,
                                 shuffle_factor=2), 3)
    made.append(("realesrgan_x2plus", unshuffle,
                 {"params_ema": esrgan_new_keys(unshuffle.state_dict())}, ("pth",)))
    new_x4 = randomize(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4), 4)
    made.append(("realesrgan_x4plus", new_x4,
                 {"params_ema": esrgan_new_keys(new_x4.state_dict())}, ("pth", "safetensors")))
    compact = randomize(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=4), 5)
    made.append(("compact_4x", compact, {"params": compact.state_dict()}, ("pth", "safetensors")))
    swin_common = dict(img_size=16, in_chans=3, embed_dim=16, window_size=4, mlp_ratio=2.0)
    classical = randomize(SwinIR(upscale=2, depths=[2, 2], num_heads=[2, 4], upsampler="pixelshuffle",
                                 resi_connection="1conv", **swin_common), 6)
    made.append(("swinir_classical_2x", classical, {"params": classical.state_dict()},
                 ("pth", "safetensors")))
    real = randomize(SwinIR(upscale=4, depths=[2], num_heads=[2], upsampler="nearest+conv",
                            resi_connection="3conv", **swin_common), 7)
    made.append(("swinir_real_4x", real, {"params_ema": real.state_dict()}, ("pth",)))
    light = randomize(SwinIR(upscale=2, depths=[2], num_heads=[4], upsampler="pixelshuffledirect",
                             resi_connection="1conv", **swin_common), 8)
    made.append(("swinir_light_2x", light, light.state_dict(), ("pth",)))
    # Window 7: spandrel's JPEG/denoise models, image range 255.
    denoise = randomize(SwinIR(upscale=1, img_size=14, in_chans=3, embed_dim=12, window_size=7,
                               mlp_ratio=2.0, depths=[2], num_heads=[3], upsampler="",
                               resi_connection="1conv"), 9)
    made.append(("swinir_denoise_1x", denoise, {"params": denoise.state_dict()}, ("pth",)))
    return made


def contiguous(state):
    if isinstance(state, dict):
        return {k: contiguous(v) for k, v in state.items()}
    return state.contiguous()


def flat(state):
    """A safetensors file holds one flat dict: the wrapper key goes."""
    if len(state) == 1 and isinstance(next(iter(state.values())), dict):
        return next(iter(state.values()))
    return state


class Hostile:
    """A pickle that would run `os.system` when unpickled by plain `pickle`."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


# --- A1111 v1.10.1 modules/upscaler_utils.py and modules/images.py, transcribed ---------

def pil_image_to_torch_bgr(img):
    img = np.array(img.convert("RGB"))
    img = img[:, :, ::-1]
    img = np.transpose(img, (2, 0, 1))
    img = np.ascontiguousarray(img) / 255
    return torch.from_numpy(img)


def torch_bgr_to_pil_image(tensor):
    if tensor.ndim == 4:
        tensor = tensor.squeeze(0)
    arr = tensor.float().cpu().clamp_(0, 1).numpy()
    arr = 255.0 * np.moveaxis(arr, 0, 2)
    arr = arr.round().astype(np.uint8)
    arr = arr[:, :, ::-1]
    return Image.fromarray(arr, "RGB")


def upscale_pil_patch(model, img):
    tensor = pil_image_to_torch_bgr(img).unsqueeze(0).to(dtype=torch.float32)
    with torch.inference_mode():
        return torch_bgr_to_pil_image(model(tensor))


def upscale_with_model(model, img, tile_size, tile_overlap):
    if tile_size <= 0:
        return upscale_pil_patch(model, img)
    tiles, tile_w, tile_h, image_w, image_h, overlap = split_grid(img, tile_size, tile_size, tile_overlap)
    newtiles = []
    for y, h, row in tiles:
        newrow = []
        for x, w, tile in row:
            output = upscale_pil_patch(model, tile)
            scale_factor = output.width // tile.width
            newrow.append([x * scale_factor, w * scale_factor, output])
        newtiles.append([y * scale_factor, h * scale_factor, newrow])
    return combine_grid((newtiles, tile_w * scale_factor, tile_h * scale_factor,
                         image_w * scale_factor, image_h * scale_factor, overlap * scale_factor))


def tiled_upscale_2(img, model, tile_size, tile_overlap, scale):
    b, c, h, w = img.size()
    tile_size = min(tile_size, h, w)
    if tile_size <= 0:
        return model(img)
    stride = tile_size - tile_overlap
    h_idx_list = list(range(0, h - tile_size, stride)) + [h - tile_size]
    w_idx_list = list(range(0, w - tile_size, stride)) + [w - tile_size]
    result = torch.zeros(b, c, h * scale, w * scale).type_as(img)
    weights = torch.zeros_like(result)
    for h_idx in h_idx_list:
        for w_idx in w_idx_list:
            in_patch = img[..., h_idx: h_idx + tile_size, w_idx: w_idx + tile_size]
            out_patch = model(in_patch)
            result[..., h_idx * scale: (h_idx + tile_size) * scale,
                   w_idx * scale: (w_idx + tile_size) * scale].add_(out_patch)
            weights[..., h_idx * scale: (h_idx + tile_size) * scale,
                    w_idx * scale: (w_idx + tile_size) * scale].add_(torch.ones_like(out_patch))
    return result.div_(weights)


def upscale_2(img, model, tile_size, tile_overlap, scale):
    tensor = pil_image_to_torch_bgr(img).to(dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        output = tiled_upscale_2(tensor, model, tile_size=tile_size, tile_overlap=tile_overlap,
                                 scale=scale)
    return torch_bgr_to_pil_image(output)


@torch.no_grad()
def main():
    out = sys.argv[1]
    torch.set_num_threads(1)
    model_dir = os.path.join(out, "models")
    os.makedirs(model_dir, exist_ok=True)
    x = torch.rand((1, 3, 13, 11), generator=torch.Generator().manual_seed(11))
    outputs = {"input": x}
    detected = {}
    loaded = {}
    for name, _net, state, formats in models():
        state = contiguous(state)
        for fmt in formats:
            path = os.path.join(model_dir, f"{name}.{fmt}")
            if fmt == "pth":
                torch.save(state, path)
            else:
                save_file(flat(state), path)
            descriptor = ModelLoader().load_from_file(path)
            # As A1111's load_spandrel_model: inference mode (SwinIR's drop path is random
            # while training).
            descriptor.model.eval()
            detected[os.path.basename(path)] = {
                "architecture": descriptor.architecture.id, "scale": descriptor.scale}
            loaded[name] = descriptor
            key = f"{name}.{fmt}"
            # The network alone, and spandrel's call (size padding, clamp, crop) A1111 uses.
            outputs[key] = descriptor.model(x).contiguous()
            outputs[f"{key}:call"] = descriptor(x).contiguous()
    save_file(outputs, os.path.join(out, "outputs.safetensors"))
    with open(os.path.join(out, "detected.json"), "w") as f:
        json.dump(detected, f, indent=1, sort_keys=True)
    torch.save({"model.0.weight": Hostile()}, os.path.join(out, "hostile.pth"))
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)},
              os.path.join(out, "unknown.safetensors"))

    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (5, 6, 3)).astype(np.float32)
    # A smooth picture with some noise, so tiles carry structure across their seams.
    picture = np.array(Image.fromarray(base.astype(np.uint8)).resize((23, 18), Image.BILINEAR))
    picture = np.clip(picture.astype(np.int16) + rng.integers(-12, 13, picture.shape), 0, 255)
    img = Image.fromarray(picture.astype(np.uint8), "RGB")
    img.save(os.path.join(out, "tile_input.png"))
    for tile, overlap in ((8, 2), (10, 3), (192, 8)):
        upscale_with_model(loaded["esrgan_4x"], img, tile, overlap).save(
            os.path.join(out, f"grid_{tile}_{overlap}.png"))
        swin = loaded["swinir_classical_2x"]
        upscale_2(img, swin, tile, overlap, swin.scale).save(
            os.path.join(out, f"tiled2_{tile}_{overlap}.png"))
    upscale_with_model(loaded["compact_4x"], img, 0, 0).save(os.path.join(out, "untiled.png"))


if __name__ == "__main__":
    main()
