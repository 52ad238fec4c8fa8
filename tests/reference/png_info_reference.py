"""Pillow's side of the infotext PNG round trip (how A1111 writes and reads `parameters`).

Usage: png_info_reference.py DIR
Reads DIR/texts.json ({name: text}); checks that Pillow reads DIR/ours_<name>.png's
`parameters` as the text and whether it is stored as tEXt or iTXt; writes DIR/pillow_<name>.png
the way A1111 does (PngInfo.add_text), for the Rust side to read.
"""

import json
import os
import sys

from PIL import Image, PngImagePlugin


def main():
    folder = sys.argv[1]
    texts = json.load(open(os.path.join(folder, "texts.json"), encoding="utf-8"))
    for name, text in texts.items():
        ours = Image.open(os.path.join(folder, f"ours_{name}.png"))
        ours.load()
        got = ours.info.get("parameters")
        assert got == text, f"{name}: Pillow read {got!r}"
        chunk = ours.text.get("parameters")
        itxt = isinstance(chunk, PngImagePlugin.iTXt)
        try:
            text.encode("latin-1")
            latin1 = True
        except UnicodeEncodeError:
            latin1 = False
        assert itxt != latin1, f"{name}: stored as {'iTXt' if itxt else 'tEXt'}"
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        Image.new("RGB", (5, 3), (10, 20, 30)).save(os.path.join(folder, f"pillow_{name}.png"), pnginfo=info)


if __name__ == "__main__":
    main()
