"""The framework-free parts of A1111 v1.10.1's img2img scripts, transcribed from a reading of
`scripts/prompt_matrix.py`, `scripts/prompts_from_file.py`, `scripts/loopback.py`,
`scripts/outpainting_mk_2.py` and `scripts/poor_mans_outpainting.py`, with the libraries they
use (shlex, NumPy, Pillow, scikit-image). Only what happens before and after
`process_images` is here; the jobs themselves are compared by the Rust tests.

Usage: scripts_reference.py OUT_DIR
Writes:
  cases.json               prompt matrix prompts/rows/legends, shlex.split and cmdargs results
                           (or the error that makes A1111 use the line as the prompt), the
                           non-empty stripped lines, loopback strengths;
  picture.png              the test picture the outpainting cases start from (97x71);
  poor_<i>_{image,mask,latent}.png   poor man's canvas and masks per POOR_CASES;
  mk2_<i>_{init,mask,latent,grown}.png, mk2.json   one Outpainting mk2 expand per MK2_CASES:
                           the job's init image (matched noise), mask, latent mask, size, and
                           the grown picture after pasting result.png (the job's stand-in);
  noise_<i>.png, noise_src_<i>.png, noise_mask_<i>.png   get_matched_noise on its own.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys

import numpy as np
import skimage.exposure
from PIL import Image, ImageDraw

# ---------------------------------------------------------------- prompt matrix


def matrix_prompts(prompt, put_at_start, delimiter):
    parts = prompt.split("|")
    out = []
    for combination_num in range(2 ** (len(parts) - 1)):
        selected = [t.strip().strip(",") for n, t in enumerate(parts[1:]) if combination_num & (1 << n)]
        selected = selected + [parts[0]] if put_at_start else [parts[0]] + selected
        out.append(delimiter.join(selected))
    return out


def matrix_legend(prompt):
    prompts = prompt.split("|")[1:]
    boundary = math.ceil(len(prompts) / 2)
    horiz, vert = prompts[:boundary], prompts[boundary:]
    hor = [[[x, pos & (1 << i) != 0] for i, x in enumerate(horiz)] for pos in range(1 << len(horiz))]
    ver = [[[x, pos & (1 << i) != 0] for i, x in enumerate(vert)] for pos in range(1 << len(vert))]
    return hor, ver


MATRIX_PROMPTS = [
    "a cat| in a hat |, red,",
    "portrait|smiling|oil painting|night| ,blue ,",
    "solo",
    "x||y",
    " lead ,| a | b | c | d ",
]

# ---------------------------------------------------------------- prompts from file

TAG_TYPES = {
    "sd_model": str, "outpath_samples": str, "outpath_grids": str, "prompt_for_display": str,
    "prompt": str, "negative_prompt": str, "styles": str, "seed": int, "subseed_strength": float,
    "subseed": int, "seed_resize_from_h": int, "seed_resize_from_w": int, "sampler_index": int,
    "sampler_name": str, "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float,
    "width": int, "height": int, "restore_faces": "bool", "tiling": "bool",
    "do_not_save_samples": "bool", "do_not_save_grid": "bool",
}


def cmdargs(line):
    """A1111's cmdargs with the model lookup and samplers_map left out (values as written)."""
    args = shlex.split(line)
    pos, res = 0, {}
    while pos < len(args):
        arg = args[pos]
        assert arg.startswith("--"), f"must start with --: {arg}"
        assert pos + 1 < len(args), f"missing argument for {arg}"
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            pos += 1
            prompt = args[pos]
            pos += 1
            while pos < len(args) and not args[pos].startswith("--"):
                prompt += " " + args[pos]
                pos += 1
            res[tag] = prompt
            continue
        kind = TAG_TYPES.get(tag)
        assert kind, f"unknown commandline option: {arg}"
        val = args[pos + 1]
        res[tag] = (val == "true") if kind == "bool" else kind(val)
        pos += 2
    return res


CMD_LINES = [
    "--prompt a red cat --steps 12 --cfg_scale 7.5",
    "--prompt \"quoted words\" more words --negative_prompt 'ugly, blurry' --seed -5",
    "--steps twelve",
    "--seed 1_000 --subseed_strength 1e-1 --width +64 --height 0064",
    "--prompt --steps 5",
    "--sampler_name \"Euler a\" --n_iter 2 --batch_size 3",
    "--sampler_name euler a",
    "--styles x --restore_faces true --tiling false",
    "--sampler_index 3 --seed_resize_from_h 128 --seed_resize_from_w 96 --subseed 7",
    "--cfg_scale inf --steps 1__0",
    "--prompt unclosed \"quote",
    "--prompt esc\\aped\\ space --steps",
    "--bogus 1",
    "plain -- dashes",
    "--cfg_scale 1_0.5_0 --steps 3.0",
    "--sd_model my-model.safetensors --prompt x",
]

