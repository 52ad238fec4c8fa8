"""The diffusers side of `sdhost bench`: the same networks from the same checkpoint, timed on
request so that both sides run interleaved in one session.

Usage: bench_reference.py CHECKPOINT THREADS
Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"op": "unet" | "vae_encode" | "vae_decode" | "clip", "dtype": "fp32" | "bf16", "size": N}
  -> {"seconds": t}   (one timed run; networks are built on first use per dtype)
  {"op": "quit"}
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from diffusers.utils import logging as diffusers_logging

sys.path.insert(0, os.path.dirname(__file__))
from ldm_to_diffusers import build_clip, build_unet, build_vae, load_checkpoint  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    checkpoint, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    diffusers_logging.set_verbosity_error()
    state = load_checkpoint(checkpoint)
    nets: dict[tuple[str, str], torch.nn.Module] = {}

    def net(kind: str, dtype: str) -> torch.nn.Module:
        if (kind, dtype) not in nets:
            build = {"unet": build_unet, "vae": build_vae, "clip": build_clip}[kind]
            nets[(kind, dtype)] = build(state).to(DTYPES[dtype])
        return nets[(kind, dtype)]

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            return
        dtype, size = command.get("dtype", "fp32"), int(command.get("size", 64))
        kind = DTYPES[dtype]
        with torch.inference_mode():
            if op == "unet":
                model = net("unet", dtype)
                x = torch.randn(2, 4, size, size, dtype=kind)
                t = torch.tensor([500.0, 500.0])
                context = torch.randn(2, 77, model.config.cross_attention_dim, dtype=kind)
                run = lambda: model(x, t, encoder_hidden_states=context).sample  # noqa: E731
            elif op == "vae_encode":
                model = net("vae", dtype)
                image = torch.rand(1, 3, size, size, dtype=kind) * 2 - 1
                run = lambda: model.encode(image).latent_dist.mean  # noqa: E731
            elif op == "vae_decode":
                model = net("vae", dtype)
                latent = torch.randn(1, 4, size // 8, size // 8, dtype=kind)
                run = lambda: model.decode(latent).sample  # noqa: E731
            elif op == "clip":
                model = net("clip", dtype)
                ids = torch.randint(0, 49000, (2, 77))
                run = lambda: model(ids, output_hidden_states=True).last_hidden_state  # noqa: E731
            else:
                print(json.dumps({"error": f"unknown op {op}"}), flush=True)
                continue
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
