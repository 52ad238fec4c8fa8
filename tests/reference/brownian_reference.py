"""The SDE samplers' Brownian-tree noise as A1111 makes it: numpy's SeedSequence, torchsde
0.2.6's BrownianTree behind k-diffusion's BrownianTreeNoiseSampler, with torchsde's draws
replaced by A1111's `randn_local` (modules/sd_samplers_common.py: replace_torchsde_browinan).

Usage: brownian_reference.py CASES.json OUT_DIR

Each case is one of
- {"kind": "seed_sequence", "items": [{"entropy", "spawn_key", "pool_size", "words"}, ...]}:
  writes u32.<j> and u64.<j>, numpy's generate_state(words) as uint32 and as uint64 (the
  latter's bits stored in int64);
- {"kind": "tree", "source", "seeds", "shape", "sigma_min", "sigma_max", "queries"}: writes
  increment.<k>, the noise sampler's answer to the k-th (σ, σ_next), queried in order;
- {"kind": "sampler", "sampler", "seeds", "steps", "start", "seed", ...}: runs the k-diffusion
  sampler on samplers_reference's toy denoiser from its schedule (from index `start`, as img2img
  does) with a BrownianTreeNoiseSampler over the whole schedule, as A1111 builds it; writes x,
  sigmas, sigma_range and expected.

Each output is OUT_DIR/case_<i>.safetensors. `source` is A1111's RNG source: CPU (default),
GPU or NV; an optional `device` ("cpu", "cuda") is where the sampler's tensors live.
"""

import json
import os
import sys
import warnings

import numpy as np
import torch
import torchsde
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import philox_reference  # noqa: E402
from samplers_reference import KDIFFUSION, sampling, toy_denoise  # noqa: E402

SOURCE = {"value": "CPU"}


def randn_local(seed, shape):
    """A1111's modules/rng.py: randn_local for the selected source (torchsde_randn moves it to
    the tree's device, as A1111's does)."""
    shape = tuple(shape)
    if SOURCE["value"] == "NV":
        with np.errstate(over="ignore"):
            return torch.asarray(philox_reference.randn(int(seed), 0, shape))
    device = torch.device("cuda") if SOURCE["value"] == "GPU" else torch.device("cpu")
    generator = torch.Generator(device).manual_seed(int(seed))
    return torch.randn(shape, device=device, generator=generator)


def torchsde_randn(size, dtype, device, seed):
    return randn_local(seed, size).to(device=device, dtype=dtype)


torchsde._brownian.brownian_interval._randn = torchsde_randn
# torchsde warns when a query reaches past its rounded ends (σ_max does); it clamps, as A1111 runs.
warnings.filterwarnings("ignore", message="Should have")


def device_of(case):
    """Where the sampler's tensors live: the case's "device", else CUDA for the GPU source."""
    default = "cuda" if case.get("source") == "GPU" else "cpu"
    return torch.device(case.get("device", default))


def seed_sequence_case(case):
    out = {}
    for j, item in enumerate(case["items"]):
        sequence = np.random.SeedSequence(
            entropy=item["entropy"], spawn_key=tuple(item["spawn_key"]), pool_size=item["pool_size"]
        )
        words = item["words"]
        out[f"u32.{j}"] = torch.from_numpy(sequence.generate_state(words).astype(np.int64))
        out[f"u64.{j}"] = torch.from_numpy(sequence.generate_state(words, np.uint64).view(np.int64))
    return out


def tree_case(case):
    SOURCE["value"] = case["source"]
    device = device_of(case)
    x = torch.zeros([len(case["seeds"])] + case["shape"], device=device)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    noise_sampler = sampling.BrownianTreeNoiseSampler(
        x, f32(case["sigma_min"]), f32(case["sigma_max"]), seed=case["seeds"]
    )
    return {
        f"increment.{k}": noise_sampler(f32(a), f32(b)).cpu().contiguous()
        for k, (a, b) in enumerate(case["queries"])
    }


def sampler_case(case):
    SOURCE["value"] = case.get("source", "CPU")
    device = device_of(case)
    generator = torch.Generator().manual_seed(case["seed"])
    shape = [len(case["seeds"])] + case.get("shape", [4, 8, 8])
    x0 = torch.randn(shape, generator=generator)
    full = sampling.get_sigmas_karras(case["steps"], 0.0291675, 14.614642)
    if case.get("schedule") == "exponential":
        full = sampling.get_sigmas_exponential(case["steps"], 0.0291675, 14.614642)
    sigmas = full[case.get("start", 0):]
    x = x0 + torch.randn(shape, generator=generator) * sigmas[0]
    # modules/sd_samplers_common.py: create_noise_sampler, over the full schedule.
    sigma_min, sigma_max = full[full > 0].min(), full.max()
    noise_sampler = sampling.BrownianTreeNoiseSampler(
        x.to(device), sigma_min.to(device), sigma_max.to(device), seed=case["seeds"]
    )
    function, fixed = KDIFFUSION[case["sampler"]]
    kwargs = dict(fixed)
    kwargs.update(case.get("options", {}))
    result = getattr(sampling, function)(
        toy_denoise, x.clone().to(device), sigmas.to(device), disable=True,
        noise_sampler=noise_sampler, **kwargs
    )
    return {
        "x": x.contiguous(),
        "sigmas": sigmas.double(),
        "sigma_range": torch.stack([sigma_min, sigma_max]).double(),
        "expected": result.cpu().contiguous(),
    }


def main():
    cases = json.load(open(sys.argv[1]))
    out_dir = sys.argv[2]
    torch.set_num_threads(1)
    kinds = {"seed_sequence": seed_sequence_case, "tree": tree_case, "sampler": sampler_case}
    for i, case in enumerate(cases):
        save_file(kinds[case["kind"]](case), os.path.join(out_dir, f"case_{i}.safetensors"))


if __name__ == "__main__":
    main()
