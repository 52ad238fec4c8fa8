"""A1111's Interrogate DeepBooru on a tiny DeepDanbooru: the model file, the network and the tag
formatting, written from the spec (docs: a1111-interrogate §5), not from A1111's code.

The network is built here from the "resnet custom v3" stage table with `F.pad`/`F.conv2d`
(A1111's `modules/deepbooru_model.py` is a generated list of 179 convolutions; this is the
same computation stated as stages of bottleneck blocks). The formatting is `modules/
deepbooru.py: DeepDanbooru.tag_multi` (§5.3 steps 4-8) written again in a few lines.

The tiny model keeps every convolution, its index, kernel size and stride, with the channel
widths divided by 32 (stem 2, bottleneck widths 2/4/8/8/16/32, outputs ×4) and 12 tags. The
last convolution of each block is drawn small so 57 residual blocks neither explode nor
vanish; the head is solved so that three calibration pictures (the 128² and 256² inputs and
the 512² preprocessed non-square picture) get chosen probabilities, spread over (0, 1), clear
of every threshold the tests use and of `%.3f` rounding boundaries.

Usage:
  deepbooru_reference.py --write-model PATH [--seed N]
      writes a tiny DeepDanbooru `.pt` (what A1111 keeps in models/torch_deepdanbooru)
  deepbooru_reference.py --references OUT_DIR [--seed N]
      OUT_DIR/model.pt; input_128.png, input_256.png (fed to the network as they are),
      source.png (non-square, through A1111's preprocessing), preprocessed_512.png (Pillow's
      `resize_image` mode 2 to 512²); probabilities.safetensors (`p_128`, `p_256`, `p_512`,
      float32 [12]); tags.json: {"tags": [...], "cases": [{"input": "256"|"512",
      "options": {A1111 option keys}, "expected": str}]}; broken files for the typed errors
      (broken/*.pt, listed in broken.json as {file: what is wrong}).
"""

import argparse
import json
import math
import os
import re
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from resize_reference import resize_image  # noqa: E402  (A1111's resize modes with Pillow)

# §5.2's stage table: (projection conv, first block's first conv, the next block's first conv,
# blocks, stride of the stage's first block). Stage 4's projection (100) is numbered after its
# first block (97-99).
STAGES = [
    (1, 2, 5, 3, 1),
    (11, 12, 15, 8, 2),
    (36, 37, 40, 20, 2),
    (100, 97, 101, 20, 2),
    (158, 159, 162, 3, 2),
    (168, 169, 172, 3, 2),
]
HEAD = 178
# The real widths divided by 32.
STEM = 2
MIDS = [2, 4, 8, 8, 16, 32]

TAGS = [
    "rating:safe", "rating:explicit", "x_(y)", "^_^", "back\\slash", "a_b",
    "1girl", "solo", "long_hair", "smile", "Zebra_stripes", "café",
]
# Probabilities the head is solved for, per calibration input (same order as TAGS). Every one
# is at least 0.02 from 0.3 and 0.5 (the thresholds the tests use) and none lies near a
# `%.3f` rounding boundary.
TARGETS = {
    "128": [0.912, 0.234, 0.641, 0.203, 0.777, 0.458, 0.862, 0.371, 0.552, 0.084, 0.693, 0.268],
    "256": [0.903, 0.212, 0.814, 0.702, 0.613, 0.951, 0.853, 0.412, 0.561, 0.102, 0.752, 0.651],
    "512": [0.123, 0.874, 0.582, 0.931, 0.452, 0.733, 0.661, 0.892, 0.254, 0.542, 0.811, 0.337],
}
THRESHOLDS = [0.5, 0.3]


def block_starts(first, following, count):
    return [first] + [following + 3 * i for i in range(count - 1)]


def layout():
    """Every convolution: index -> (kernel, in, out, bias), from the stage table."""
    convs = {0: (7, 3, STEM, True)}
    width = STEM
    for (projection, first, following, count, _), mid in zip(STAGES, MIDS):
        out = 4 * mid
        convs[projection] = (1, width, out, True)
        for j, c in enumerate(block_starts(first, following, count)):
            convs[c] = (1, width if j == 0 else out, mid, True)
            convs[c + 1] = (3, mid, mid, True)
            convs[c + 2] = (1, mid, out, True)
        width = out
    convs[HEAD] = (1, width, len(TAGS), False)
    assert sorted(convs) == list(range(HEAD + 1))
    return convs


def last_of_block():
    return {c + 2 for (_, first, following, count, _) in STAGES
            for c in block_starts(first, following, count)}


