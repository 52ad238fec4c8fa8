#!/usr/bin/env python3
"""Installs the category lists of "Interrogate CLIP" (artists, flavors, mediums, movements) the
way A1111 has them: the files of pharmapsychotic/clip-interrogator (MIT), taken from its PyPI
wheel 0.6.0 (byte-identical to what A1111 downloads), checked against their sha256s.

Usage: interrogate_lists.py DEST_DIR [WHEEL]
Without WHEEL it downloads the wheel with pip into a scratch folder (pip's index, proxy and
certificate settings apply) and deletes it afterwards: the lists are what is kept.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path

from libtorch import StepError, cache_home, download

WHEEL = "clip-interrogator==0.6.0"

LISTS = {
    "artists.txt": "01e4b30f6d7cfdb62f4582c5bec658e02d79bf9c19052949ce3336d6eff4d395",
    "flavors.txt": "c99d83a7a435157339f3b60a34794c524de37159a9b72f3a2034df8245c4a2f1",
    "mediums.txt": "91f26b9d0d7d93f8e30139a94f895ba5a97744033ec0b174539f3a88bc49cd2c",
    "movements.txt": "16d60ecb48901885e877ca9243b3c32bc84a2477c4d3f0a1cf6d66086ce47483",
}
NOTICE = """These lists are pharmapsychotic/clip-interrogator's (clip_interrogator/data/, from the
PyPI wheel clip-interrogator 0.6.0), installed by sdhost's scripts/setup for "Interrogate CLIP".

MIT License

Copyright (c) 2022 pharmapsychotic

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def install(wheel: Path, dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name, sha in LISTS.items():
            data = archive.read(f"clip_interrogator/data/{name}")
            if hashlib.sha256(data).hexdigest() != sha:
                print(f"interrogate_lists: {name} in {wheel} has another sha256", file=sys.stderr)
                return 1
            partial = dest / f".{name}.partial"
            partial.write_bytes(data)
            partial.replace(dest / name)
    (dest / "LICENSE-clip-interrogator.md").write_text(NOTICE)
    return 0


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(sys.argv[1])
    if len(sys.argv) > 2:
        return install(Path(sys.argv[2]), dest)
    if all((dest / name).is_file() for name in LISTS):
        return 0
    logs = cache_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            wheels = download([WHEEL], Path(scratch), logs / "interrogate-lists-download.log",
                              what=f"{WHEEL} (Interrogate CLIP's category lists)")
        except StepError as error:
            print(f"scripts/setup: {error}", file=sys.stderr)
            return 1
        return install(wheels[0], dest)


if __name__ == "__main__":
    sys.exit(main())
