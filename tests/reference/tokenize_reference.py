"""Token ids of A1111's tokenizer for a corpus: the CLIP BPE after ftfy and whitespace cleaning.

Usage: tokenize_reference.py CORPUS.json OUT.json (a JSON list of strings → a list of id lists)

A1111 (transformers 4.30 slow `CLIPTokenizer`, ftfy installed) cleans text with
`ftfy.fix_text`, folds whitespace and lower-cases, splits words with CLIP's regex and applies
BPE. transformers 5 no longer ships that slow tokenizer, so this script runs the same steps with
OpenAI's original BPE implementation as shipped in open_clip_torch (its module is loaded alone,
without open_clip's package imports).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import ftfy
import regex


def load_open_clip_tokenizer():
    spec = importlib.util.find_spec("open_clip")
    path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def main() -> None:
    corpus = json.load(open(sys.argv[1], encoding="utf-8"))
    bpe = load_open_clip_tokenizer()
    out = []
    for text in corpus:
        cleaned = regex.sub(r"\s+", " ", ftfy.fix_text(text)).strip().lower()
        ids = []
        for word in regex.findall(bpe.pat, cleaned):
            word = "".join(bpe.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(bpe.encoder[piece] for piece in bpe.bpe(word).split(" "))
        out.append(ids)
    json.dump(out, open(sys.argv[2], "w", encoding="utf-8"))


if __name__ == "__main__":
    main()