def conv(sd, i, x, stride=1):
    return F.conv2d(x, sd[f"n_Conv_{i}.weight"], sd.get(f"n_Conv_{i}.bias"), stride=stride)


def features(sd, x_nhwc):
    """Everything before the head: [B, C, H/128, W/128]."""
    x = x_nhwc.permute(0, 3, 1, 2)
    # TF "SAME" padding made explicit: [left, right, top, bottom].
    x = F.relu(conv(sd, 0, F.pad(x, [2, 3, 2, 3]), stride=2))
    x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=-math.inf), 3, 2)
    for projection, first, following, count, stride in STAGES:
        for j, c in enumerate(block_starts(first, following, count)):
            s = stride if j == 0 else 1
            a = F.relu(conv(sd, c, x))
            a = F.pad(a, [1, 1, 1, 1] if s == 1 else [0, 1, 0, 1])
            a = F.relu(conv(sd, c + 1, a, stride=s))
            a = conv(sd, c + 2, a)
            shortcut = conv(sd, projection, x, stride=s) if j == 0 else x
            x = F.relu(a + shortcut)
    return x


def probabilities(sd, x_nhwc):
    """The network: head convolution, mean over the map, sigmoid -> [B, tags]."""
    return torch.sigmoid(conv(sd, HEAD, features(sd, x_nhwc)).mean((2, 3)))


def picture_tensor(im):
    return torch.from_numpy(np.asarray(im, dtype=np.float32)[None] / 255)


def test_picture(seed, width, height):
    """Smooth colour gradients with noise, different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([127 + 100 * np.sin(xx / width * (2 + k) + yy / height * (3 - k) + phase[k])
                     for k in range(3)], -1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def calibration_pictures():
    """The pictures the head is solved on: name -> (picture fed to the net, source or None)."""
    source = test_picture(3, 150, 97)
    return {
        "128": (test_picture(1, 128, 128), None),
        "256": (test_picture(2, 256, 256), None),
        "512": (resize_image(2, source, 512, 512), source),
    }


def make_model(seed):
    """The tiny state dict (OrderedDict in conv order, then `tags`)."""
    g = torch.Generator().manual_seed(seed)
    convs = layout()
    small = last_of_block()
    sd = OrderedDict()
    for i in range(HEAD + 1):
        k, cin, cout, bias = convs[i]
        std = 0.01 if i in small else math.sqrt(2.0 / (cin * k * k))
        sd[f"n_Conv_{i}.weight"] = torch.randn(cout, cin, k, k, generator=g) * std
        if bias:
            sd[f"n_Conv_{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    # Head: a random matrix plus the least-norm correction that puts the calibration inputs'
    # logits exactly on the targets (logit = W · mean-pooled features).
    pictures = calibration_pictures()
    with torch.no_grad():
        feats = torch.stack([features(sd, picture_tensor(p)).double().mean((2, 3))[0]
                             for p, _ in pictures.values()], 1)  # [C, 3]
    targets = torch.tensor([TARGETS[name] for name in pictures], dtype=torch.float64)  # [3, T]
    logits = torch.log(targets / (1 - targets)).T  # [T, 3]
    w = sd[f"n_Conv_{HEAD}.weight"][:, :, 0, 0].double() * 0.3
    w = w + (logits - w @ feats) @ torch.linalg.pinv(feats)
    sd[f"n_Conv_{HEAD}.weight"] = w.float()[:, :, None, None].contiguous()
    sd["tags"] = list(TAGS)
    return sd


def format_tags(tags, probs, options):
    """§5.3 steps 4-8 with A1111's option keys."""
    threshold = options.get("interrogate_deepbooru_score_threshold", 0.5)
    kept = {}
    for tag, p in zip(tags, probs):
        if p < threshold or tag.startswith("rating:"):
            continue
        kept[tag] = p
    if options.get("deepbooru_sort_alpha", True):
        order = sorted(kept)
    else:
        order = sorted(kept, key=lambda t: -kept[t])
    dropped = {s.strip().replace(" ", "_")
               for s in options.get("deepbooru_filter_tags", "").split(",")}
    out = []
    for tag in order:
        if tag in dropped:
            continue
        text = tag.replace("_", " ") if options.get("deepbooru_use_spaces", True) else tag
        if options.get("deepbooru_escape", True):
            text = re.sub(r"([\\()])", r"\\\1", text)
        if options.get("interrogate_return_ranks", False):
            text = "(%s:%.3f)" % (text, kept[tag])
        out.append(text)
    return ", ".join(out)


