"""Reference CLIP interrogation results for host/tests/integration/clip_rank.rs: a transcription
of A1111 v1.10.1's `modules/interrogate.py` (`InterrogateModels.categories`, `rank` and the
category loop of `interrogate`), run on feature tensors the Rust test wrote, in place of the
CLIP network (whose own parity is tested with the model).

One deliberate difference from A1111 (docs/architecture.md): files in sorted file-name order
instead of `Path.glob`'s filesystem order. A1111's `.topN` pattern `\\.top(\\d+)\\.` is kept: it
never matches a stem ending in `.topN` (`b.top3.txt` gives one match), only `.topN.` inside it.

Usage: clip_rank_reference.py CASES_JSON OUT_JSON
CASES_JSON: {"categories_dir", "features" (a .safetensors with "text" [M, E], one row per entry
of "lines", "image_<i>" [1, E] per image, "format_values" [K] float32), "lines", "images"
(count), "cases": [{"caption", "limit", "ranks", "skip"}]}.
OUT_JSON: {"results": [[{"result", "matches": [[category, text, p]]} per case] per image],
"formatted": [the `.3f` string of each format value, as `interrogate` writes it]}.
"""

import json
import math
import re
import sys
from collections import namedtuple
from pathlib import Path

import torch
from safetensors.torch import load_file

Category = namedtuple("Category", ["name", "topn", "items"])

re_topn = re.compile(r"\.top(\d+)\.")

# Below these, sdhost and this script could order or round differently by float noise alone,
# so the case would test nothing: the test must pick other features.
LOGIT_MARGIN = 1e-3
ROUNDING_MARGIN = 1e-5


def categories(content_dir, skip_categories):
    loaded = []
    for filename in sorted(Path(content_dir).glob("*.txt"), key=lambda p: p.name):
        if filename.stem in skip_categories:
            continue
        m = re_topn.search(filename.stem)
        topn = 1 if m is None else int(m.group(1))
        with open(filename, "r", encoding="utf8") as file:
            lines = [x.strip() for x in file.readlines()]
        loaded.append(Category(name=filename.stem, topn=topn, items=lines))
    return loaded


class RowModel:
    """Stands in for `clip_model.encode_text`: each text's row of the Rust side's features."""

    def __init__(self, lines, text):
        self.rows = {line: text[i] for i, line in enumerate(lines)}

    def encode_text(self, text_array):
        return torch.stack([self.rows[t] for t in text_array])


def rank(model, image_features, text_array, dict_limit, top_count=1):
    if dict_limit != 0:
        text_array = text_array[0:int(dict_limit)]

    top_count = min(top_count, len(text_array))
    text_features = model.encode_text(list(text_array)).type(torch.float32)
    text_features /= text_features.norm(dim=-1, keepdim=True)

    similarity = torch.zeros((1, len(text_array)))
    for i in range(image_features.shape[0]):
        similarity += (100.0 * image_features[i].unsqueeze(0) @ text_features.T).softmax(dim=-1)
    similarity /= image_features.shape[0]

    check_margins(image_features, text_features, text_array, top_count)

    top_probs, top_labels = similarity.cpu().topk(top_count, dim=-1)
    return [(text_array[top_labels[0][i].numpy()], (top_probs[0][i].numpy() * 100)) for i in range(top_count)]


def check_margins(image_features, text_features, text_array, top_count):
    """The top labels must be decided by a clear logit gap (equal texts excepted: they print alike)."""
    logits = (100.0 * image_features[0].unsqueeze(0) @ text_features.T)[0].double()
    order = torch.argsort(logits, descending=True).tolist()
    for a, b in zip(order[: top_count], order[1: top_count + 1]):
        if text_array[a] != text_array[b]:
            gap = float(logits[a] - logits[b])
            assert gap >= LOGIT_MARGIN, f"logit gap {gap} between {text_array[a]!r} and {text_array[b]!r}"


def format_score(score):
    shown = float(score / 100)
    distance = abs(shown * 1000 - math.floor(shown * 1000) - 0.5) / 1000
    assert distance >= ROUNDING_MARGIN, f"{shown} is {distance} from a rounding boundary"
    return f"{score / 100:.3f}"


def interrogate(model, caption, raw_image_features, content_dir, options):
    res = caption
    matches_out = []
    image_features = raw_image_features.clone().type(torch.float32)
    image_features /= image_features.norm(dim=-1, keepdim=True)
    for cat in categories(content_dir, options["skip"]):
        matches = rank(model, image_features, cat.items, options["limit"], top_count=cat.topn)
        for match, score in matches:
            assert score.dtype.name == "float32"
            matches_out.append([cat.name, match, float(score / 100)])
            if options["ranks"]:
                res += f", ({match}:{format_score(score)})"
            else:
                res += f", {match}"
    return {"result": res, "matches": matches_out}


def main():
    cases_path, out_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(cases_path).read_text(encoding="utf8"))
    tensors = load_file(spec["features"])
    model = RowModel(spec["lines"], tensors["text"])
    results = []
    for i in range(spec["images"]):
        image = tensors[f"image_{i}"]
        results.append(
            [
                interrogate(model, case["caption"], image, spec["categories_dir"], case)
                for case in spec["cases"]
            ]
        )
    # The formatting alone, on values as `rank` hands them over (tensor -> numpy -> * 100).
    values = tensors["format_values"]
    formatted = [f"{values[i].numpy() * 100 / 100:.3f}" for i in range(values.shape[0])]
    Path(out_path).write_text(json.dumps({"results": results, "formatted": formatted}), encoding="utf8")


if __name__ == "__main__":
    main()
