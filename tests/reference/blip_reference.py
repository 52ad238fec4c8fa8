"""BLIP captioning reference (A1111's `modules/interrogate.py: InterrogateModels.generate_caption`
with salesforce/BLIP's `blip_decoder`), on tiny random models in the real file layout.

Usage:
  blip_reference.py --write-model PATH --vocab PATH [--seed N] [--wide] [--untied]
      Writes a tiny BLIP `.pth` (`torch.save({"model": state_dict})` with the Salesforce key
      names) and its `vocab.txt`; nothing else (the integrator builds models dirs with it).
  blip_reference.py --reference OUT_DIR [--seed N]
      Writes the models and what the Rust side must reproduce into OUT_DIR (see `reference`).

The network is transformers' `BlipForConditionalGeneration` with every parameter re-drawn from a
seeded generator, its names mapped to Salesforce's (spec §7.1). Decoding: greedy ids come from
transformers' own `generate` (and a transcription of 4.30's loop for max_length ≤ 4, which
transformers 5 refuses); beam search is transcribed here from transformers 4.30's
`BeamSearchScorer` (what BLIP was written against: hypotheses normalised by their length with the
prompt, without the end token) and checked against transformers 5's `generate(num_beams=3)` made
to score that way; transformers ≥ 4.35 itself normalises by the generated length, and the
script records whether its plain result agrees. The caption
text follows the slow `BertTokenizer.decode` of transformers 4.30 (spec §3.8), written out here.
"""

import argparse
import contextlib
import json
import os
import warnings

import numpy as np
import torch
from PIL import Image
import transformers.generation.utils
from safetensors.torch import save_file
from transformers import BlipConfig, BlipForConditionalGeneration
from transformers.models.blip.configuration_blip import BlipTextConfig, BlipVisionConfig

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# After BERT's 104 fixed lines: words the §3.8 rules act on, and some to make sentences of.
WORDS = ["a", "picture", "of", "##s", "##ten", ".", ",", "'", "n't", "do", "not", "s", "m", "?", "!",
         "##ing", "cat", "dog", "on", "the", "table", "red", "blue", "green", "sitting", "standing",
         "in", "with", "and", "man", "woman", "car", "street", "tree", "house", "sky", "water",
         "boat", "two", "three", "white", "black", "small", "large", "field", "grass", "road",
         "'s", "'m", "'re", "'ve", "##er", "##ed", "near", "next", "to", "over", "under", "mountain",
         "is", "are", "it"]

# Dims: the brief's (spec §7.1) and a wider pair with several heads on both sides and a
# cross-attention whose key/value width differs from the text width.
DIMS = {
    "tiny": dict(vision=64, vision_depth=2, vision_mlp=256, text=64, text_layers=2, text_mlp=256),
    "wide": dict(vision=192, vision_depth=2, vision_mlp=768, text=128, text_layers=2, text_mlp=512),
}
MAX_POSITIONS = 64
LINEAR_GAIN = 1.0
WORD_STD = 0.3
SEP_BOOST = 8.0
UNUSED_PENALTY = 6.0


def vocab_lines():
    return (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            + WORDS)


def hf_model(dims, vocab_size):
    """transformers' BLIP with A1111's hyper-parameters at the given widths, parameters random."""
    vision = BlipVisionConfig(hidden_size=dims["vision"], intermediate_size=dims["vision_mlp"],
                              num_hidden_layers=dims["vision_depth"],
                              num_attention_heads=dims["vision"] // 64, image_size=384, patch_size=16,
                              layer_norm_eps=1e-6, hidden_act="gelu")
    text = BlipTextConfig(vocab_size=vocab_size + 2, hidden_size=dims["text"],
                          encoder_hidden_size=dims["vision"], intermediate_size=dims["text_mlp"],
                          num_attention_heads=dims["text"] // 64,
                          num_hidden_layers=dims["text_layers"],
                          max_position_embeddings=MAX_POSITIONS, layer_norm_eps=1e-12,
                          hidden_act="gelu", bos_token_id=vocab_size, sep_token_id=SEP,
                          pad_token_id=PAD, eos_token_id=SEP)
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    model = BlipForConditionalGeneration(config).eval()
    return model