CASES = [
    {},
    {"interrogate_deepbooru_score_threshold": 0.3},
    {"deepbooru_sort_alpha": False},
    {"deepbooru_use_spaces": False},
    {"deepbooru_escape": False},
    {"deepbooru_filter_tags": " long hair,1girl , x_(y)"},
    {"interrogate_return_ranks": True},
    {"interrogate_return_ranks": True, "deepbooru_sort_alpha": False, "deepbooru_escape": False,
     "deepbooru_use_spaces": False, "interrogate_deepbooru_score_threshold": 0.3},
]


def check_margins(name, probs):
    """The Rust side computes the same numbers to ~1e-6: strings must not hinge on that."""
    for p in probs:
        for t in THRESHOLDS:
            assert abs(p - t) >= 1e-3, f"{name}: p {p} within 1e-3 of threshold {t}"
        frac = p * 1000 - math.floor(p * 1000)
        assert abs(frac - 0.5) >= 1e-2, f"{name}: p {p} near a %.3f rounding boundary"


def write_broken(sd, out):
    """Files the loader must refuse, each with a typed error."""
    os.makedirs(out, exist_ok=True)
    broken = {}

    def save(name, what, state):
        torch.save(state, os.path.join(out, name))
        broken[name] = what

    missing = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("n_Conv_57."))
    save("missing_conv.pt", "missing conv 57", missing)
    kernel = OrderedDict(sd)
    kernel["n_Conv_3.weight"] = kernel["n_Conv_3.weight"][:, :, :1, :1].contiguous()
    save("wrong_kernel.pt", "conv 3 is 1x1", kernel)
    channels = OrderedDict(sd)
    w = channels["n_Conv_20.weight"]
    channels["n_Conv_20.weight"] = torch.zeros(w.shape[0], w.shape[1] + 1, 1, 1)
    save("wrong_channels.pt", "conv 20 has one input channel too many", channels)
    tags = OrderedDict(sd)
    tags["tags"] = TAGS[:-1]
    save("tag_count.pt", "11 tags for 12 head channels", tags)
    no_tags = OrderedDict((k, v) for k, v in sd.items() if k != "tags")
    save("no_tags.pt", "no tags list", no_tags)
    bad_tag = OrderedDict(sd)
    bad_tag["tags"] = TAGS[:5] + [7] + TAGS[6:]
    save("bad_tag.pt", "a tag that is not a str", bad_tag)
    head_bias = OrderedDict(sd)
    head_bias[f"n_Conv_{HEAD}.bias"] = torch.zeros(len(TAGS))
    save("head_bias.pt", "the head has a bias", head_bias)
    extra = OrderedDict(sd)
    extra["n_Conv_179.weight"] = torch.zeros(1, 1, 1, 1)
    save("extra_key.pt", "an unexpected key", extra)
    save("not_deepdanbooru.pt", "a Stable Diffusion-like state dict",
         {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}})
    save("list_root.pt", "a list, not a dict", [torch.zeros(2)])

    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo hostile",))

    torch.save({"n_Conv_0.weight": Hostile()}, os.path.join(out, "hostile.pt"))
    broken["hostile.pt"] = "names os.system"
    with open(os.path.join(out, "..", "broken.json"), "w") as f:
        json.dump(broken, f, indent=1, sort_keys=True)


def write_references(out, seed):
    os.makedirs(out, exist_ok=True)
    sd = make_model(seed)
    torch.save(sd, os.path.join(out, "model.pt"))
    pictures = calibration_pictures()
    probs = {}
    with torch.no_grad():
        for name, (picture, source) in pictures.items():
            p = probabilities(sd, picture_tensor(picture))[0]
            probs[f"p_{name}"] = p.contiguous()
            check_margins(name, p.tolist())
            target = torch.tensor(TARGETS[name])
            assert (p - target).abs().max() < 1e-4, f"{name}: head calibration off"
            if source is None:
                picture.save(os.path.join(out, f"input_{name}.png"))
            else:
                source.save(os.path.join(out, "source.png"))
                picture.save(os.path.join(out, f"preprocessed_{name}.png"))
    save_file(probs, os.path.join(out, "probabilities.safetensors"))
    cases = []
    for name in ("256", "512"):
        for options in CASES:
            cases.append({"input": name, "options": options,
                          "expected": format_tags(TAGS, probs[f"p_{name}"].tolist(), options)})
    with open(os.path.join(out, "tags.json"), "w", encoding="utf-8") as f:
        json.dump({"tags": TAGS, "cases": cases}, f, indent=1, ensure_ascii=False)
    write_broken(sd, os.path.join(out, "broken"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write-model", metavar="PATH")
    mode.add_argument("--references", metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write_model:
        torch.save(make_model(args.seed), args.write_model)
    else:
        write_references(args.references, args.seed)


if __name__ == "__main__":
    main()
