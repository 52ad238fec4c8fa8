"""A1111's sigma schedules, noise levels, LCM schedule, DDIM timesteps and img2img step
arithmetic, on k-diffusion's own DiscreteEpsDDPMDenoiser and schedule functions.

Usage: schedules_reference.py IN.json OUT.safetensors

IN.json: {
  "models": {name: {"file": path | null, "key": "alphas_cumprod"}},   # null file: ldm's SD schedule
  "cases": [{"name", "model", "lcm": bool, "schedule", "steps", "options": {...}}],
  "sigmas": [σ...], "ts": [t...], "lcm_ts": [t...],
  "ddim": [[steps, discard]...], "img2img": [[steps, ds, fix]...], "beta_ppf": [[p, a, b]...]
}
options: sigma_min, sigma_max (0 or "model": the model's), rho (0 = default), beta_alpha, beta_beta, discard, sdxl, old_karras.

The k-diffusion parts (Karras, Exponential, Polyexponential, the model's own schedule,
sigma_to_t / t_to_sigma) call k-diffusion; the schedules only A1111 has are written here from
A1111's definitions (`modules/sd_schedulers.py`, `modules/sd_samplers_common.py:
setup_img2img_steps`, `modules/sd_samplers_kdiffusion.py: KDiffusionSampler.get_sigmas`,
`modules/sd_samplers_timesteps.py: CompVisSampler`, `modules/sd_samplers_lcm.py`; the SD noise
levels from ldm's `DDPM.register_schedule`), with the same tensor dtypes (float32 tensors,
Python floats, numpy float64) at each step.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import stats

import kdiffusion

sampling, external = kdiffusion.load()

AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def ldm_alphas_cumprod() -> torch.Tensor:
    """ldm register_schedule("linear", 1000, 0.00085, 0.012): float64 math, float32 buffer."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = 1.0 - betas.numpy()
    return torch.tensor(np.cumprod(alphas, axis=0), dtype=torch.float32)


