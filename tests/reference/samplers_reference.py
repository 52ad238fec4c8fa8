"""Runs samplers on a deterministic toy denoiser and records their final latents.

Usage: samplers_reference.py CASES.json OUT_DIR

Each case names an A1111 sampler; the reference runs k-diffusion's function for it (or, for
A1111's own samplers, the implementation in `a1111_samplers.py`, written from A1111's source)
from the same starting latent and σ schedule. Every draw of noise, whether through
`torch.randn_like` inside k-diffusion (A1111 replaces it with the job's generators) or
through a noise sampler (Brownian tree), comes from one shared bank of pre-drawn tensors in
call order, so Rust and Python see the same noise. Writes OUT_DIR/case_<i>.safetensors with
x, sigmas, timesteps, alphas_cumprod, the noise bank and the expected result.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import kdiffusion  # noqa: E402

sampling, external = kdiffusion.load()


def toy_denoise(x, sigma, timestep=None):
    """D(x, σ): smooth, nonlinear and σ-dependent; the Rust test computes the same. A timestep
    chosen by the sampler (DDIM family, LCM) also enters, so that a wrong one shows."""
    s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
    denoised = torch.tanh(x) / (1 + s) + 0.5 * x / torch.sqrt(1 + s * s)
    if timestep is not None:
        denoised = denoised + x * (timestep / 20000.0)
    return denoised


class NoiseBank:
    """Hands out pre-drawn noise tensors in call order."""

    def __init__(self, bank):
        self.bank = bank
        self.used = 0

    def next(self):
        if self.used >= len(self.bank):
            raise RuntimeError("noise bank exhausted; enlarge it")
        noise = self.bank[self.used]
        self.used += 1
        return noise.clone()


class TorchWithBank:
    """Stands in for `torch` inside k-diffusion's sampling module, as A1111's TorchHijack
    does, so that randn_like draws from the bank."""

    def __init__(self, bank):
        self.bank = bank

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x, *args, **kwargs):
        return self.bank.next()


KDIFFUSION = {
    "Euler": ("sample_euler", {}),
    "Euler a": ("sample_euler_ancestral", {}),
    "Heun": ("sample_heun", {}),
    "DPM2": ("sample_dpm_2", {}),
    "DPM2 a": ("sample_dpm_2_ancestral", {}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {}),
    "DPM++ 2M": ("sample_dpmpp_2m", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", {}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {}),
    "LMS": ("sample_lms", {}),
    # A1111 runs these with eta = opts.eta_ancestral (1.0), not k-diffusion's default 0.
    "DPM fast": ("sample_dpm_fast", {"eta": 1.0}),
    "DPM adaptive": ("sample_dpm_adaptive", {"eta": 1.0}),
}

# Keyword arguments that take a noise sampler (these samplers draw through it, not randn_like).
USES_NOISE_SAMPLER = {
    "Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE", "DPM fast", "DPM adaptive",
}


def run_case(case, out_path):
    generator = torch.Generator().manual_seed(case["seed"])
    shape = case.get("shape", [2, 4, 8, 8])
    x0 = torch.randn(shape, generator=generator)
    bank_size = case.get("bank", 200)
    bank = [torch.randn(shape, generator=generator) for _ in range(bank_size)]
    steps = case["steps"]
    name = case["sampler"]
    if name not in KDIFFUSION:
        import a1111_samplers

        start_noise = torch.randn(shape, generator=generator)
        noise = NoiseBank(bank)
        result, extra = a1111_samplers.run(name, toy_denoise, x0, start_noise, case, case.get("options", {}), noise)
        tensors = {"expected": result.contiguous(), "bank_used": torch.tensor([noise.used], dtype=torch.int64)}
        tensors.update({k: v.contiguous() for k, v in extra.items()})
        tensors["x"] = tensors["x"].float().contiguous()
        for i, b in enumerate(bank):
            tensors[f"noise.{i}"] = b.contiguous()
        save_file(tensors, out_path)
        return
    if case.get("schedule", "karras") == "karras":
        sigmas = sampling.get_sigmas_karras(steps, 0.0291675, 14.614642)
    else:
        sigmas = sampling.get_sigmas_exponential(steps, 0.0291675, 14.614642)
    sigmas = sigmas[case.get("start", 0):]
    x = x0 + torch.randn(shape, generator=generator) * sigmas[0]
    name = case["sampler"]
    options = dict(case.get("options", {}))
    noise = NoiseBank(bank)
    extra = {}
    if name in KDIFFUSION:
        function, fixed = KDIFFUSION[name]
        kwargs = dict(fixed)
        kwargs.update(options)
        if name in USES_NOISE_SAMPLER:
            kwargs["noise_sampler"] = lambda sigma, sigma_next: noise.next()
        saved = sampling.torch
        sampling.torch = TorchWithBank(noise)
        try:
            fn = getattr(sampling, function)
            if name in ("DPM fast", "DPM adaptive"):
                # A1111 passes σ_min = last non-zero, σ_max = first, n = number of steps.
                sigma_min, sigma_max = sigmas[-2].item(), sigmas[0].item()
                if name == "DPM fast":
                    result = fn(toy_denoise, x.clone(), sigma_min, sigma_max, len(sigmas) - 1,
                                disable=True, **kwargs)
                else:
                    result = fn(toy_denoise, x.clone(), sigma_min, sigma_max, disable=True,
                                **kwargs)
            else:
                result = fn(toy_denoise, x.clone(), sigmas, disable=True, **kwargs)
        finally:
            sampling.torch = saved
    else:
        import a1111_samplers

        result, extra = a1111_samplers.run(name, toy_denoise, x.clone(), case, options, noise)
    tensors = {
        "x": x.contiguous(),
        "sigmas": sigmas.double(),
        "expected": result.contiguous(),
        "bank_used": torch.tensor([noise.used], dtype=torch.int64),
    }
    for key, value in extra.items():
        tensors[key] = value.contiguous()
    for i, b in enumerate(bank):
        tensors[f"noise.{i}"] = b.contiguous()
    save_file(tensors, out_path)


def main():
    cases = json.load(open(sys.argv[1]))
    out_dir = sys.argv[2]
    torch.set_num_threads(1)
    for i, case in enumerate(cases):
        run_case(case, os.path.join(out_dir, f"case_{i}.safetensors"))


if __name__ == "__main__":
    main()
