"""Build host/assets/clip-tokenizer.json, the CLIP ViT-L/14 BPE tokenizer, for the tokenizers crate.

Run once (the result is committed): .venv/bin/python scripts/make_clip_tokenizer.py [BPE_GZ]

The vocabulary is OpenAI's MIT-licensed `bpe_simple_vocab_16e6.txt.gz` as shipped in the
`open_clip_torch` PyPI package (default: the copy in the venv's site-packages). The vocabulary
is built the way CLIP builds it: the 256 byte symbols, the same with the end-of-word suffix
`</w>`, one token per merge (48894), then `<|startoftext|>` (49406) and `<|endoftext|>` (49407).
Text cleaning (ftfy's fixes, whitespace, lower case) happens in sdhost before this tokenizer.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

OUT = os.path.join(os.path.dirname(__file__), "..", "host", "assets", "clip-tokenizer.json")
MERGES = 49152 - 256 - 2  # the number of merges CLIP uses from the file
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable character table (GPT-2's)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def main() -> None:
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or spec.submodule_search_locations is None:
            sys.exit("open_clip_torch is not installed; pass the path of bpe_simple_vocab_16e6.txt.gz")
        path = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    assert len(vocab) == 49408, len(vocab)

    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix="")
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tok.save(OUT, pretty=False)
    print(f"wrote {os.path.normpath(OUT)} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    main()
