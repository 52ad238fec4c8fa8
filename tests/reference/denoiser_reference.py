"""k-diffusion's CompVisDenoiser over the tiny UNet (diffusers), with A1111's CFG, driving
k-diffusion samplers: the reference for the Rust CFG denoiser and sampler plugin.

Usage: denoiser_reference.py CHECKPOINT OUT.safetensors

Conditionings are random tensors (prompt encoding has its own tests). Cases:
  * single prompt, CFG 7, batch of 2 with per-image conds;
  * two AND parts with weights (0.7, 0.4) for image 0, one part for image 1;
  * a 154-token cond against a 77-token uncond (separate UNet calls in A1111);
  * timestep rounded to fp16 as A1111's apply_model hijack does, and unrounded.
For each case: one denoiser call at a fractional σ, and full Euler / DPM++ 2M / Heun runs
over a 6-step Karras schedule (deterministic samplers: no noise involved).
"""

import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import kdiffusion  # noqa: E402
from ldm_to_diffusers import build_unet, load_checkpoint  # noqa: E402

sampling, external = kdiffusion.load()


class LdmWrapper(torch.nn.Module):
    """What CompVisDenoiser expects of an ldm model: alphas_cumprod and apply_model."""

    def __init__(self, unet, alphas_cumprod, round_fp16):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.round_fp16 = round_fp16

    def apply_model(self, x, t, cond):
        if self.round_fp16:
            t = t.half().float()
        return self.unet(x, t, encoder_hidden_states=cond).sample


class CfgDenoiser:
    """A1111's CFGDenoiser: rows = conds of every image, then unconds; combine on D."""

    def __init__(self, inner, conds, unconds, scale):
        self.inner, self.conds, self.unconds, self.scale = inner, conds, unconds, scale

    def __call__(self, x, sigma):
        rows_x, rows_c, index = [], [], []
        for i, parts in enumerate(self.conds):
            for cond, weight in parts:
                rows_x.append(x[i])
                rows_c.append(cond)
                index.append((i, weight))
        n_cond = len(rows_x)
        for i, uncond in enumerate(self.unconds):
            rows_x.append(x[i])
            rows_c.append(uncond)
        outs = [None] * len(rows_x)
        # Rows of equal token length share one call, like A1111 (different lengths: separate).
        for length in sorted({c.shape[0] for c in rows_c}):
            sel = [k for k, c in enumerate(rows_c) if c.shape[0] == length]
            xs = torch.stack([rows_x[k] for k in sel])
            cs = torch.stack([rows_c[k] for k in sel])
            d = self.inner(xs, sigma[:1].expand(len(sel)), cond=cs)
            for j, k in enumerate(sel):
                outs[k] = d[j]
        result = torch.stack([outs[n_cond + i].clone() for i in range(len(self.unconds))])
        for k, (i, weight) in enumerate(index):
            result[i] += (outs[k] - outs[n_cond + i]) * (weight * self.scale)
        return result


@torch.no_grad()
def main():
    checkpoint, out_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    sd = load_checkpoint(checkpoint)
    unet = build_unet(sd)
    alphas = sd["alphas_cumprod"].float()
    width = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(99)
    c = lambda n: torch.randn(77 * n, width, generator=gen)  # noqa: E731
    cond_a, cond_b, cond_c, cond_long = c(1), c(1), c(1), c(2)
    uncond0, uncond1 = c(1), c(1)
    cases = {
        "single": ([[(cond_a, 1.0)], [(cond_b, 1.0)]], [uncond0, uncond1]),
        "and": ([[(cond_a, 0.7), (cond_c, 0.4)], [(cond_b, 1.0)]], [uncond0, uncond1]),
        "long": ([[(cond_long, 1.0)], [(cond_b, 1.0)]], [uncond0, uncond1]),
    }
    out = {}
    x0 = torch.randn(2, 4, 8, 8, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    out["x0"], out["noise"] = x0, noise
    out["cond_a"], out["cond_b"], out["cond_c"], out["cond_long"] = cond_a, cond_b, cond_c, cond_long
    out["uncond0"], out["uncond1"] = uncond0, uncond1
    sigmas = sampling.get_sigmas_karras(6, 0.0291675, 14.614642)
    out["sigmas"] = sigmas.double()
    for round_fp16 in (True, False):
        inner = external.CompVisDenoiser(LdmWrapper(unet, alphas, round_fp16))
        tag = "fp16t" if round_fp16 else "f32t"
        for name, (conds, unconds) in cases.items():
            model = CfgDenoiser(inner, conds, unconds, 7.0)
            sigma = torch.tensor([3.3])
            out[f"{tag}.{name}.denoised"] = model(x0 + noise * 3.3, sigma)
            if name != "single":
                continue
            x = x0 + noise * sigmas[0]
            out[f"{tag}.{name}.euler"] = sampling.sample_euler(model, x.clone(), sigmas, disable=True)
            out[f"{tag}.{name}.dpmpp_2m"] = sampling.sample_dpmpp_2m(model, x.clone(), sigmas, disable=True)
            out[f"{tag}.{name}.heun"] = sampling.sample_heun(model, x.clone(), sigmas, disable=True)
    # A1111's img2img noise: one generator per image seed; the first draw noises the init
    # latent, every randn_like inside the sampler takes the next draw of each (TorchHijack).
    seeds = [1234, 4294967293]
    inner = external.CompVisDenoiser(LdmWrapper(unet, alphas, True))
    model = CfgDenoiser(inner, *cases["single"], 7.0)
    full = sampling.get_sigmas_karras(10, inner.sigmas[0].item(), inner.sigmas[-1].item())
    sched = full[10 - 6 - 1:]  # 10 steps at denoising strength 0.6: t_enc = 6
    for name, function in [("euler_a", "sample_euler_ancestral"), ("euler", "sample_euler")]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        draw = lambda: torch.stack([torch.randn((4, 8, 8), generator=g) for g in gens])  # noqa: E731

        class Hijack:
            def __getattr__(self, attr):
                return getattr(torch, attr)

            def randn_like(self, x, *args, **kwargs):
                return draw()

        x = x0 + draw() * sched[0]
        saved = sampling.torch
        sampling.torch = Hijack()
        try:
            out[f"a1111.{name}"] = getattr(sampling, function)(model, x, sched, disable=True)
        finally:
            sampling.torch = saved
    save_file({k: v.contiguous() for k, v in out.items()}, out_path)


if __name__ == "__main__":
    main()
