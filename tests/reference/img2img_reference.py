"""A whole A1111 img2img job on the tiny checkpoint, from diffusers' networks, k-diffusion's
samplers and the rules of A1111's job (`modules/processing.py: process_images_inner`,
`StableDiffusionProcessingImg2Img.init` and `.sample`), as listed below.

Usage: img2img_reference.py CHECKPOINT INIT.png CASES.json OUT_DIR [--prediction eps|v]
                            [--refiner CHECKPOINT --switch-at F]

With --refiner, A1111's refiner (`modules/sd_samplers_common.py: apply_refiner`): at every model
call the progress (999 − index of the model σ nearest to σ)/1000 is compared with F, and from the
first call where it is reached the refiner's networks and its own conditioning of the prompts
(aesthetic scores) denoise the same latent.

SD 2.x / SDXL / refiner files (family by key presence) run the same job with sgm_jobs.py's
networks, prompt conditioning, VAE scale (0.13025 for SDXL) and prediction type (`--prediction`,
else the file's `modelspec.prediction_type`, else A1111's SD2 v test; v → CompVisVDenoiser).

CASES.json: a list of {"name", "sampler" (k-diffusion function), "karras" (bool), "steps",
"strength", "seeds", "width", "height", "prompt", "negative_prompt", "cfg_scale"}.
For each case and image i, writes OUT_DIR/<name>_<i>.png. The job:
  * init image: Pillow Lanczos "Just resize" to width×height, ×2/255−1, VAE encoder;
    the posterior sample's noise is the first draw of a CPU generator seeded with the image's
    seed (what A1111's global generator gives when the same one-image job runs again);
  * prompts: CLIP BPE tokens in one 77-token chunk (BOS, tokens, EOS padding), last layer;
  * t_enc = int(min(strength, 0.999)·steps); σ = the sampler's schedule[steps − t_enc − 1:];
    x = init + σ₀·first draw of each image's generator (torch.Generator(cpu).manual_seed);
    every randn_like in the sampler takes each generator's next draw (A1111's TorchHijack);
  * A1111's CFG on k-diffusion's CompVisDenoiser, timestep rounded to fp16;
  * each latent decoded alone, clamp((x+1)/2)·255 truncated to uint8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import kdiffusion  # noqa: E402
from denoiser_reference import CfgDenoiser, LdmWrapper  # noqa: E402
from ldm_to_diffusers import build_clip, build_unet, build_vae, load_checkpoint  # noqa: E402
from sd2_sdxl_models import SD1, SDXL, REFINER, detect_family  # noqa: E402
from sgm_jobs import SgmCfg, SgmWrapper, load_job  # noqa: E402
from tokenize_reference import load_open_clip_tokenizer  # noqa: E402

sampling, external = kdiffusion.load()
SCALE = 0.18215
BOS, EOS = 49406, 49407


def encode_prompt(clip, bpe, text: str) -> torch.Tensor:
    """One chunk of A1111's SD1 conditioning for a short prompt without emphasis."""
    ids = bpe.encode(text.strip().lower())[:75]
    tokens = [BOS] + ids + [EOS] * (76 - len(ids))
    return clip(torch.tensor([tokens])).last_hidden_state[0]


def sample_with_draws(function: str, model, x, sigmas, draw):
    """Runs k-diffusion's `function` with every randn_like answered by `draw()` (A1111's
    TorchHijack: the next draw of each image's generator)."""

    class Hijack:
        def __getattr__(self, attr):
            return getattr(torch, attr)

        def randn_like(self, x, *args, **kwargs):
            return draw()

    saved = sampling.torch
    sampling.torch = Hijack()
    try:
        return getattr(sampling, function)(model, x, sigmas, disable=True)
    finally:
        sampling.torch = saved


class RefinerSwitch:
    """The base model's CFG until the progress of a call reaches `switch_at`, the refiner's
    from then on."""

    def __init__(self, base, refiner, sigmas: torch.Tensor, switch_at: float):
        self.base, self.refiner, self.sigmas, self.switch_at = base, refiner, sigmas, switch_at
        self.switched = False

    def __call__(self, x, sigma):
        if not self.switched:
            level = torch.argmin(torch.abs(self.sigmas - torch.max(sigma))).item()
            self.switched = (999 - level) / 1000 >= self.switch_at
        return (self.refiner if self.switched else self.base)(x, sigma)


