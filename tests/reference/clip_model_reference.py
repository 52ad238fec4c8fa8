"""OpenAI CLIP ViT as A1111's interrogator loads it (`clip.load("ViT-L/14", jit=False)`), on a tiny
model in the real file format, for the parity tests of host/src/interrogate/clip_model.rs.

Usage:
  clip_model_reference.py --write-model PATH [--seed N]
      A tiny CLIP ViT saved like OpenAI's `ViT-L-14.pt`: traced, the matrices cast to fp16 in
      place as `clip/model.py: convert_weights` does, `torch.jit.save`.
  clip_model_reference.py reference DIR [--seed N]
      DIR/ViT-L-14.pt (as above), DIR/state_dict.pt (the same weights as a plain
      `torch.save(state_dict)`), DIR/image_<name>.png inputs, DIR/lines.json, and
      DIR/reference.safetensors: per image its `preprocessed.<name>` (uint8 HWC) and
      `image.<name>` features; `tokens` of every line (`clip.tokenize(lines, truncate=True)`),
      `text` features of the first `text_lines` lines (in lines.json).
  clip_model_reference.py hostile DIR
      Archives the restricted reader must refuse: a `torch.save` zip whose pickle names a
      `__torch__` class (no code/ records), and a TorchScript archive naming `os.system`.

The model code is openai-clip 1.0.1 from PyPI (MIT; `clip/model.py` and
`clip/simple_tokenizer.py` identical to A1111's pinned openai/CLIP commit), loaded from its files
directly because the package's `__init__` imports torchvision. The reference model is A1111's CPU
path: `torch.jit.load`, `build_model(scripted.state_dict())`, `.float()`. Preprocessing is
torchvision's `Resize(n, BICUBIC)` + `CenterCrop(n)` arithmetic written out on Pillow (spec §4.7).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import zipfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

# The tiny model of the spec §7.2: both towers 64 wide (one 64-wide head), 2 blocks, patch 14 on
# a 4×4 grid (56 px), the real 77-token context and 49 408-token vocabulary, 32-wide embedding.
EMBED, RESOLUTION, VISION_LAYERS, VISION_WIDTH, PATCH = 32, 56, 2, 64, 14
CONTEXT, VOCAB, TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS = 77, 49408, 64, 1, 2

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def clip_module(name):
    """`clip/<name>.py` of the installed openai-clip, without the package's imports."""
    folder = importlib.util.find_spec("clip").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODEL = clip_module("model")


def build_tiny(seed):
    """The OpenAI-layout model with seeded, non-degenerate fp32 weights."""
    torch.manual_seed(seed)
    model = MODEL.CLIP(EMBED, RESOLUTION, VISION_LAYERS, VISION_WIDTH, PATCH,
                       CONTEXT, VOCAB, TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS).eval()
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.copy_(1 + normal(p.shape, 0.1) if name.endswith("weight") else normal(p.shape, 0.1))
            elif name.endswith("bias"):
                p.copy_(normal(p.shape, 0.05))
            elif name == "logit_scale":
                p.fill_(math.log(100))
            elif name == "visual.conv1.weight":
                p.copy_(normal(p.shape, (3 * PATCH * PATCH) ** -0.5))
            elif name in ("visual.class_embedding", "visual.positional_embedding", "token_embedding.weight"):
                p.copy_(normal(p.shape, 0.5))
            elif name == "positional_embedding":
                p.copy_(normal(p.shape, 0.2))
            else:  # matrices: [out, in] linears, or [in, out] projections
                fan_in = p.shape[0] if name in ("visual.proj", "text_projection") else p.shape[-1]
                p.copy_(normal(p.shape, fan_in ** -0.5))
    # The int64 buffers of OpenAI's archives (`build_model` deletes them); the Python class keeps
    # two of them as plain ints.
    for name, value in (("input_resolution", RESOLUTION), ("context_length", CONTEXT), ("vocab_size", VOCAB)):
        if name in model.__dict__:
            del model.__dict__[name]
        model.register_buffer(name, torch.tensor(value))
    return model


HALF_SUFFIXES = ("conv1.weight", "attn.in_proj_weight", "attn.in_proj_bias", "out_proj.weight",
                 "out_proj.bias", "c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")


