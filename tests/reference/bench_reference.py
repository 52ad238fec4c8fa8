"""The diffusers side of `sdhost bench`: the same networks from the same checkpoint, timed on
request so that both sides run interleaved in one session.

Usage: bench_reference.py CHECKPOINT THREADS [--device cpu|cuda|cuda:N]
Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"op": "describe"}
  -> {"torch": …, "diffusers": …, "device_name": …, "attention": …}   (what a table says it ran)
  {"op": "unet" | "vae_encode" | "vae_decode" | "clip", "dtype": "fp32" | "fp16" | "bf16", "size": N}
  -> {"seconds": t}   (one timed run; networks are built on first use per dtype)
  {"op": "sgm_unet", "dtype": …, "size": N}
  -> {"seconds": t}   (one SD 2.x / SDXL UNet call, CFG batch 2, N×N latent, with SDXL's vector y;
                       the UNet alone, built by sd2_sdxl_models.build_sgm_unet on first use)
  {"op": "img2img", "model": PATH, "init": PNG, "size": N, "steps": S, "dtype": D}
  -> {"seconds": t, "peak_mib": m}   (one whole diffusers img2img job, its pipeline built on
                       first use; on CUDA m is the caching allocator's peak during the job)
  {"op": "quit"}

Or: bench_reference.py --job CHECKPOINT THREADS INIT SIZE STEPS OUT [DEVICE DTYPE]
  one whole img2img job in a fresh process, from loading the checkpoint to writing OUT (PNG);
  `sdhost bench` measures its wall time and peak RSS next to `sdhost img2img`'s.

Attention is PyTorch's scaled_dot_product_attention on every device, as in sdhost: diffusers'
AttnProcessor2_0 in the UNet and VAE, transformers' "sdpa" in CLIP (checked when each network
is built). On CUDA every timed run is bracketed by torch.cuda.synchronize().
"""

from __future__ import annotations

import json
import os
import sys
import time

import diffusers
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTokenizerFast

sys.path.insert(0, os.path.dirname(__file__))
from ldm_to_diffusers import UNET, build_clip, build_unet, build_vae, load_checkpoint  # noqa: E402
from sd2_sdxl_models import build_sgm_unet  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "host", "assets", "clip-tokenizer.json")
PROMPT = "a lighthouse on a cliff"


def check_sdpa(model: torch.nn.Module) -> torch.nn.Module:
    """`model` after checking that its attention is scaled_dot_product_attention (what the
    bench's table header says): AttnProcessor2_0 in diffusers' networks, "sdpa" in CLIP."""
    if hasattr(model, "attn_processors"):
        kinds = {type(p).__name__ for p in model.attn_processors.values()}
        if kinds - {AttnProcessor2_0.__name__}:
            raise RuntimeError(f"{type(model).__name__} attention is {kinds}, not AttnProcessor2_0")
    else:
        kind = getattr(model.config, "_attn_implementation", None)
        if kind != "sdpa":
            raise RuntimeError(f"{type(model).__name__} attention is {kind!r}, not sdpa")
    return model


