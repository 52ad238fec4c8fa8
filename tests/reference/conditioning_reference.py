"""A1111's conditioning math on given chunks, with transformers' CLIPTextModel.

Usage: conditioning_reference.py CHECKPOINT IN.json OUT.safetensors

IN.json: {"embeddings": {name: file.safetensors}, "groups": [{"name", "clip_skip",
"texts": [[{"tokens": [77 ids], "multipliers": [77], "fixes": [[offset, name]]}, ...], ...]}]}
Each group's texts are encoded together, as A1111 encodes the texts of one prompt schedule:
per chunk index, embeddings are injected after the token lookup (positions offset+1…), the
hidden state picked by clip skip goes through the final layer norm, tokens are scaled by their
weights and the batch mean is restored; chunks are concatenated along the token axis.
"""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import load_file, save_file

from ldm_to_diffusers import build_clip, load_checkpoint

BOS, EOS = 49406, 49407


class TokenEmbeddingWithFixes(torch.nn.Module):
    def __init__(self, wrapped: torch.nn.Embedding):
        super().__init__()
        self.wrapped = wrapped
        self.fixes: list[list[tuple[int, torch.Tensor]]] = []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.wrapped(input_ids)
        rows = []
        for row, fixes in zip(embeds, self.fixes):
            for offset, vectors in fixes:
                n = min(row.shape[0] - offset - 1, vectors.shape[0])
                row = torch.cat([row[: offset + 1], vectors[:n].to(row.dtype), row[offset + 1 + n :]])
            rows.append(row)
        return torch.stack(rows)


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    model = build_clip(load_checkpoint(sys.argv[1]))
    spec = json.load(open(sys.argv[2]))
    vectors = {name: next(iter(load_file(path).values())).float() for name, path in spec["embeddings"].items()}
    hook = TokenEmbeddingWithFixes(model.embeddings.token_embedding)
    model.embeddings.token_embedding = hook
    empty = {"tokens": [BOS] + [EOS] * 76, "multipliers": [1.0] * 77, "fixes": []}
    out = {}
    for group in spec["groups"]:
        texts = group["texts"]
        count = max(len(t) for t in texts)
        zs = []
        for i in range(count):
            chunks = [t[i] if i < len(t) else empty for t in texts]
            tokens = torch.tensor([c["tokens"] for c in chunks])
            hook.fixes = [[(o, vectors[name]) for o, name in c["fixes"]] for c in chunks]
            result = model(input_ids=tokens, output_hidden_states=True)
            skip = group["clip_skip"]
            z = result.last_hidden_state if skip <= 1 else model.final_layer_norm(result.hidden_states[-skip])
            weights = torch.asarray([c["multipliers"] for c in chunks], dtype=torch.float32)
            mean = z.mean()
            z = z * weights.reshape(weights.shape + (1,)).expand(z.shape)
            z = z * (mean / z.mean())
            zs.append(z)
        out[group["name"]] = torch.cat(zs, dim=1).contiguous()
    save_file(out, sys.argv[3])


if __name__ == "__main__":
    main()