def to_half_in_place(module):
    """`convert_weights` on a traced module: conv/linear/MHA matrices and both projections."""
    for name, p in module.named_parameters():
        if name.endswith(HALF_SUFFIXES) or name in ("visual.proj", "text_projection"):
            p.data = p.data.half()


def write_model(path, seed):
    model = build_tiny(seed)
    image = torch.zeros(1, 3, RESOLUTION, RESOLUTION)
    text = torch.zeros(1, CONTEXT, dtype=torch.long)
    text[0, :3] = torch.tensor([49406, 320, 49407])
    traced = torch.jit.trace(model, (image, text), check_trace=False)
    to_half_in_place(traced)
    torch.jit.save(traced, path)
    kinds = {p.dtype for p in torch.jit.load(path, map_location="cpu").parameters()}
    assert kinds == {torch.float16, torch.float32}, kinds


def reference_model(path):
    """A1111's CPU load: `torch.jit.load`, `build_model(state_dict())`, `.float()`."""
    scripted = torch.jit.load(path, map_location="cpu").eval()
    return MODEL.build_model(scripted.state_dict()).float().eval(), scripted.state_dict()


TOKENIZER = clip_module("simple_tokenizer").SimpleTokenizer()


def tokenize(texts, context_length=CONTEXT):
    """`clip.tokenize(texts, truncate=True)` (`clip/clip.py`), with int64 rows."""
    sot, eot = TOKENIZER.encoder["<|startoftext|>"], TOKENIZER.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = [sot] + TOKENIZER.encode(text) + [eot]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = eot
        result[i, :len(tokens)] = torch.tensor(tokens)
    return result


def preprocess(image, n):
    """torchvision 0.16's `Resize(n, BICUBIC)` then `CenterCrop(n)` on a PIL image."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(n * long / short)
    size = (n, new_long) if w <= h else (new_long, n)
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BICUBIC)
    w, h = image.size
    top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
    return image.crop((left, top, left + n, top + n))


def normalize(image):
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    return ((x - mean[:, None, None]) / std[:, None, None]).unsqueeze(0)


# (name, width, height): already the resized size (56×56; 57 and 59 wide, whose crop offsets are
# 0.5 → 0 and 1.5 → 2 with Python's round; 56×90), shrunk (123×77 → 89×56, offset 16.5 → 16;
# 300×200), enlarged (40×70 → 56×98), and resized to 57 and 59 wide (102×100, 106×100).
IMAGES = [("square", 56, 56), ("w57", 57, 56), ("w59", 59, 56), ("tall90", 56, 90),
          ("shrink89", 123, 77), ("wide", 300, 200), ("grow", 40, 70), ("to57", 102, 100),
          ("to59", 106, 100)]

# Lines whose features are compared (crafted cases), then lines compared by tokens only.
TEXT_LINES = [
    "a photo of a cat",
    "",
    "fish &amp;amp; chips &amp; &lt;3",
    "before <|endoftext|> after",
    "<|startoftext|>start written",
    "shout!<|endoftext|> in punctuation",
    "<|ENDOFTEXT|> upper case",
    " ".join(f"word{i}" for i in range(100)),
    "Ernst Haeckel’s ‘curly’ quotes",
    "Cedric Seaut (Keos Masons)",
    "Zdzisław Beksiński, Émile Bernard, Hokusai 葛飾北斎",
]

TOKEN_LINES = [
    "Masterpiece, best quality, 1girl, solo, (looking at viewer:1.2), [blurry]",
    "Hello, World!! 123 4.5 -7 1e10 3/4 50% #hashtag @user ~tilde~ `code` {braces}",
    "don't it's we're they've I'm you'll he'd DON'T",
    "“curly double” ‘curly single’ „low“ ‚low‘ ʼmodifierʼ",
    "café naïve résumé Ångström Øre Straße ΣΊΣΥΦΟΣ ὀδυσσεύς",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "emoji 🐱👍🏽 👨‍👩‍👧 🏳️‍🌈 ❤️",
    "ﬁne ﬂow ＦＵＬＬ\u3000ｗｉｄｔｈ ｶﾀｶﾅ Ĳssel ǅemal",
    "fish &amp; chips &lt;3 &eacute;t&eacute; &#233;t&#xe9; &amp no-semicolon &nbsp;x",
    "&amp;lt;double&amp;gt; &amp;amp;amp; triple",
    "<b>html-like &amp; stays</b> &amp;amp;",
    "tab\tnew\nline\r\nspaces   \u2028sep\u0085nel",
    "c1 \u0093quotes\u0094 \u0080uro \u0096 dash",
    "control\u0001\u007f chars\ufeff bom \u200bzero\u200dwidth",
    "combining e\u0301 vs é, A\u030a",
    "numbers 0123456789 ١٢٣ ½ ² ⅷ",
    "   ",
    "x<|endoftext|>y<|startoftext|>z",
    "<|endoftext|><|endoftext|>",
    "<|endoftext|",
    "a<|endoftext|>",
    "!<|startoftext|>",
    "symbols ©®™ ±×÷ →← ♥♦ ★☆ …",
    "very long prompt, " * 60,
    "supercalifragilisticexpialidocious " * 20,
    "by Alphonse Mucha, trending on artstation, 8k, octane render",
    "Hasui Kawase’s woodblock",
]


def filler_lines(count, seed):
    """Short word lists like category lines, for chunking and ordering."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "oil", "painting", "sketch", "portrait", "of", "a", "dog", "in",
             "the", "style", "baroque", "cyberpunk", "studio", "lighting", "matte", "photo"]
    return [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(count)]