def randomise(model, seed):
    """Draws every parameter from a seeded generator at scales that keep the logits spread."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name or \
                    name.endswith("norm.weight") or name.endswith("norm.bias"):
                if name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn(shape, generator=gen))
                else:
                    p.copy_(0.1 * torch.randn(shape, generator=gen))
            elif p.dim() >= 2 and ("patch_embedding" in name or "embedding" not in name.lower()):
                fan_in = int(np.prod(shape[1:]))
                p.copy_(torch.randn(shape, generator=gen) * (LINEAR_GAIN / fan_in ** 0.5))
            elif "word_embeddings" in name:
                p.copy_(WORD_STD * torch.randn(shape, generator=gen))
            elif "embedding" in name.lower() or "embeddings" in name:
                p.copy_(0.5 * torch.randn(shape, generator=gen))
            else:  # biases (never zero)
                p.copy_(0.1 * torch.randn(shape, generator=gen))
        # Tiny vocabularies are mostly `[unusedN]` lines; keep them rare so captions are words.
        model.text_decoder.cls.predictions.bias[1:UNK] -= UNUSED_PENALTY
        # An end token that sometimes wins once allowed, so short captions stop on their own.
        model.text_decoder.cls.predictions.bias[SEP] += SEP_BOOST
    # transformers ties the LM decoder weight to the word table; make sure it still is.
    head = model.text_decoder.cls.predictions
    assert head.decoder.weight.data_ptr() == \
        model.text_decoder.bert.embeddings.word_embeddings.weight.data_ptr()


HF_TO_SALESFORCE = [
    ("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
    ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
    ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
    ("vision_model.post_layernorm.", "visual_encoder.norm."),
]


def salesforce_name(name):
    for hf, sf in HF_TO_SALESFORCE:
        if name.startswith(hf):
            return sf + name[len(hf):]
    if name.startswith("vision_model.encoder.layers."):
        rest = name[len("vision_model.encoder.layers."):]
        block, tail = rest.split(".", 1)
        tail = (tail.replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
                .replace("self_attn.qkv", "attn.qkv").replace("self_attn.projection", "attn.proj"))
        return f"visual_encoder.blocks.{block}.{tail}"
    if name.startswith("text_decoder."):
        return name
    raise KeyError(name)


def salesforce_state_dict(model, untied=False, pos_grid=None, seed=0):
    """The state dict as salesforce/BLIP's `blip_decoder` saves it (spec §3.2)."""
    sd = {}
    word = model.text_decoder.bert.embeddings.word_embeddings.weight.detach()
    bias = model.text_decoder.cls.predictions.bias.detach()
    for name, tensor in model.state_dict().items():
        if name.endswith("position_ids"):
            continue
        sf = salesforce_name(name)
        if sf.startswith("text_decoder.cls.predictions.decoder.") or \
                sf == "text_decoder.cls.predictions.bias":
            continue
        sd[sf] = tensor.detach().clone()
    # Salesforce's file: one storage for the word table and the tied decoder weight, one for
    # the bias stored under two names.
    sd["text_decoder.bert.embeddings.word_embeddings.weight"] = word.clone()
    sd["text_decoder.cls.predictions.bias"] = bias.clone()
    if not untied:
        sd["text_decoder.cls.predictions.decoder.weight"] = \
            sd["text_decoder.bert.embeddings.word_embeddings.weight"]
        sd["text_decoder.cls.predictions.decoder.bias"] = sd["text_decoder.cls.predictions.bias"]
    sd["text_decoder.bert.embeddings.position_ids"] = torch.arange(MAX_POSITIONS).unsqueeze(0)
    if pos_grid is not None:
        # A checkpoint trained at another resolution: its own grid of positions.
        gen = torch.Generator().manual_seed(seed + 7)
        width = sd["visual_encoder.pos_embed"].shape[-1]
        sd["visual_encoder.pos_embed"] = 0.5 * torch.randn(1, pos_grid * pos_grid + 1, width,
                                                           generator=gen)
    return sd


def interpolate_pos_embed(pos_embed, grid):
    """BLIP's `interpolate_pos_embed`: bicubic (align_corners False) to `grid`², CLS row kept."""
    extra, tokens = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(round(tokens.shape[1] ** 0.5))
    width = tokens.shape[-1]
    tokens = tokens.reshape(1, old, old, width).permute(0, 3, 1, 2)
    tokens = torch.nn.functional.interpolate(tokens, size=(grid, grid), mode="bicubic",
                                             align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra, tokens), dim=1)