def to_pixels(decoded: torch.Tensor) -> np.ndarray:
    image = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)
    return (255.0 * np.moveaxis(image.numpy(), 0, 2)).astype(np.uint8)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("checkpoint", "init", "cases", "out"):
        parser.add_argument(name)
    parser.add_argument("--prediction", choices=("eps", "v"))
    parser.add_argument("--refiner")
    parser.add_argument("--switch-at", type=float, default=0.8)
    args = parser.parse_args()
    checkpoint, init_path, cases_path, out = args.checkpoint, args.init, args.cases, args.out
    torch.set_num_threads(1)
    sd = load_checkpoint(checkpoint)
    bpe = load_open_clip_tokenizer()
    if detect_family(sd) == SD1:
        unet, vae, clip = build_unet(sd), build_vae(sd), build_clip(sd)
        inner = external.CompVisDenoiser(LdmWrapper(unet, sd["alphas_cumprod"].float(), True))
        scale = SCALE
        encode = lambda text, negative, width, height: encode_prompt(clip, bpe, text)  # noqa: E731
        vector_cond = False
    else:
        job = load_job(checkpoint, sd, bpe, args.prediction)
        vae, scale, encode = job.vae, job.scale, job.encode
        vector_cond = job.family in (SDXL, REFINER)
        wrapper = SgmWrapper(job.unet, job.alphas) if vector_cond else LdmWrapper(job.unet, job.alphas, True)
        inner = (external.CompVisVDenoiser if job.v else external.CompVisDenoiser)(wrapper)
    refiner = None
    if args.refiner:
        refiner = load_job(args.refiner, load_checkpoint(args.refiner), bpe)
        refiner.inner = (external.CompVisVDenoiser if refiner.v else external.CompVisDenoiser)(
            SgmWrapper(refiner.unet, refiner.alphas))
    init = Image.open(init_path).convert("RGB")
    for case in json.load(open(cases_path)):
        width, height, steps = case["width"], case["height"], case["steps"]
        seeds = case["seeds"]
        resized = init.resize((width, height), resample=Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0)
        dist = vae.encode((2.0 * x - 1.0).permute(2, 0, 1).unsqueeze(0)).latent_dist
        init_latents = []
        for seed in seeds:
            noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(seed))
            init_latents.append((dist.mean + dist.std * noise)[0] * scale)
        init_latent = torch.stack(init_latents)

        cond = encode(case["prompt"], False, width, height)
        uncond = encode(case["negative_prompt"], True, width, height)
        if vector_cond:
            model = SgmCfg(inner, cond, uncond, len(seeds), case["cfg_scale"])
        else:
            model = CfgDenoiser(inner, [[(cond, 1.0)] for _ in seeds], [uncond for _ in seeds],
                                case["cfg_scale"])

        if refiner is not None:
            model = RefinerSwitch(model, SgmCfg(
                refiner.inner, refiner.encode(case["prompt"], False, width, height),
                refiner.encode(case["negative_prompt"], True, width, height), len(seeds),
                case["cfg_scale"]), inner.sigmas, args.switch_at)

        if case["karras"]:
            sigmas = sampling.get_sigmas_karras(steps, inner.sigmas[0].item(), inner.sigmas[-1].item())
        else:
            sigmas = inner.get_sigmas(steps)
        t_enc = int(min(case["strength"], 0.999) * steps)
        sched = sigmas[steps - t_enc - 1:]

        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        shape = (4, height // 8, width // 8)
        draw = lambda: torch.stack([torch.randn(shape, generator=g) for g in gens])  # noqa: E731

        x = init_latent + draw() * sched[0]
        samples = sample_with_draws(case["sampler"], model, x, sched, draw)
        for i in range(len(seeds)):
            decoded = vae.decode(samples[i:i + 1] / scale).sample[0]
            Image.fromarray(to_pixels(decoded)).save(os.path.join(out, f"{case['name']}_{i}.png"))


if __name__ == "__main__":
    main()