def image_pixels(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (3 * xx + 5 * yy) % 256], -1)
    return np.clip(base + rng.normal(0, 50, base.shape), 0, 255).astype(np.uint8)


def reference(out, seed):
    model_path = os.path.join(out, "ViT-L-14.pt")
    write_model(model_path, seed)
    model, state_dict = reference_model(model_path)
    torch.save(state_dict, os.path.join(out, "state_dict.pt"))
    tensors = {}
    with torch.no_grad():
        for i, (name, w, h) in enumerate(IMAGES):
            image = Image.fromarray(image_pixels(w, h, seed + i), "RGB")
            image.save(os.path.join(out, f"image_{name}.png"))
            crop = preprocess(image, RESOLUTION)
            tensors[f"preprocessed.{name}"] = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy())
            tensors[f"image.{name}"] = model.encode_image(normalize(crop)).float()
        text_lines = TEXT_LINES + filler_lines(290, seed)
        lines = text_lines + TOKEN_LINES
        tokens = tokenize(lines)
        tensors["tokens"] = tokens
        tensors["text"] = model.encode_text(tokens[: len(text_lines)]).float()
    # The features are O(1): the 1e-4 tolerance is meaningful.
    for key in ["text"] + [f"image.{name}" for name, _, _ in IMAGES]:
        scale = tensors[key].abs().max().item()
        assert 0.3 < scale < 30, (key, scale)
    json.dump({"lines": lines, "text_lines": len(text_lines)},
              open(os.path.join(out, "lines.json"), "w", encoding="utf-8"), ensure_ascii=False)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "reference.safetensors"))


def rewrite_archive(src, dst, keep=lambda name: True, replace=None):
    """A copy of the zip archive `src` without the records `keep` refuses, entries stored."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if not keep(item.filename):
                continue
            data = zin.read(item.filename)
            if replace and item.filename.endswith("/data.pkl"):
                data = replace(data)
            zout.writestr(item.filename, data)


def hostile(out):
    model = os.path.join(out, "model.pt")
    write_model(model, 1)
    # The same module tree without the code/ records: a checkpoint naming `__torch__` classes.
    rewrite_archive(model, os.path.join(out, "no_code.pt"), keep=lambda n: "/code/" not in n)
    # A TorchScript archive whose pickle names os.system where the root class was.
    old = b"c__torch__.openai_clip_model\nCLIP\n"

    def poison(data):
        assert data.count(old) == 1, data[:80]
        return data.replace(old, b"cos\nsystem\n")

    rewrite_archive(model, os.path.join(out, "os_system.pt"), replace=poison)


def main():
    args = sys.argv[1:]
    seed = 1
    if "--seed" in args:
        i = args.index("--seed")
        seed = int(args[i + 1])
        del args[i:i + 2]
    if args[0] == "--write-model":
        write_model(args[1], seed)
    elif args[0] == "reference":
        reference(args[1], seed)
    elif args[0] == "hostile":
        hostile(args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