class LcmDenoiser(external.DiscreteEpsDDPMDenoiser):
    """A1111's LCM noise levels: ᾱ at t = 19, 39, ..., 999; nearest-level sigma_to_t."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.skip = 1000 // 50
        picked = torch.stack([alphas_cumprod[self.skip - 1 + k * self.skip] for k in range(50)])
        super().__init__(None, picked.float(), quantize=None)

    def get_sigmas(self, n=None):
        start = self.sigma_to_t(self.sigma_max)
        end = self.sigma_to_t(self.sigma_min)
        return sampling.append_zero(self.t_to_sigma(torch.linspace(start, end, n)))

    def sigma_to_t(self, sigma, quantize=None):
        nearest = (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return nearest * self.skip + (self.skip - 1)

    def t_to_sigma(self, timestep):
        index = ((timestep - (self.skip - 1)) / self.skip).float()
        return super().t_to_sigma(torch.clamp(index, min=0, max=len(self.sigmas) - 1))


def timestep_spaced(n, sigma_min, sigma_max, inner, sgm):
    first = inner.sigma_to_t(torch.tensor(sigma_max))
    last = inner.sigma_to_t(torch.tensor(sigma_min))
    ts = torch.linspace(first, last, n + 1)[:-1] if sgm else torch.linspace(first, last, n)
    return torch.tensor([float(inner.t_to_sigma(t)) for t in ts] + [0.0], dtype=torch.float32)


def kl_optimal(n, sigma_min, sigma_max, inner):
    lo = torch.arctan(torch.tensor(sigma_min))
    hi = torch.arctan(torch.tensor(sigma_max))
    i = torch.arange(n + 1)
    return torch.tan(i / n * lo + (1.0 - i / n) * hi)


def align_your_steps(n, sdxl):
    table = AYS_SDXL if sdxl else AYS_SD1
    if n == len(table):
        return torch.tensor(table + [0.0], dtype=torch.float32)
    ys = np.log(table[::-1])
    inner = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), ys))[::-1]
    return torch.tensor(np.append(inner, [0.0]), dtype=torch.float32)


def simple(n, inner):
    stride = len(inner.sigmas) / n
    picked = [float(inner.sigmas[-(1 + int(x * stride))]) for x in range(n)]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def ddim(n, inner):
    stride = max(len(inner.sigmas) // n, 1)
    picked = [float(inner.sigmas[t]) for t in range(1, len(inner.sigmas), stride)]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)


def beta(n, sigma_min, sigma_max, a, b):
    quantiles = [stats.beta.ppf(x, a, b) for x in 1 - np.linspace(0, 1, n)]
    sigmas = [sigma_min + q * (sigma_max - sigma_min) for q in quantiles]
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


DEFAULT_RHO = {"karras": 7.0, "polyexponential": 1.0}


def get_sigmas(inner, schedule, steps, opts):
    """KDiffusionSampler.get_sigmas: range and option overrides, then discard penultimate."""
    n = steps + (1 if opts.get("discard") else 0)
    model_min, model_max = inner.sigmas[0].item(), inner.sigmas[-1].item()
    sigma_min, sigma_max = (0.1, 10) if opts.get("old_karras") else (model_min, model_max)
    # "model" stands for the model's own value, which the Rust side cannot know to the bit
    # (libtorch's CPU sqrt/log are not correctly rounded).
    override_min = {"model": model_min}.get(opts.get("sigma_min"), opts.get("sigma_min", 0))
    override_max = {"model": model_max}.get(opts.get("sigma_max"), opts.get("sigma_max", 0))
    if override_min not in (0, model_min):
        sigma_min = override_min
    if override_max not in (0, model_max):
        sigma_max = override_max
    rho = {}
    if schedule in DEFAULT_RHO and opts.get("rho", 0) not in (0, DEFAULT_RHO[schedule]):
        rho = {"rho": opts["rho"]}
    if schedule in ("automatic", "uniform"):
        sigmas = inner.get_sigmas(n)
    elif schedule == "karras":
        sigmas = sampling.get_sigmas_karras(n, sigma_min, sigma_max, **rho)
    elif schedule == "exponential":
        sigmas = sampling.get_sigmas_exponential(n, sigma_min, sigma_max)
    elif schedule == "polyexponential":
        sigmas = sampling.get_sigmas_polyexponential(n, sigma_min, sigma_max, **rho)
    elif schedule in ("sgm_uniform", "normal"):
        sigmas = timestep_spaced(n, sigma_min, sigma_max, inner, sgm=schedule == "sgm_uniform")
    elif schedule == "kl_optimal":
        sigmas = kl_optimal(n, sigma_min, sigma_max, inner)
    elif schedule == "align_your_steps":
        sigmas = align_your_steps(n, opts.get("sdxl", False))
    elif schedule == "simple":
        sigmas = simple(n, inner)
    elif schedule == "ddim":
        sigmas = ddim(n, inner)
    elif schedule == "beta":
        sigmas = beta(n, sigma_min, sigma_max, opts.get("beta_alpha", 0.6), opts.get("beta_beta", 0.6))
    else:
        raise ValueError(schedule)
    if opts.get("discard"):
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def ddim_timesteps(steps, discard):
    steps += 1 if discard else 0
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def img2img_steps(steps, ds, fix):
    if fix:
        return (int(steps / min(ds, 0.999)) if ds > 0 else 0), steps - 1
    return steps, int(min(ds, 0.999) * steps)


@torch.no_grad()
def main() -> None:
    spec = json.load(open(sys.argv[1]))
    out = {}
    models = {}
    for name, source in spec["models"].items():
        if source["file"] is None:
            alphas = ldm_alphas_cumprod()
        else:
            alphas = load_file(source["file"])[source["key"]].float()
        out[f"alphas/{name}"] = alphas
        models[name] = external.DiscreteEpsDDPMDenoiser(None, alphas, quantize=False)
        models[name + "+lcm"] = LcmDenoiser(alphas)
        out[f"sigmas/{name}"] = models[name].sigmas
        sig = torch.tensor(spec["sigmas"], dtype=torch.float32)
        out[f"sigma_to_t/{name}"] = models[name].sigma_to_t(sig)
        out[f"t_to_sigma/{name}"] = models[name].t_to_sigma(torch.tensor(spec["ts"], dtype=torch.float32))
        out[f"lcm_sigma_to_t/{name}"] = models[name + "+lcm"].sigma_to_t(sig)
        lcm_ts = torch.tensor(spec["lcm_ts"], dtype=torch.float32)
        out[f"lcm_t_to_sigma/{name}"] = models[name + "+lcm"].t_to_sigma(lcm_ts)
    for case in spec["cases"]:
        inner = models[case["model"] + ("+lcm" if case["lcm"] else "")]
        out["case/" + case["name"]] = get_sigmas(inner, case["schedule"], case["steps"], case["options"])
    for steps, discard in spec["ddim"]:
        out[f"ddim/{steps}/{str(discard).lower()}"] = ddim_timesteps(steps, discard)
    out["img2img"] = torch.tensor([img2img_steps(*row) for row in spec["img2img"]], dtype=torch.int64)
    out["beta_ppf"] = torch.tensor([stats.beta.ppf(p, a, b) for p, a, b in spec["beta_ppf"]], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])


if __name__ == "__main__":
    main()