def load_into_hf(model, sd):
    """Loads a Salesforce-named state dict into the transformers model (the §7.1 name map)."""
    inverse = {salesforce_name(n): n for n in model.state_dict() if not n.endswith("position_ids")}
    hf = {}
    for sf, tensor in sd.items():
        if sf.endswith("position_ids") or sf.startswith("text_decoder.cls.predictions.decoder."):
            continue
        if sf == "visual_encoder.pos_embed" and tensor.shape[1] != (384 // 16) ** 2 + 1:
            tensor = interpolate_pos_embed(tensor, 384 // 16)
        hf[inverse[sf]] = tensor
    word = sd["text_decoder.bert.embeddings.word_embeddings.weight"]
    hf["text_decoder.cls.predictions.decoder.weight"] = word
    hf["text_decoder.cls.predictions.decoder.bias"] = sd["text_decoder.cls.predictions.bias"]
    missing, unexpected = model.load_state_dict(hf, strict=False)
    assert not unexpected, unexpected
    assert all(m.endswith("position_ids") for m in missing), missing


def write_model(path, vocab_path, seed, dims="tiny", untied=False, pos_grid=None):
    """Writes the `.pth` and `vocab.txt`; returns the transformers model with the same weights."""
    vocab = vocab_lines()
    model = hf_model(DIMS[dims], len(vocab))
    randomise(model, seed)
    sd = salesforce_state_dict(model, untied=untied, pos_grid=pos_grid, seed=seed)
    if pos_grid is not None:
        load_into_hf(model, sd)
    torch.save({"model": sd, "epoch": 3}, path)
    with open(vocab_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(vocab) + "\n")
    return model, vocab


def test_image():
    """A 300×200 picture with gradients and noise (enlarged on one axis, shrunk on the other)."""
    rng = np.random.default_rng(11)
    h, w = 200, 300
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), (3 * xx + 2 * yy) % 256], -1)
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


def preprocess(pixels):
    """`Resize((384,384), BICUBIC)` + `ToTensor` + `Normalize` (spec §3.6)."""
    resized = np.asarray(Image.fromarray(pixels, "RGB").resize((384, 384), Image.Resampling.BICUBIC))
    x = torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return resized, x.unsqueeze(0)


def decode(ids, vocab):
    """The caption of spec §3.8: the slow BertTokenizer.decode of transformers 4.30 with its
    `clean_up_tokenization`, then A1111's cut of `len("a picture of ")` characters."""
    special = {PAD, UNK, CLS, SEP, MASK, len(vocab), len(vocab) + 1}
    text = " ".join(vocab[i] for i in ids if i not in special)
    text = text.replace(" ##", "").strip()
    for old, new in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                     (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]:
        text = text.replace(old, new)
    return text[len("a picture of "):]


def prompt_ids(vocab):
    return [CLS, vocab.index("a"), vocab.index("picture"), vocab.index("of"), SEP]


def decoder_logits(model, ids, image_embeds):
    out = model.text_decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=image_embeds,
                             return_dict=True)
    return out.logits[0]


def greedy_margins(model, ids, image_embeds, min_length):
    """The top-2 margin of each greedy choice of `ids` (after the 4 prompt tokens)."""
    margins = []
    for n in range(4, len(ids)):
        z = decoder_logits(model, ids[:n], image_embeds)[-1].clone()
        if n < min_length:
            z[SEP] = -float("inf")
        top = torch.topk(z, 2).values
        assert int(z.argmax()) == ids[n]
        margins.append(float(top[0] - top[1]))
    return margins


def greedy_430(model, prefix, image_embeds, min_length, max_length):
    """Greedy search as transformers 4.30 runs it for BLIP (spec §3.7): at least one step,
    the end token barred while shorter than `min_length`, stop at it or at `max_length`."""
    ids = list(prefix)
    while True:
        z = decoder_logits(model, ids, image_embeds)[-1].clone()
        if len(ids) < min_length:
            z[SEP] = -float("inf")
        ids.append(int(z.argmax()))
        if ids[-1] == SEP or len(ids) >= max_length:
            return ids


