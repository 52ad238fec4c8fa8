"""A1111 v1.10.1 txt2img with Hires. fix on the tiny checkpoints: diffusers' networks (through
inpaint_reference.py's loaders and CFG), k-diffusion's samplers, A1111's DDIM loop
(a1111_samplers.py) and A1111's per-image noise (rng_reference.py), put together as A1111's job
does it. Written from `modules/processing.py: StableDiffusionProcessingTxt2Img` (init,
calculate_target_resolution, sample, sample_hr_pass), `modules/sd_samplers_kdiffusion.py:
KDiffusionSampler.sample / sample_img2img`, `modules/sd_samplers_timesteps.py: CompVisSampler`,
`modules/sd_samplers_common.py: setup_img2img_steps`, `modules/images.py: resize_image` and
`modules/upscaler.py: Upscaler.upscale, UpscalerLanczos, UpscalerNearest`.

Usage: txt2img_reference.py CHECKPOINT CASES.json OUT_DIR [--prediction eps|v]

CASES.json: a list of {"name", "params"}: each job's parameters under A1111's
`/sdapi/v1/txt2img` names, the same object the Rust test gives sdhost. Read here: prompt,
negative_prompt, width, height, steps, cfg_scale, seed, batch_size, sampler_name (the names of
SAMPLERS), scheduler ("Automatic" or "Karras"), subseed, subseed_strength,
seed_resize_from_w/h, and for Hires. fix enable_hr, denoising_strength, hr_scale, hr_resize_x,
hr_resize_y, hr_upscaler (null: "Latent"), hr_second_pass_steps, hr_sampler_name,
hr_scheduler, hr_prompt, hr_negative_prompt (A1111's defaults where absent). Image i of the
batch has seed + i (seed itself when subseed_strength is not 0) and subseed + i.
Writes OUT_DIR/<name>_<i>.png per image. The job:
  * first pass: x = the ImageRNG's first draw (pure noise); k-diffusion samplers start at
    x·σ_max of the schedule (`sample`), DDIM at x itself over all of A1111's timesteps;
  * Hires. fix: target = int(w·hr_scale) × int(h·hr_scale), or A1111's resize-to arithmetic
    with the latent cropped by truncate_x/y;
    - latent upscalers: F.interpolate of the latents to target//8 with A1111's mode/antialias;
    - pixel upscalers ("Lanczos", "Nearest", "None"): each latent decoded and truncated to
      uint8, `resize_image(0, …, upscaler_name)` with Pillow, then ×2/255−1 and encoded image
      by image; the posterior noise comes from torch's global CPU generator, which the first
      pass's `rng.randn` left seeded with the batch's last seed (ldm's
      `DiagonalGaussianDistribution.sample` draws `torch.randn` on it, once per image);
    - a new ImageRNG at the hires latent shape for the same seeds, its first draw the noise;
      `setup_img2img_steps` with explicit steps (as `sample_hr_pass` passes them):
      steps = int(hr_steps / min(strength, 0.999)), t_enc = hr_steps − 1, so the pass runs
      hr_steps sampler steps from sigmas[steps − t_enc − 1] (DDIM: timesteps[:t_enc] after
      noising to timesteps[t_enc]);
  * each latent decoded alone, clamp((x+1)/2)·255 truncated to uint8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import kdiffusion  # noqa: E402
# inpaint_reference first: it imports diffusers before kdiffusion.load() stubs torchvision.
from inpaint_reference import Cfg, Unet, load_nets  # noqa: E402
from a1111_samplers import a1111_timesteps, ddim  # noqa: E402
from img2img_reference import sample_with_draws, to_pixels  # noqa: E402
from rng_reference import ImageNoise  # noqa: E402
from tokenize_reference import load_open_clip_tokenizer  # noqa: E402

sampling, external = kdiffusion.load()
OPT_F = 8

# `modules/shared_items.py`/`shared.latent_upscale_modes`: name → (mode, antialias).
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


# A1111's sampler names → (k-diffusion function or "ddim", the scheduler "Automatic" means)
# (`modules/sd_samplers_kdiffusion.py: samplers_k_diffusion`, `sd_samplers_timesteps.py`).
SAMPLERS = {
    "Euler a": ("sample_euler_ancestral", None),
    "Euler": ("sample_euler", None),
    "LMS": ("sample_lms", None),
    "Heun": ("sample_heun", None),
    "DPM++ 2M": ("sample_dpmpp_2m", "Karras"),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "Karras"),
    "DDIM": ("ddim", None),
}


def target_resolution(p) -> tuple[int, int, int, int]:
    """`calculate_target_resolution`: (upscale_to_x, upscale_to_y, truncate_x, truncate_y)."""
    w, h = p["width"], p["height"]
    rx, ry = p.get("hr_resize_x", 0), p.get("hr_resize_y", 0)
    if rx == 0 and ry == 0:
        return int(w * p.get("hr_scale", 2.0)), int(h * p.get("hr_scale", 2.0)), 0, 0
    if ry == 0:
        return rx, rx * h // w, 0, 0
    if rx == 0:
        return ry * w // h, ry, 0, 0
    if w / h < rx / ry:
        to_x, to_y = rx, rx * h // w
    else:
        to_x, to_y = ry * w // h, ry
    return to_x, to_y, (to_x - rx) // OPT_F, (to_y - ry) // OPT_F


def upscale_pixels(image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
    """`images.resize_image(0, image, width, height, upscaler_name)` for the upscalers that
    need no model: "None" is one Lanczos resize; "Lanczos"/"Nearest" run `Upscaler.upscale` by
    max(w/W, h/H) first (up to 3 passes to a size rounded down to multiples of 8, then Lanczos
    to that size), and a final Lanczos resize to the target when the size still differs."""
    lanczos = Image.Resampling.LANCZOS
    if upscaler == "None":
        return image.resize((width, height), resample=lanczos)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        kernel = {"Lanczos": lanczos, "Nearest": Image.Resampling.NEAREST}[upscaler]
        dest_w, dest_h = int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8)
        for i in range(3):
            if image.width >= dest_w and image.height >= dest_h and (i > 0 or scale != 1):
                break
            shape = image.size
            image = image.resize((int(image.width * scale), int(image.height * scale)), resample=kernel)
            if shape == image.size:
                break
        if image.size != (dest_w, dest_h):
            image = image.resize((dest_w, dest_h), resample=lanczos)
    if image.size != (width, height):
        image = image.resize((width, height), resample=lanczos)
    return image


class Sampler:
    """An A1111 sampler with its schedule: `KDiffusionSampler` or the DDIM `CompVisSampler`."""

    def __init__(self, name: str, scheduler: str | None, inner, alphas):
        self.function, default = SAMPLERS[name]
        self.karras = (default if scheduler in (None, "Automatic") else scheduler) == "Karras"
        self.inner, self.alphas = inner, alphas

    def sigmas(self, steps: int) -> torch.Tensor:
        """`KDiffusionSampler.get_sigmas` (the model's schedule or Karras over its σ range)."""
        if self.karras:
            return sampling.get_sigmas_karras(steps, self.inner.sigmas[0].item(), self.inner.sigmas[-1].item())
        return self.inner.get_sigmas(steps)

    def sample(self, model, steps, x, rng):
        """`sample`: k-diffusion from x·σ₀ over the whole schedule, DDIM from x over all
        timesteps; every sampler noise is the ImageRNG's next draw."""
        if self.function == "ddim":
            return ddim(model.eps_vp, x, torch.tensor(a1111_timesteps(steps)), self.alphas, rng, 0.0)
        sigmas = self.sigmas(steps)
        return sample_with_draws(self.function, model, x * sigmas[0], sigmas, rng.next)

    def sample_img2img(self, model, requested, strength, x, noise, rng):
        """`sample_img2img` with explicit steps (`setup_img2img_steps(p, steps)`)."""
        steps = int(requested / min(strength, 0.999)) if strength > 0 else 0
        t_enc = requested - 1
        if self.function == "ddim":
            timesteps = a1111_timesteps(steps)
            a = self.alphas[timesteps[t_enc]]
            xi = x * a.sqrt() + noise * (1 - a).sqrt()
            return ddim(model.eps_vp, xi, torch.tensor(timesteps[:t_enc]), self.alphas, rng, 0.0)
        sched = self.sigmas(steps)[steps - t_enc - 1:]
        return sample_with_draws(self.function, model, x + noise * sched[0], sched, rng.next)


def seeds(p) -> list[int]:
    """`process_images_inner`: seed + i per image, but one seed for all with variation on."""
    return [p["seed"] + (i if p.get("subseed_strength", 0.0) == 0 else 0) for i in range(p["batch_size"])]


def image_noise(p, shape) -> ImageNoise:
    """A1111's ImageRNG for the batch's seeds at `shape` (C, H, W)."""
    count = p["batch_size"]
    resize_from = [p.get("seed_resize_from_h", -1), p.get("seed_resize_from_w", -1)]
    return ImageNoise({
        "shape": shape, "seeds": seeds(p),
        "subseeds": [p.get("subseed", -1) + i for i in range(count)],
        "strength": p.get("subseed_strength", 0.0), "resize_from": resize_from, "ensd": 0,
    }, "cpu")


def decode(nets, samples) -> list[Image.Image]:
    return [Image.fromarray(to_pixels(nets.vae.decode(samples[i:i + 1] / nets.scale).sample[0]))
            for i in range(samples.shape[0])]


@torch.no_grad()
def run_case(name, p, nets, out):
    w, h, count = p["width"], p["height"], p["batch_size"]
    inner = (external.CompVisVDenoiser if nets.v else external.CompVisDenoiser)(Unet(nets.unet, nets.alphas))

    def cfg(prompt, negative, width, height):
        cond, uncond = nets.encode(prompt, False, width, height), nets.encode(negative, True, width, height)
        return Cfg(inner, cond, uncond, count, p["cfg_scale"], None, None, nets.v)

    rng = image_noise(p, (4, h // OPT_F, w // OPT_F))
    x = rng.next()
    sampler = Sampler(p["sampler_name"], p.get("scheduler"), inner, nets.alphas)
    samples = sampler.sample(cfg(p["prompt"], p["negative_prompt"], w, h), p["steps"], x, rng)

    if p.get("enable_hr"):
        to_x, to_y, trunc_x, trunc_y = target_resolution(p)
        upscaler = p.get("hr_upscaler") or "Latent"
        if upscaler in LATENT_MODES:
            mode, antialias = LATENT_MODES[upscaler]
            samples = F.interpolate(samples, size=(to_y // OPT_F, to_x // OPT_F), mode=mode, antialias=antialias)
        else:
            # The first pass's `rng.randn(seed, …)` calls left torch's global generator
            # seeded with the last seed of the batch; each image's encoding draws from it.
            posterior = torch.Generator().manual_seed(seeds(p)[-1])
            latents = []
            for image in decode(nets, samples):
                image = upscale_pixels(image, to_x, to_y, upscaler)
                pixels = torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0)
                dist = nets.vae.encode((pixels * 2 - 1).permute(2, 0, 1)[None]).latent_dist
                noise = torch.randn(dist.mean.shape, generator=posterior)
                latents.append((dist.mean + dist.std * noise)[0] * nets.scale)
            samples = torch.stack(latents)
        samples = samples[:, :, trunc_y // 2:samples.shape[2] - (trunc_y + 1) // 2,
                          trunc_x // 2:samples.shape[3] - (trunc_x + 1) // 2]
        hr_rng = image_noise(p, tuple(samples.shape[1:]))
        noise = hr_rng.next()
        hr_model = cfg(p.get("hr_prompt") or p["prompt"], p.get("hr_negative_prompt") or p["negative_prompt"],
                       to_x, to_y)
        # `init`: hr_scheduler None is the first pass's scheduler.
        scheduler = p.get("hr_scheduler") or p.get("scheduler")
        hr_sampler = Sampler(p.get("hr_sampler_name") or p["sampler_name"], scheduler, inner, nets.alphas)
        samples = hr_sampler.sample_img2img(hr_model, p.get("hr_second_pass_steps") or p["steps"],
                                            p.get("denoising_strength", 0.75), samples, noise, hr_rng)

    for i, image in enumerate(decode(nets, samples)):
        image.save(os.path.join(out, f"{name}_{i}.png"))


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("checkpoint", "cases", "out"):
        parser.add_argument(name)
    parser.add_argument("--prediction", choices=("eps", "v"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    nets = load_nets(args.checkpoint, load_open_clip_tokenizer(), args.prediction)
    for case in json.load(open(args.cases)):
        run_case(case["name"], case["params"], nets, args.out)


if __name__ == "__main__":
    main()