SHLEX_LINES = [
    r'a "b c" d',
    r"""--prompt "a \"b\" \c" 'd e'f "" x\ y""",
    r"'single \"' tail\\",
    "tabs\tand\nnewlines\r here",
    "x''y \"\"",
    r'"esc \\ \$ \'"',
    "\u00a0nbsp stays",
]

TEXTBOX = " first line \r\n\n--prompt second --steps 3\r third\x0cfourth\u2028 \x1c fifth \x1d\n\u0085sixth"

# ---------------------------------------------------------------- loopback


def loopback_strengths(loops, initial, final, curve):
    out = []
    for loop in range(loops):
        if loops == 1:
            out.append(initial)
            continue
        progress = loop / (loops - 1)
        if curve == "Aggressive":
            s = math.sin(progress * math.pi * 0.5)
        elif curve == "Lazy":
            s = 1 - math.cos(progress * math.pi * 0.5)
        else:
            s = progress
        out.append(initial + (final - initial) * s)
    return out


LOOPBACK_CASES = [(4, 0.75, 0.5, "Linear"), (5, 0.3, 0.9, "Aggressive"), (7, 0.8, 0.1, "Lazy"), (1, 0.6, 0.2, "Lazy"), (2, 0.0, 1.0, "Aggressive")]

# ---------------------------------------------------------------- outpainting


