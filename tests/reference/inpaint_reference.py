"""A1111 inpainting jobs on the tiny checkpoints, from diffusers' networks, k-diffusion's
samplers (DDIM as A1111's loop), Pillow/OpenCV for the masks, and A1111's inpainting rules
(`modules/processing.py: StableDiffusionProcessingImg2Img.init` and `.sample`,
`inpainting_image_conditioning`, `apply_overlay`; `modules/masking.py`;
`modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward`): mask preparation, inpaint area,
fill, latent mask, per-step blending, inpainting-model conditioning, overlay composite.

Usage: inpaint_reference.py INIT.png MASK.png CASES.json OUT_DIR

CASES.json: a list of {"name", "checkpoint", "sampler" (k-diffusion function or "ddim"),
"karras", "steps", "strength", "seeds", "width", "height", "prompt", "negative_prompt",
"cfg_scale", "blur", "invert", "fill" (0-3), "only_masked", "padding", "mask_weight"}.
Writes OUT_DIR/<name>_<i>.png per image. Posterior samples: the first draw of a CPU
generator seeded with the image's seed for the init latent, the second for an inpainting
model's masked-image latent.

SD 2.x / SDXL / refiner checkpoints (family by key presence) use sgm_jobs.py's networks, prompt
conditioning (SDXL: crossattn + vector, an empty negative as zeros), VAE scale and prediction
type (optional case key "prediction": "eps"/"v", else the file's `modelspec.prediction_type`, else
A1111's SD2 v test); v-models run under CompVisVDenoiser, and DDIM takes ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t
(`CompVisTimestepsVDenoiser`). The inpainting conditioning mask is rounded here for every family:
SD1/SD2 as A1111 with `mask_round` on (the only mode modelled), SDXL always (spec §4.4 quirk).
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(__file__))
import kdiffusion  # noqa: E402
# diffusers first: kdiffusion.load(), which the next modules call, stubs torchvision.
from ldm_to_diffusers import build_clip, build_unet, build_vae, load_checkpoint  # noqa: E402
from a1111_samplers import a1111_timesteps, ddim  # noqa: E402
from img2img_reference import SCALE, encode_prompt, sample_with_draws, to_pixels  # noqa: E402
from mask_reference import a1111_blur, crop_region, expand, fill  # noqa: E402
from resize_reference import resize_image  # noqa: E402
from sd2_sdxl_models import SD1, detect_family  # noqa: E402
from sgm_jobs import load_job  # noqa: E402
from tokenize_reference import load_open_clip_tokenizer  # noqa: E402

sampling, external = kdiffusion.load()


class Unet(torch.nn.Module):
    """ldm's apply_model: (x, t, (context, concat[, vector])) with the timestep rounded to fp16;
    SDXL's vector goes in as sgm's y."""

    def __init__(self, unet, alphas):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas)

    def apply_model(self, x, t, cond):
        context, concat, *vector = cond
        if concat is not None:
            x = torch.cat([x, concat], 1)
        y = vector[0] if vector else None
        return self.unet(x, t.half().float(), encoder_hidden_states=context, y=y).sample


class Cfg:
    """A1111's CFG over all images (conds, then unconds, one UNet batch), with inpainting's
    image conditioning per row and the latent-mask blend after CFG (k-diffusion samplers)."""

    def __init__(self, inner, cond, uncond, count, scale, concat, blend, v=False):
        self.inner, self.scale, self.blend, self.v = inner, scale, blend, v
        self.vector = None
        if isinstance(cond, tuple):  # SDXL: (crossattn, vector)
            (cond, cvec), (uncond, uvec) = cond, uncond
            self.vector = torch.stack([cvec] * count + [uvec] * count)
        self.context = torch.stack([cond] * count + [uncond] * count)
        self.concat = None if concat is None else torch.cat([concat, concat])
        self.count = count

    def rows(self, x):
        return torch.cat([x, x])

    def combine(self, out):
        c, u = out[: self.count], out[self.count:]
        return u + (c - u) * self.scale

    def cond(self):
        return (self.context, self.concat) if self.vector is None else (self.context, self.concat, self.vector)

    def __call__(self, x, sigma):
        d = self.inner(self.rows(x), sigma[:1].expand(2 * self.count), cond=self.cond())
        d = self.combine(d)
        if self.blend is not None:
            init, keep, regen = self.blend
            d = d * regen + init * keep
        return d

    def eps_vp(self, x_vp, t):
        """The timestep samplers' model: ε of the VP latent, the mask blended in first."""
        if self.blend is not None:
            init, keep, regen = self.blend
            x_vp = init * keep + regen * x_vp
        unet = self.inner.inner_model
        t_rows = torch.full((2 * self.count,), float(t))
        out = unet.apply_model(self.rows(x_vp), t_rows, self.cond())
        if self.v:  # CompVisTimestepsVDenoiser: ε from v
            a = unet.alphas_cumprod[int(t)].double()
            out = a.sqrt().float() * out + (1 - a).sqrt().float() * self.rows(x_vp)
        return self.combine(out)