def beam_search_430(model, prefix, image_embeds, num_beams, min_length, max_length):
    """Beam search as transformers 4.30's `beam_search` + `BeamSearchScorer` run it for BLIP
    (no length penalty exponent other than 1, early stopping off, repetition penalty 1.0)."""
    beams = [list(prefix)]
    scores = torch.tensor([0.0])
    finished = []  # (score, ids) — at most num_beams, worst dropped
    worst = 1e9
    done = False

    def add(hyp, sum_logprobs):
        nonlocal worst
        score = sum_logprobs / len(hyp)
        if len(finished) < num_beams or score > worst:
            finished.append((score, hyp))
            if len(finished) > num_beams:
                order = sorted((s, i) for i, (s, _) in enumerate(finished))
                del finished[order[0][1]]
                worst = order[1][0]
            else:
                worst = min(score, worst)

    beams = [list(prefix) for _ in range(num_beams)]
    scores = torch.full((num_beams,), -1e9)
    scores[0] = 0.0
    while True:
        cur_len = len(beams[0])
        rows = [decoder_logits(model, b, image_embeds)[-1] for b in beams]
        logp = torch.log_softmax(torch.stack(rows), dim=-1)
        if cur_len < min_length:
            logp[:, SEP] = -float("inf")
        total = (logp + scores[:, None]).reshape(-1)
        top_scores, top_idx = torch.topk(total, 2 * num_beams)
        vocab_size = logp.shape[-1]
        next_beams, next_scores = [], []
        for rank, (s, i) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            beam, token = i // vocab_size, i % vocab_size
            if token == SEP:
                if rank >= num_beams:
                    continue
                add(list(beams[beam]), s)
            else:
                next_beams.append(beams[beam] + [token])
                next_scores.append(s)
            if len(next_beams) == num_beams:
                break
        best = float(top_scores.max())
        if len(finished) >= num_beams and worst >= best / cur_len:
            done = True
        beams, scores = next_beams, torch.tensor(next_scores)
        if done or len(beams[0]) >= max_length:
            break
    if not done:
        for b, s in zip(beams, scores.tolist()):
            add(list(b), s)
    # `sorted(...).pop()`: the highest score, the last added among equals.
    ordered = sorted(finished, key=lambda t: t[0])
    return ordered[-1][1]


class Hostile:
    """A pickle that would run a shell command if unpickled by `torch.load(weights_only=False)`."""

    def __reduce__(self):
        return (os.system, ("echo hostile",))


