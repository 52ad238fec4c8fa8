"""Tiny interrogation models laid out as in an A1111 install, and what A1111 v1.10.1 answers with
them: the end-to-end references of Interrogate CLIP (BLIP caption + CLIP ranking) and
Interrogate DeepBooru for host/tests/integration/interrogate.rs, the HTTP API's and the GIMP
plug-in's tests, and the models of `sdhost bench --only interrogate`.

Usage:
  interrogate_models.py --write-models MODELS [--no-categories]
      MODELS/BLIP/model_base_caption_capfilt_large.pth and MODELS/BLIP/vocab.txt (tiny BLIP),
      MODELS/clip/ViT-L-14.pt (tiny OpenAI CLIP TorchScript archive),
      MODELS/torch_deepdanbooru/model-resnet_custom_v3.pt (tiny DeepDanbooru), and, unless
      --no-categories, tiny category lists in MODELS/../interrogate/ (where A1111 keeps them).
  interrogate_models.py --expect MODELS IMAGE OUT_JSON
      OUT_JSON: {"cases": [{"method", "options", "expected"}]}: the prompt each option set gives
      for IMAGE, computed by the references of each part (blip_reference.py,
      clip_model_reference.py, clip_rank_reference.py, deepbooru_reference.py), each of which
      asserts that its decisions (argmax, top-k, thresholds, %.3f rounding) have clear margins.
  interrogate_models.py --picture PATH
      The test picture (DeepDanbooru's calibrated 150x97 picture, whose tags have clear margins).

The seeds are the ones whose greedy caption and rankings of the test picture have those margins.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import blip_reference as blip  # noqa: E402
import clip_model_reference as clip_model  # noqa: E402
import clip_rank_reference as clip_rank  # noqa: E402
import deepbooru_reference as deepbooru  # noqa: E402
from resize_reference import resize_image  # noqa: E402

BLIP_SEED, CLIP_SEED, DEEPBOORU_SEED = 0, 0, 0

# Tiny category lists: sorted by file name, a blank line and a curly quote kept as A1111 reads
# them, brackets left unescaped; `.top3.txt` gives one match in A1111 (its pattern needs a dot
# after the number), `.top2.more.txt` two.
CATEGORIES = {
    "artists.txt": "Alice Neel\nCedric Seaut (Keos Masons)\nClaude Monet\nd’Artagnan Smith\nEdgar Degas\n",
    "flavors.top3.txt": "highly detailed\n\nsoft light\nmatte painting\ntrending on artstation\nbokeh\n",
    "mediums.txt": "an oil painting\na photograph\na watercolor\na pencil sketch\n",
    "movements.txt": "impressionism\ncubism\nsurrealism\n",
    "styles.top2.more.txt": "minimalism\nbaroque\nart nouveau\nbrutalism\n",
}

CLIP_CASES = [
    {},
    {"interrogate_return_ranks": True},
    {"interrogate_clip_dict_limit": 2, "interrogate_clip_skip_categories": ["movements"]},
    {"interrogate_clip_min_length": 6, "interrogate_clip_max_length": 12},
]
DEEPBOORU_CASES = [
    {},
    {"interrogate_return_ranks": True, "deepbooru_sort_alpha": False},
    {"interrogate_deepbooru_score_threshold": 0.3, "deepbooru_escape": False,
     "deepbooru_use_spaces": False},
]


def write_models(models: Path, categories: bool = True) -> None:
    (models / "BLIP").mkdir(parents=True, exist_ok=True)
    blip.write_model(str(models / "BLIP" / "model_base_caption_capfilt_large.pth"),
                     str(models / "BLIP" / "vocab.txt"), BLIP_SEED, dims="tiny")
    (models / "clip").mkdir(parents=True, exist_ok=True)
    clip_model.write_model(str(models / "clip" / "ViT-L-14.pt"), CLIP_SEED)
    (models / "torch_deepdanbooru").mkdir(parents=True, exist_ok=True)
    torch.save(deepbooru.make_model(DEEPBOORU_SEED),
               models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    if categories:
        lists = models.parent / "interrogate"
        lists.mkdir(parents=True, exist_ok=True)
        for name, text in CATEGORIES.items():
            (lists / name).write_text(text, encoding="utf-8")


def picture() -> Image.Image:
    return deepbooru.test_picture(3, 150, 97)


def caption(models: Path, image: Image.Image, options: dict) -> str:
    """BLIP's caption as A1111 makes it, greedy (transformers 4.30's loop), margins asserted."""
    vocab = (models / "BLIP" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    model = blip.hf_model(blip.DIMS["tiny"], len(vocab))
    state = torch.load(models / "BLIP" / "model_base_caption_capfilt_large.pth", weights_only=True)
    blip.load_into_hf(model, state["model"])
    model.eval()
    _, x = blip.preprocess(np.asarray(image))
    prefix = [len(vocab)] + blip.prompt_ids(vocab)[1:-1]
    low = options.get("interrogate_clip_min_length", 24)
    high = options.get("interrogate_clip_max_length", 48)
    with torch.no_grad():
        embeds = model.vision_model(pixel_values=x).last_hidden_state
        ids = blip.greedy_430(model, prefix, embeds, low, high)
        margins = blip.greedy_margins(model, ids, embeds, low)
    assert min(margins) >= 1e-3, f"BLIP greedy margin {min(margins)}: pick another BLIP_SEED"
    return blip.decode(ids, vocab)


class TextTower:
    """`clip_model.encode_text` over `clip.tokenize(..., truncate=True)`, as `rank` calls it."""

    def __init__(self, model):
        self.model = model

    def encode_text(self, texts):
        return self.model.encode_text(clip_model.tokenize(texts))


def interrogate_clip(models: Path, image: Image.Image, options: dict) -> str:
    text = caption(models, image, options)
    model, _ = clip_model.reference_model(str(models / "clip" / "ViT-L-14.pt"))
    with torch.no_grad():
        pixels = clip_model.normalize(clip_model.preprocess(image, clip_model.RESOLUTION))
        features = model.encode_image(pixels)
        ranked = clip_rank.interrogate(TextTower(model), text, features,
                                       str(models.parent / "interrogate"), {
                                           "skip": options.get("interrogate_clip_skip_categories", []),
                                           "limit": options.get("interrogate_clip_dict_limit", 1500),
                                           "ranks": options.get("interrogate_return_ranks", False),
                                       })
    return ranked["result"]


def interrogate_deepbooru(models: Path, image: Image.Image, options: dict) -> str:
    state = torch.load(models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt", weights_only=False)
    tags = state.pop("tags")
    with torch.no_grad():
        probs = deepbooru.probabilities(state, deepbooru.picture_tensor(resize_image(2, image, 512, 512)))[0]
    deepbooru.check_margins("end to end", probs.tolist())
    return deepbooru.format_tags(tags, probs.tolist(), options)


def expect(models: Path, image_path: Path, out: Path) -> None:
    image = Image.open(image_path).convert("RGB")
    cases = [{"method": "clip", "options": o, "expected": interrogate_clip(models, image, o)}
             for o in CLIP_CASES]
    cases += [{"method": "deepbooru", "options": o, "expected": interrogate_deepbooru(models, image, o)}
              for o in DEEPBOORU_CASES]
    out.write_text(json.dumps({"cases": cases}, ensure_ascii=False, indent=1), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-models", metavar="MODELS", type=Path)
    parser.add_argument("--no-categories", action="store_true")
    parser.add_argument("--expect", nargs=3, metavar=("MODELS", "IMAGE", "OUT_JSON"), type=Path)
    parser.add_argument("--picture", metavar="PATH", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write_models:
        write_models(args.write_models, not args.no_categories)
    if args.picture:
        picture().save(args.picture)
    if args.expect:
        expect(*args.expect)
    if not (args.write_models or args.picture or args.expect):
        parser.error("give --write-models, --picture or --expect")


if __name__ == "__main__":
    main()