def prepare(init, mask, case):
    """Mask and image as A1111's `StableDiffusionProcessingImg2Img.init` prepares them."""
    w, h = case["width"], case["height"]
    m = ImageOps.invert(mask) if case["invert"] else mask
    m = Image.fromarray(a1111_blur(np.array(m), case["blur"], case["blur"]))
    region = None
    if case["only_masked"]:
        overlay_mask = m
        region = expand(crop_region(m, case["padding"]), w, h, m.width, m.height)
        processed = resize_image(2, m.crop(tuple(region)), w, h).convert("L")
        source = init
        image = resize_image(2, init.crop(tuple(region)), w, h)
    else:
        processed = resize_image(0, m, w, h).convert("L")
        overlay_mask = Image.fromarray(np.clip(np.array(processed).astype(np.float32) * 2, 0, 255).astype(np.uint8))
        image = resize_image(0, init, w, h)
        source = image
    overlay = Image.new("RGBa", source.size)
    overlay.paste(source.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask))
    overlay = overlay.convert("RGBA")
    if case["fill"] != 1:
        image = fill(image, processed)
    return image, processed, overlay, region


def composite(generated, overlay, region):
    if region is not None:
        x1, y1, x2, y2 = region
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_image(1, generated, x2 - x1, y2 - y1), (x1, y1))
        generated = base
    generated = generated.convert("RGBA")
    generated.alpha_composite(overlay)
    return generated.convert("RGB")


class Draws:
    """Each image's generator: every draw is the next randn of each."""

    def __init__(self, seeds, shape):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.shape = shape

    def next(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])


@torch.no_grad()
def run_case(case, nets, init, mask, out):
    unet, vae, alphas, scale = nets.unet, nets.vae, nets.alphas, nets.scale
    w, h, steps, seeds = case["width"], case["height"], case["steps"], case["seeds"]
    lw, lh = w // 8, h // 8
    image, processed, overlay, region = prepare(init, mask, case)
    pixels = torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    dist = vae.encode(pixels).latent_dist
    posterior = [torch.Generator().manual_seed(s) for s in seeds]
    init_latent = torch.cat([(dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * scale
                             for g in posterior])
    latmask = np.asarray(processed.convert("RGB").resize((lw, lh)), dtype=np.float32)[..., 0] / 255
    latmask = torch.from_numpy(np.around(latmask))[None, None].expand(1, 4, lh, lw)
    keep, regen = 1 - latmask, latmask
    if case["fill"] == 2:
        init_latent = init_latent * keep + Draws(seeds, (4, lh, lw)).next() * regen
    elif case["fill"] == 3:
        init_latent = init_latent * keep
    concat = None
    if unet.config.in_channels == 9:
        cm = torch.from_numpy(np.asarray(processed).astype(np.float32) / 255.0)[None, None].round()
        masked = torch.lerp(pixels, pixels * (1.0 - cm), case["mask_weight"])
        d = vae.encode(masked).latent_dist
        concat = torch.cat([torch.cat([F.interpolate(cm, size=(lh, lw)),
                                       (d.mean + d.std * torch.randn(d.mean.shape, generator=g)) * scale], 1)
                            for g in posterior])
    inner = (external.CompVisVDenoiser if nets.v else external.CompVisDenoiser)(Unet(unet, alphas))
    cond = nets.encode(case["prompt"], False, w, h)
    uncond = nets.encode(case["negative_prompt"], True, w, h)
    model = Cfg(inner, cond, uncond, len(seeds), case["cfg_scale"], concat, (init_latent, keep, regen), nets.v)
    draws = Draws(seeds, (4, lh, lw))
    t_enc = int(min(case["strength"], 0.999) * steps)
    if case["sampler"] == "ddim":
        timesteps = a1111_timesteps(steps)
        a = alphas[timesteps[t_enc]]
        x = a.sqrt() * init_latent + (1 - a).sqrt() * draws.next()
        samples = ddim(model.eps_vp, x, torch.tensor(timesteps[:t_enc]), alphas, draws, 0.0)
    else:
        if case["karras"]:
            sigmas = sampling.get_sigmas_karras(steps, inner.sigmas[0].item(), inner.sigmas[-1].item())
        else:
            sigmas = inner.get_sigmas(steps)
        sched = sigmas[steps - t_enc - 1:]
        x = init_latent + draws.next() * sched[0]
        samples = sample_with_draws(case["sampler"], model, x, sched, draws.next)
    samples = samples * regen + init_latent * keep
    for i in range(len(seeds)):
        generated = Image.fromarray(to_pixels(vae.decode(samples[i:i + 1] / scale).sample[0]))
        composite(generated, overlay, region).save(os.path.join(out, f"{case['name']}_{i}.png"))


def load_nets(path, bpe, prediction):
    sd = load_checkpoint(path)
    if detect_family(sd) != SD1:
        return load_job(path, sd, bpe, prediction)
    clip = build_clip(sd)
    return SimpleNamespace(unet=build_unet(sd), vae=build_vae(sd), alphas=sd["alphas_cumprod"].float(), scale=SCALE,
                           v=False, encode=lambda text, negative, w, h: encode_prompt(clip, bpe, text))


def main() -> None:
    init_path, mask_path, cases_path, out = sys.argv[1:5]
    torch.set_num_threads(1)
    init = Image.open(init_path).convert("RGB")
    mask = Image.open(mask_path).convert("L")
    bpe = load_open_clip_tokenizer()
    loaded = {}
    for case in json.load(open(cases_path)):
        path = case["checkpoint"]
        key = (path, case.get("prediction"))
        if key not in loaded:
            loaded[key] = load_nets(path, bpe, case.get("prediction"))
        run_case(case, loaded[key], init, mask, out)


if __name__ == "__main__":
    main()