def expansion(init_w, init_h, pixels, direction):
    left = pixels if "left" in direction else 0
    right = pixels if "right" in direction else 0
    up = pixels if "up" in direction else 0
    down = pixels if "down" in direction else 0
    target_w = math.ceil((init_w + left + right) / 64) * 64
    target_h = math.ceil((init_h + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - init_w) // (left + right)
    if right > 0:
        right = target_w - init_w - left
    if up > 0:
        up = up * (target_h - init_h) // (up + down)
    if down > 0:
        down = target_h - init_h - up
    return left, right, up, down, target_w, target_h


POOR_CASES = [(128, 4, ["left", "right", "up", "down"]), (8, 0, ["left"]), (64, 9, ["up", "right"]), (200, 30, ["down"])]


def poor_canvas(init_img, pixels, mask_blur, direction):
    left, right, up, down, target_w, target_h = expansion(init_img.width, init_img.height, pixels, direction)
    img = Image.new("RGB", (target_w, target_h))
    img.paste(init_img, (left, up))
    mask = Image.new("L", (img.width, img.height), "white")
    draw = ImageDraw.Draw(mask)
    draw.rectangle((
        left + (mask_blur * 2 if left > 0 else 0),
        up + (mask_blur * 2 if up > 0 else 0),
        mask.width - right - (mask_blur * 2 if right > 0 else 0),
        mask.height - down - (mask_blur * 2 if down > 0 else 0),
    ), fill="black")
    latent_mask = Image.new("L", (img.width, img.height), "white")
    latent_draw = ImageDraw.Draw(latent_mask)
    latent_draw.rectangle((
        left + (mask_blur // 2 if left > 0 else 0),
        up + (mask_blur // 2 if up > 0 else 0),
        mask.width - right - (mask_blur // 2 if right > 0 else 0),
        mask.height - down - (mask_blur // 2 if down > 0 else 0),
    ), fill="black")
    return img, mask, latent_mask


def get_matched_noise(_np_src_image, np_mask_rgb, noise_q=1, color_variation=0.05):
    """g-diffuser's matched noise as A1111's outpainting_mk_2.py has it."""

    def _fft2(data):
        out = np.zeros(data.shape, dtype=np.complex128)
        for c in range(data.shape[2]):
            out[:, :, c] = np.fft.fft2(np.fft.fftshift(data[:, :, c]), norm="ortho")
            out[:, :, c] = np.fft.ifftshift(out[:, :, c])
        return out

    def _ifft2(data):
        out = np.zeros(data.shape, dtype=np.complex128)
        for c in range(data.shape[2]):
            out[:, :, c] = np.fft.ifft2(np.fft.fftshift(data[:, :, c]), norm="ortho")
            out[:, :, c] = np.fft.ifftshift(out[:, :, c])
        return out

    def _window(width, height, std=3.14):
        scale_x = float(width / min(width, height))
        scale_y = float(height / min(width, height))
        window = np.zeros((width, height))
        x = (np.arange(width) / width * 2. - 1.) * scale_x
        for y in range(height):
            fy = (y / height * 2. - 1.) * scale_y
            window[:, y] = (1 / ((x ** 2 + 1.) * (fy ** 2 + 1.))) ** (std / 3.14)
        return window

    width, height, num_channels = _np_src_image.shape
    np_mask_grey = np.sum(np_mask_rgb, axis=2) / 3.
    img_mask = np_mask_grey > 1e-6
    ref_mask = np_mask_grey < 1e-3
    window_rgb = np.stack([np_mask_grey] * 3, axis=2)
    windowed_image = _np_src_image * (1. - window_rgb)
    windowed_image /= np.max(windowed_image)
    windowed_image += np.average(_np_src_image) * np_mask_rgb
    src_fft = _fft2(windowed_image)
    src_dist = np.absolute(src_fft)
    src_phase = src_fft / src_dist
    rng = np.random.default_rng(0)
    noise_window = _window(width, height)
    noise_rgb = rng.random((width, height, num_channels))
    noise_grey = np.sum(noise_rgb, axis=2) / 3.
    noise_rgb *= color_variation
    for c in range(num_channels):
        noise_rgb[:, :, c] += (1. - color_variation) * noise_grey
    noise_fft = _fft2(noise_rgb)
    for c in range(num_channels):
        noise_fft[:, :, c] *= noise_window
    noise_rgb = np.real(_ifft2(noise_fft))
    shaped_noise_fft = _fft2(noise_rgb)
    shaped_noise_fft[:, :, :] = np.absolute(shaped_noise_fft[:, :, :]) ** 2 * (src_dist ** noise_q) * src_phase
    shaped_noise = np.real(_ifft2(shaped_noise_fft))
    shaped_noise -= np.min(shaped_noise)
    shaped_noise /= np.max(shaped_noise)
    shaped_noise[img_mask, :] = skimage.exposure.match_histograms(shaped_noise[img_mask, :] ** 1., _np_src_image[ref_mask, :], channel_axis=1)
    shaped_noise = _np_src_image[:] * (1. - np_mask_rgb) + shaped_noise * np_mask_rgb
    return np.clip(shaped_noise, 0., 1.)


def noised_image(img, mask, noise_q, color_variation):
    np_image = (np.asarray(img) / 255.0).astype(np.float64)
    np_mask = (np.asarray(mask) / 255.0).astype(np.float64)
    noised = get_matched_noise(np_image, np_mask, noise_q, color_variation)
    return Image.fromarray(np.clip(noised * 255., 0., 255.).astype(np.uint8), mode="RGB")


# (side, expand pixels, mask blur x, mask blur y, process width, process height, noise_q, color variation)
MK2_CASES = [
    ("left", 31, 8, 0, 64, 64, 1.0, 0.05),
    ("right", 95, 4, 4, 128, 64, 0.5, 0.3),
    ("up", 57, 0, 8, 64, 64, 2.0, 0.0),
    ("down", 8, 2, 2, 96, 48, 1.0, 1.0),
]


def mk2_expand(init, side, expand_pixels, blur_x, blur_y, process_width, process_height, noise_q, color_variation, result_for):
    is_left, is_right, is_top, is_bottom = side == "left", side == "right", side == "up", side == "down"
    is_horiz = is_left or is_right
    is_vert = is_top or is_bottom
    pixels_horiz = expand_pixels if is_horiz else 0
    pixels_vert = expand_pixels if is_vert else 0
    res_w = init.width + pixels_horiz
    res_h = init.height + pixels_vert
    process_res_w = math.ceil(res_w / 64) * 64
    process_res_h = math.ceil(res_h / 64) * 64
    img = Image.new("RGB", (process_res_w, process_res_h))
    img.paste(init, (pixels_horiz if is_left else 0, pixels_vert if is_top else 0))
    mask = Image.new("RGB", (process_res_w, process_res_h), "white")
    draw = ImageDraw.Draw(mask)
    draw.rectangle((
        expand_pixels + blur_x if is_left else 0,
        expand_pixels + blur_y if is_top else 0,
        mask.width - expand_pixels - blur_x if is_right else res_w,
        mask.height - expand_pixels - blur_y if is_bottom else res_h,
    ), fill="black")
    out = noised_image(img, mask, noise_q, color_variation)
    target_width = min(process_width, init.width + pixels_horiz) if is_horiz else img.width
    target_height = min(process_height, init.height + pixels_vert) if is_vert else img.height
    width = target_width if is_horiz else img.width
    height = target_height if is_vert else img.height
    crop_region = (
        0 if is_left else out.width - target_width,
        0 if is_top else out.height - target_height,
        target_width if is_left else out.width,
        target_height if is_top else out.height,
    )
    mask = mask.crop(crop_region)
    job_init = out.crop(crop_region)
    latent_mask = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(latent_mask)
    draw.rectangle((
        expand_pixels + blur_x * 2 if is_left else 0,
        expand_pixels + blur_y * 2 if is_top else 0,
        mask.width - expand_pixels - blur_x * 2 if is_right else res_w,
        mask.height - expand_pixels - blur_y * 2 if is_bottom else res_h,
    ), fill="black")
    result = result_for(width, height)
    out.paste(result, (0 if is_left else out.width - result.width, 0 if is_top else out.height - result.height))
    grown = out.crop((0, 0, res_w, res_h))
    return job_init, mask.convert("L"), latent_mask.convert("L"), width, height, grown


def picture(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=2)
    base += rng.integers(0, 40, size=base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def result_for(width, height):
    """The stand-in for a job's result: a pattern of the job's size."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([(x * 7) % 256, (y * 5) % 256, ((x ^ y) * 3) % 256], axis=2).astype(np.uint8), "RGB")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    cases = {"matrix": [], "shlex": [], "cmdargs": [], "lines": [], "loopback": []}
    for prompt in MATRIX_PROMPTS:
        hor, ver = matrix_legend(prompt)
        cases["matrix"].append({
            "prompt": prompt,
            "comma": matrix_prompts(prompt, False, ", "),
            "space_at_start": matrix_prompts(prompt, True, " "),
            "rows": 1 << ((len(prompt.split("|")) - 1) // 2),
            "hor": hor,
            "ver": ver,
        })
    for line in SHLEX_LINES:
        try:
            cases["shlex"].append({"line": line, "words": shlex.split(line)})
        except ValueError as e:
            cases["shlex"].append({"line": line, "error": str(e)})
    for line in CMD_LINES:
        try:
            cases["cmdargs"].append({"line": line, "args": cmdargs(line)})
        except Exception as e:  # A1111 catches every exception and uses the line as the prompt
            cases["cmdargs"].append({"line": line, "error": f"{type(e).__name__}: {e}"})
    cases["lines"] = {"text": TEXTBOX, "lines": [x for x in (x.strip() for x in TEXTBOX.splitlines()) if x]}
    for loops, initial, final, curve in LOOPBACK_CASES:
        cases["loopback"].append({"loops": loops, "initial": initial, "final": final, "curve": curve,
                                  "strengths": loopback_strengths(loops, initial, final, curve)})
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, ensure_ascii=False, allow_nan=True)

    pic = picture(97, 71, 5)
    pic.save(os.path.join(out, "picture.png"))
    poor = []
    for i, (pixels, blur, direction) in enumerate(POOR_CASES):
        img, mask, latent = poor_canvas(pic, pixels, blur, direction)
        img.save(os.path.join(out, f"poor_{i}_image.png"))
        mask.save(os.path.join(out, f"poor_{i}_mask.png"))
        latent.save(os.path.join(out, f"poor_{i}_latent.png"))
        poor.append({"pixels": pixels, "blur": blur, "direction": direction,
                     "expansion": list(expansion(pic.width, pic.height, pixels, direction))})
    mk2 = []
    for i, (side, pixels, bx, by, pw, ph, q, cv) in enumerate(MK2_CASES):
        job_init, mask, latent, width, height, grown = mk2_expand(pic, side, pixels, bx, by, pw, ph, q, cv, result_for)
        job_init.save(os.path.join(out, f"mk2_{i}_init.png"))
        mask.save(os.path.join(out, f"mk2_{i}_mask.png"))
        latent.save(os.path.join(out, f"mk2_{i}_latent.png"))
        grown.save(os.path.join(out, f"mk2_{i}_grown.png"))
        mk2.append({"side": side, "pixels": pixels, "blur_x": bx, "blur_y": by, "job": [pw, ph],
                    "noise_q": q, "color_variation": cv, "size": [width, height]})
    with open(os.path.join(out, "outpainting.json"), "w") as f:
        json.dump({"poor": poor, "mk2": mk2}, f)

    # get_matched_noise alone on square and oblong canvases with soft mask edges.
    for i, (w, h, q, cv) in enumerate([(64, 64, 1.0, 0.05), (128, 64, 0.3, 0.5), (64, 192, 3.0, 0.0)]):
        src = picture(w, h, 10 + i)
        mask = Image.new("L", (w, h), 255)
        ImageDraw.Draw(mask).rectangle((w // 4, h // 5, w - w // 3, h - h // 4), fill=0)
        mask = mask.resize((w, h))  # keeps it binary; the grey case follows
        if i == 2:
            arr = np.asarray(mask).astype(np.float64)
            arr[:, : w // 2] *= 0.5
            mask = Image.fromarray(arr.astype(np.uint8), "L")
        src.save(os.path.join(out, f"noise_src_{i}.png"))
        mask.save(os.path.join(out, f"noise_mask_{i}.png"))
        noised_image(src, mask.convert("RGB"), q, cv).save(os.path.join(out, f"noise_{i}.png"))
        with open(os.path.join(out, f"noise_{i}.json"), "w") as f:
            json.dump({"noise_q": q, "color_variation": cv}, f)


if __name__ == "__main__":
    main()