def write_broken(out_dir, model_path):
    """Files a loader must refuse: a hostile pickle, a truncated archive, a state dict that is
    not BLIP's, one with a tensor missing and one with a tensor of the wrong shape."""
    torch.save({"model": Hostile()}, os.path.join(out_dir, "hostile.pth"))
    with open(model_path, "rb") as f:
        data = f.read()
    with open(os.path.join(out_dir, "truncated.pth"), "wb") as f:
        f.write(data[: len(data) // 2])
    sd = torch.load(model_path, weights_only=True)["model"]
    torch.save({"state_dict": sd}, os.path.join(out_dir, "not_blip.pth"))
    missing = dict(sd)
    del missing["text_decoder.bert.encoder.layer.1.crossattention.output.LayerNorm.bias"]
    torch.save({"model": missing}, os.path.join(out_dir, "missing.pth"))
    wrong = dict(sd)
    wrong["visual_encoder.blocks.1.attn.qkv.weight"] = wrong["visual_encoder.blocks.1.attn.qkv.weight"][:-1]
    torch.save({"model": wrong}, os.path.join(out_dir, "wrong_shape.pth"))


@contextlib.contextmanager
def length_with_prompt():
    """transformers 5's beam search with 4.30's scores: a finished hypothesis divided by its
    length with the prompt (without the end token), and the early-stop bound over the current
    length, i.e. its helpers called with a one-token "prompt" instead of the real one."""
    mixin = transformers.generation.utils.GenerationMixin
    update, check = mixin._update_finished_beams, mixin._check_early_stop_heuristic

    def update_430(self, *args, **kwargs):
        return update(self, *args, **{**kwargs, "decoder_prompt_len": 1})

    def check_430(*args, **kwargs):
        return check(*args, **{**kwargs, "decoder_prompt_len": 1})

    mixin._update_finished_beams = update_430
    mixin._check_early_stop_heuristic = staticmethod(check_430)
    try:
        yield
    finally:
        mixin._update_finished_beams = update
        mixin._check_early_stop_heuristic = staticmethod(check)


CASES = {"default": (24, 48), "min_ge_max": (30, 12), "max_le_4": (24, 3), "short": (5, 9)}


def reference(out_dir, seed):
    # transformers warns about min_length > max_length, one of the cases on purpose.
    warnings.filterwarnings("ignore", message="Unfeasible length constraints")
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "blip.pth")
    vocab_path = os.path.join(out_dir, "vocab.txt")
    model, vocab = write_model(model_path, vocab_path, seed, dims="wide")
    write_model(os.path.join(out_dir, "blip_untied.pth"), os.path.join(out_dir, "vocab_untied.txt"),
                seed, dims="wide", untied=True)
    grid_model, _ = write_model(os.path.join(out_dir, "blip_grid20.pth"),
                                os.path.join(out_dir, "vocab_grid20.txt"), seed, dims="wide",
                                pos_grid=20)
    tiny_model, _ = write_model(os.path.join(out_dir, "blip_tiny.pth"),
                                os.path.join(out_dir, "vocab_tiny.txt"), seed, dims="tiny")
    write_broken(out_dir, model_path)
    pixels = test_image()
    Image.fromarray(pixels, "RGB").save(os.path.join(out_dir, "image.png"))
    resized, x = preprocess(pixels)
    prompt = prompt_ids(vocab)
    bos = len(vocab)
    prefix = [bos] + prompt[1:-1]
    tensors = {"resized": torch.from_numpy(resized.copy()), "pixel_values": x}
    results = {"prefix": prefix, "cases": {}}
    with torch.no_grad():
        embeds = model.vision_model(pixel_values=x).last_hidden_state
        tensors["image_embeds"] = embeds
        tensors["grid20_image_embeds"] = grid_model.vision_model(pixel_values=x).last_hidden_state
        forced = prefix + [vocab.index(w) for w in ["cat", "sitting", "on", "the", "table", "."]]
        tensors["forced_ids"] = torch.tensor(forced)
        tensors["forced_logits"] = decoder_logits(model, forced, embeds)
        for name, (m, big_m) in CASES.items():
            ids = greedy_430(model, prefix, embeds, m, big_m)
            try:
                out = model.generate(x, input_ids=torch.tensor([prompt]), num_beams=1,
                                     do_sample=False, min_length=m, max_length=big_m,
                                     repetition_penalty=1.0)
                # transformers' own greedy search decides wherever it accepts the lengths.
                assert out[0].tolist() == ids, (name, out[0].tolist(), ids)
                checked = True
            except ValueError:  # transformers 5 refuses max_length <= prompt; 4.30 ran one step
                checked = False
            margins = greedy_margins(model, ids, embeds, m)
            assert min(margins) >= 1e-3, f"seed {seed}: greedy margin {min(margins)} in case {name}"
            results["cases"][name] = {"min_length": m, "max_length": big_m, "num_beams": 1,
                                      "ids": ids, "caption": decode(ids, vocab),
                                      "min_margin": min(margins), "transformers5_checked": checked}
        # The brief's dims (one head per attention), as `--write-model` writes them.
        tiny_embeds = tiny_model.vision_model(pixel_values=x).last_hidden_state
        ids = greedy_430(tiny_model, prefix, tiny_embeds, 24, 48)
        out = tiny_model.generate(x, input_ids=torch.tensor([prompt]), num_beams=1,
                                  do_sample=False, min_length=24, max_length=48)
        assert out[0].tolist() == ids
        margins = greedy_margins(tiny_model, ids, tiny_embeds, 24)
        assert min(margins) >= 1e-3, f"seed {seed}: greedy margin {min(margins)} (tiny dims)"
        results["tiny_default"] = {"ids": ids, "caption": decode(ids, vocab),
                                   "min_margin": min(margins)}
        beam_cases = {"beams3": (24, 48), "beams3_short": (5, 12), "beams3_430": (6, 16)}
        for name, (m, big_m) in beam_cases.items():
            ids = beam_search_430(model, prefix, embeds, 3, m, big_m)
            kwargs = dict(num_beams=3, do_sample=False, min_length=m, max_length=big_m,
                          repetition_penalty=1.0)
            hf = model.generate(x, input_ids=torch.tensor([prompt]), **kwargs)[0].tolist()
            with length_with_prompt():
                hf430 = model.generate(x, input_ids=torch.tensor([prompt]), **kwargs)[0].tolist()
            hf, hf430 = ([t for t in seq if t not in (SEP, PAD)] for seq in (hf, hf430))
            # transformers 5's own search, scoring as 4.30 did, is the independent check.
            assert hf430 == ids, (name, hf430, ids)
            results["cases"][name] = {"min_length": m, "max_length": big_m, "num_beams": 3,
                                      "ids": ids, "caption": decode(ids, vocab),
                                      "transformers5_ids": hf, "transformers5_agrees": hf == ids}
        # One case where the two normalisations choose differently, so the test shows which.
        assert not results["cases"]["beams3_430"]["transformers5_agrees"]
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "reference.safetensors"))
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(results, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-model", metavar="PATH")
    parser.add_argument("--vocab", metavar="PATH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wide", action="store_true", help="the wide dims (several heads)")
    parser.add_argument("--untied", action="store_true", help="no cls.predictions.decoder.* keys")
    parser.add_argument("--reference", metavar="OUT_DIR")
    args = parser.parse_args()
    if args.write_model:
        if not args.vocab:
            parser.error("--write-model needs --vocab")
        write_model(args.write_model, args.vocab, args.seed, "wide" if args.wide else "tiny",
                    untied=args.untied)
    elif args.reference:
        reference(args.reference, args.seed)
    else:
        parser.error("give --write-model PATH --vocab PATH, or --reference OUT_DIR")


if __name__ == "__main__":
    main()