def describe(device: torch.device) -> dict:
    """What a table says it measured: versions, the device's name and the attention kernels."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), "CPU")
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "device_name": name,
            "attention": "AttnProcessor2_0 (SDPA), CLIP sdpa"}


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued kernels (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pipeline(checkpoint: str, device: torch.device = torch.device("cpu"),
                   dtype: torch.dtype = torch.float32) -> StableDiffusionImg2ImgPipeline:
    """diffusers' img2img pipeline on the checkpoint's weights, Euler as sdhost runs it, on
    `device` in `dtype` (fp32 on the CPU).

    The file's tensors are kept in their stored dtype until each network copies them into its
    fp32 parameters, and dropped after, as a careful diffusers user would load them.
    """
    state = load_file(checkpoint)
    unet, vae, clip = (check_sdpa(build(state)) for build in (build_unet, build_vae, build_clip))
    del state
    # sdhost's tokenizer file is OpenAI's CLIP BPE, which is what CLIPTokenizer holds.
    end = "<|endoftext|>"
    tokenizer = CLIPTokenizerFast(tokenizer_file=TOKENIZER, bos_token="<|startoftext|>",
                                  eos_token=end, pad_token=end, unk_token=end, model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", timestep_spacing="linspace",
                                       steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=clip, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def build_sgm_unet_in(checkpoint: str, dtype: torch.dtype) -> torch.nn.Module:
    """The file's SD 2.x / SDXL UNet (`build_sgm_unet`, A1111's walk) in `dtype`.

    Only the UNet's tensors are read, the network is built in their stored dtype and then
    converted parameter by parameter, so the peak stays near one copy of the weights in `dtype`
    (an SDXL UNet is 10 GB in fp32; a plain build would hold the fp32 network and the stored
    tensors at once).
    """
    with safe_open(checkpoint, framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k.startswith(UNET)}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(state[UNET + "input_blocks.0.0.weight"].dtype)
    try:
        unet = build_sgm_unet(state)
    finally:
        torch.set_default_dtype(previous)
    del state
    return unet.to(dtype)


def run_job(pipe: StableDiffusionImg2ImgPipeline, init: str, size: int, steps: int) -> Image.Image:
    """One image at strength 1 (steps UNet calls with CFG 7, as `sdhost img2img --steps`)."""
    image = Image.open(init).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    with torch.inference_mode():
        return pipe(PROMPT, image=image, strength=1.0, num_inference_steps=steps,
                    guidance_scale=7.0, negative_prompt="",
                    generator=torch.Generator().manual_seed(1)).images[0]


def job_main(args: list[str]) -> None:
    checkpoint, threads, init, size, steps, out = args[:6]
    device, dtype = (args[6:] + ["cpu", "fp32"][len(args[6:]):])[:2]
    torch.set_num_threads(int(threads))
    diffusers_logging.set_verbosity_error()
    pipe = build_pipeline(checkpoint, torch.device(device), DTYPES[dtype])
    run_job(pipe, init, int(size), int(steps)).save(out)


def main() -> None:
    if sys.argv[1] == "--job":
        job_main(sys.argv[2:])
        return
    checkpoint, threads = sys.argv[1], int(sys.argv[2])
    device = torch.device(sys.argv[4] if sys.argv[3:4] == ["--device"] else "cpu")
    torch.set_num_threads(threads)
    diffusers_logging.set_verbosity_error()
    state: dict[str, torch.Tensor] = {}  # read on first use: the job cases never need it
    nets: dict[tuple[str, str], torch.nn.Module] = {}
    pipelines: dict[tuple[str, str], StableDiffusionImg2ImgPipeline] = {}

    def net(kind: str, dtype: str, channels_last: bool = False) -> torch.nn.Module:
        if not state:
            state.update(load_checkpoint(checkpoint))
        if (kind, dtype, channels_last) not in nets:
            build = {"unet": build_unet, "vae": build_vae, "clip": build_clip}[kind]
            model = check_sdpa(build(state)).to(device, DTYPES[dtype])
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            nets[(kind, dtype, channels_last)] = model
        return nets[(kind, dtype, channels_last)]

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            return
        if op == "describe":
            print(json.dumps(describe(device)), flush=True)
            continue
        dtype, size = command.get("dtype", "fp32"), int(command.get("size", 64))
        kind = DTYPES[dtype]
        # Variants measured against the default (inference mode, contiguous NCHW).
        channels_last = bool(command.get("channels_last", False))
        grad_mode = torch.no_grad() if command.get("grad_mode") == "no_grad" else torch.inference_mode()
        with grad_mode:
            if op == "img2img":
                path = command["model"]
                if (path, dtype) not in pipelines:
                    pipelines[(path, dtype)] = build_pipeline(path, device, kind)
                pipe, init, steps = pipelines[(path, dtype)], command["init"], int(command["steps"])
                run = lambda: run_job(pipe, init, size, steps)  # noqa: E731
            elif op in ("unet", "profile"):
                model = net("unet", dtype, channels_last)
                x = torch.randn(2, 4, size, size, dtype=kind, device=device)
                if channels_last:
                    x = x.to(memory_format=torch.channels_last)
                t = torch.tensor([500.0, 500.0], device=device)
                context = torch.randn(2, 77, model.config.cross_attention_dim, dtype=kind,
                                      device=device)
                run = lambda: model(x, t, encoder_hidden_states=context).sample  # noqa: E731
            elif op == "sgm_unet":
                if ("sgm_unet", dtype, False) not in nets:
                    nets[("sgm_unet", dtype, False)] = build_sgm_unet_in(checkpoint, kind)
                model = nets[("sgm_unet", dtype, False)]
                x = torch.randn(2, 4, size, size, dtype=kind)
                t = torch.tensor([500.0, 500.0])
                context = torch.randn(2, 77, model.config.cross_attention_dim, dtype=kind)
                # SDXL's vector: [pooled | size embeddings], as sgm's label_emb takes it.
                adm = model.config.projection_class_embeddings_input_dim
                y = torch.randn(2, adm, dtype=kind) if adm else None
                run = lambda: model(x, t, context, y=y).sample  # noqa: E731
            elif op == "vae_encode":
                model = net("vae", dtype)
                image = torch.rand(1, 3, size, size, dtype=kind, device=device) * 2 - 1
                run = lambda: model.encode(image).latent_dist.mean  # noqa: E731
            elif op == "vae_decode":
                model = net("vae", dtype)
                latent = torch.randn(1, 4, size // 8, size // 8, dtype=kind, device=device)
                run = lambda: model.decode(latent).sample  # noqa: E731
            elif op == "clip":
                model = net("clip", dtype)
                ids = torch.randint(0, 49000, (2, 77), device=device)
                run = lambda: model(ids, output_hidden_states=True).last_hidden_state  # noqa: E731
            else:
                print(json.dumps({"error": f"unknown op {op}"}), flush=True)
                continue
            if op == "profile":
                print(json.dumps(profile(run)), flush=True)
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            seconds = time.perf_counter() - start
        answer = {"seconds": seconds}
        if device.type == "cuda":
            answer["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        print(json.dumps(answer), flush=True)


# Where a UNet call's time goes, by the aten operators' own (self) CPU time.
CATEGORIES = [
    ("convolution", ("conv",)),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("linear and matmul", ("addmm", "aten::mm", "bmm", "linear", "matmul", "baddbmm")),
    ("group and layer norm", ("group_norm", "layer_norm")),
]


def profile(run) -> dict:
    """One profiled call: total seconds and seconds per operator category (the rest: other)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    parts = {name: 0.0 for name, _ in CATEGORIES}
    parts["elementwise and other"] = 0.0
    for event in prof.key_averages():
        name = event.key
        category = next((c for c, keys in CATEGORIES if any(k in name for k in keys)),
                        "elementwise and other")
        parts[category] += event.self_cpu_time_total / 1e6
    return {"seconds": seconds, "ops": list(parts.items())}  # in CATEGORIES order


if __name__ == "__main__":
    main()
