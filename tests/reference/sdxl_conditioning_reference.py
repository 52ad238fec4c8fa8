"""A1111's conditioning glue for SD 2.x, SDXL and the SDXL refiner on given chunks, with
transformers' text models (sd2_sdxl_models.py); the SD2/SDXL counterpart of
conditioning_reference.py.

Usage: sdxl_conditioning_reference.py CHECKPOINT IN.json OUT.safetensors

IN.json: {"embeddings": {name: file.safetensors}, "groups": [{"name", "texts": [[chunk, ...], ...],
"is_negative": bool, "width", "height", optional "aesthetic" (refiner; default 6.0, 2.5 when
is_negative), "crop_top"/"crop_left" (default 0), "all_empty" (bool, see below)}]}
chunk: {"tokens_l": [77] (CLIP-L, EOS padding; SDXL only), "tokens_g": [77] (OpenCLIP: bigG, or
SD2's encoder; 0 after the first EOS), "multipliers": [77], "fixes": [[offset, name], ...]};
optional per-encoder overrides "multipliers_l"/"multipliers_g", "fixes_l"/"fixes_g".
Embedding files hold `clip_l` and `clip_g` tensors (SDXL; the refiner uses `clip_g`) or a single
tensor (SD2).

Per group (the texts of one prompt schedule, encoded as one batch), per chunk index (texts with
fewer chunks get A1111's empty chunk: BOS, EOS, then EOS (CLIP-L) or 0 (OpenCLIP) padding):
  * embeddings injected after the token lookup at positions offset+1… (`EmbeddingsWithFixes`);
  * each encoder's own output: SD2 ln_final(penultimate) (§2.2); CLIP-L hidden[-2], bigG
    hidden[-2], both without final LayerNorm (§3.2);
  * emphasis per encoder ("Original": z·w, then z·mean_before/mean_after over that encoder's
    (B,77,C) tensor), chunks concatenated on the token axis, encoders on the last axis (§3.3);
  * the pooled vector = bigG's pooled of chunk 0 before emphasis (`TextConditionalModel.forward`);
  * vector = [pooled | emb(h) emb(w) emb(crop top) emb(crop left) emb(h) emb(w)] or, refiner,
    [pooled | emb(h) emb(w) emb(top) emb(left) emb(aesthetic)] (§3.4);
  * SDXL/refiner: is_negative and every text '' → crossattn and the pooled part zeros, the size
    part kept (`sd_models_xl.get_learned_conditioning`, §3.5). `all_empty` says whether every
    text was ''; when absent, a text counts as '' when it is one chunk of the empty-chunk tokens
    without fixes.
Output: NAME.crossattn (B, 77·k, ctx) and, SDXL/refiner, NAME.vector (B, adm).
"""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import load_file, save_file

from conditioning_reference import TokenEmbeddingWithFixes
from ldm_to_diffusers import load_checkpoint
from sd2_sdxl_models import SD2, build_text, detect_family, sdxl_vector, size_scalars

BOS, EOS = 49406, 49407
# encoder → (suffix of its chunk fields, pad id after the first EOS, key in SDXL embedding files)
ENCODERS = {"text": ("g", 0, None), "clip_l": ("l", EOS, "clip_l"), "big_g": ("g", 0, "clip_g")}


def empty_chunk(pad: int) -> dict:
    return {"tokens_l": [BOS] + [EOS] * 76, "tokens_g": [BOS, EOS] + [pad] * 75, "multipliers": [1.0] * 77, "fixes": []}


def field(chunk: dict, name: str, suffix: str):
    return chunk.get(f"{name}_{suffix}", chunk.get(name))


def embedding_vectors(path: str, key: str | None) -> torch.Tensor:
    data = load_file(path)
    if key is not None and key in data:
        return data[key].float()
    if len(data) != 1:
        raise ValueError(f"{path}: expected {key} or a single tensor, found {sorted(data)}")
    return next(iter(data.values())).float()


def embeddings_module(model):
    inner = getattr(model, "text_model", model)  # CLIPTextModelWithProjection keeps text_model.
    return inner.embeddings


def is_empty_text(chunks: list[dict]) -> bool:
    if len(chunks) != 1 or chunks[0].get("fixes"):
        return False
    c = chunks[0]
    tokens = c.get("tokens_l") or c.get("tokens_g")
    return tokens[:2] == [BOS, EOS] and all(t in (EOS, 0) for t in tokens[2:])


@torch.no_grad()
def encode_group(group: dict, family: str, models: dict, hooks: dict, files: dict) -> dict[str, torch.Tensor]:
    texts = group["texts"]
    count = max(len(t) for t in texts)
    zs: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    pooled = None
    for i in range(count):
        for name, model in models.items():
            suffix, pad, key = ENCODERS[name]
            chunks = [t[i] if i < len(t) else empty_chunk(pad) for t in texts]
            tokens = torch.tensor([field(c, "tokens", suffix) for c in chunks])
            hooks[name].fixes = [[(o, embedding_vectors(files[e], key)) for o, e in field(c, "fixes", suffix)]
                                 for c in chunks]
            if name == "text":
                z = model(input_ids=tokens).last_hidden_state
            else:
                out = model(input_ids=tokens, output_hidden_states=True)
                z = out.hidden_states[-2]
                if name == "big_g" and i == 0:
                    pooled = out.text_embeds  # chunk 0, before emphasis
            weights = torch.tensor([field(c, "multipliers", suffix) for c in chunks], dtype=torch.float32)
            mean = z.mean()
            z = z * weights.unsqueeze(-1).expand(z.shape)
            z = z * (mean / z.mean())
            zs[name].append(z)
    crossattn = torch.cat([torch.cat(zs[name], dim=1) for name in models], dim=-1)
    result = {f"{group['name']}.crossattn": crossattn}
    if family != SD2:
        negative = group.get("is_negative", False)
        all_empty = group.get("all_empty", all(is_empty_text(t) for t in texts))
        if negative and all_empty:
            crossattn.zero_()
            pooled = torch.zeros_like(pooled)
        scalars = size_scalars(family, group["width"], group["height"], group.get("crop_top", 0),
                               group.get("crop_left", 0), group.get("aesthetic", 2.5 if negative else 6.0))
        result[f"{group['name']}.vector"] = sdxl_vector(pooled, scalars)
    return result


def main() -> None:
    torch.set_num_threads(1)
    sd = load_checkpoint(sys.argv[1])
    spec = json.load(open(sys.argv[2]))
    family = detect_family(sd)
    models = build_text(sd, family)
    hooks = {}
    for name, model in models.items():
        embeddings = embeddings_module(model)
        hooks[name] = TokenEmbeddingWithFixes(embeddings.token_embedding)
        embeddings.token_embedding = hooks[name]
    out: dict[str, torch.Tensor] = {}
    for group in spec["groups"]:
        out.update(encode_group(group, family, models, hooks, spec.get("embeddings", {})))
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[3])


if __name__ == "__main__":
    main()
