"""Reference grids for host/tests/integration/grid.rs: a transcription of A1111 v1.10.1's
`modules/images.py` (`image_grid`, `draw_grid_annotations`, `draw_prompt_matrix`,
`split_grid`, `combine_grid`) and of the Z step of `scripts/xyz_grid.py: draw_xyz_grid`, run
with Pillow and the Roboto file sdhost embeds (host/assets/fonts/Roboto-Regular.ttf).

A1111's options are their defaults here: grid_background_color #ffffff, grid_text_active_color
#000000, grid_text_inactive_color #999999, font = Roboto. One change for current Pillow:
`ImageDraw.multiline_textsize` (Pillow < 10) is gone, so its width is read as the right edge
of `multiline_textbbox`, which is what it returned.

Usage: grid_reference.py OUT_DIR. Writes cells and expected pictures as PNG and
`cases.json` describing each case, plus `metrics.json` (Pillow's text measurements).
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
FONT = str(ROOT / "host/assets/fonts/Roboto-Regular.ttf")

GRID_BACKGROUND = "#ffffff"
TEXT_ACTIVE = "#000000"
TEXT_INACTIVE = "#999999"


def get_font(fontsize):
    return ImageFont.truetype(FONT, fontsize)


def image_grid(imgs, rows, background=GRID_BACKGROUND):
    if rows > len(imgs):
        rows = len(imgs)
    cols = math.ceil(len(imgs) / rows)
    w, h = map(max, zip(*(img.size for img in imgs)))
    grid = Image.new("RGB", size=(cols * w, rows * h), color=ImageColor.getcolor(background, "RGB"))
    for i, img in enumerate(imgs):
        img_w, img_h = img.size
        w_offset = 0 if img_w == w else (w - img_w) // 2
        h_offset = 0 if img_h == h else (h - img_h) // 2
        grid.paste(img, box=(i % cols * w + w_offset, i // cols * h + h_offset))
    return grid


class GridAnnotation:
    def __init__(self, text="", is_active=True):
        self.text = text
        self.is_active = is_active
        self.size = None


def draw_grid_annotations(im, width, height, hor_texts, ver_texts, margin=0):
    color_active = ImageColor.getcolor(TEXT_ACTIVE, "RGB")
    color_inactive = ImageColor.getcolor(TEXT_INACTIVE, "RGB")
    color_background = ImageColor.getcolor(GRID_BACKGROUND, "RGB")

    def wrap(drawing, text, font, line_length):
        lines = [""]
        for word in text.split():
            line = f"{lines[-1]} {word}".strip()
            if drawing.textlength(line, font=font) <= line_length:
                lines[-1] = line
            else:
                lines.append(word)
        return lines

    def draw_texts(drawing, draw_x, draw_y, lines, initial_fnt, initial_fontsize):
        for line in lines:
            fnt = initial_fnt
            fontsize = initial_fontsize
            # multiline_textsize(...)[0] in A1111 (Pillow 9.5).
            while drawing.multiline_textbbox((0, 0), line.text, font=fnt)[2] > line.allowed_width and fontsize > 0:
                fontsize -= 1
                fnt = get_font(fontsize)
            drawing.multiline_text((draw_x, draw_y + line.size[1] / 2), line.text, font=fnt,
                                   fill=color_active if line.is_active else color_inactive,
                                   anchor="mm", align="center")
            if not line.is_active:
                drawing.line((draw_x - line.size[0] // 2, draw_y + line.size[1] // 2,
                              draw_x + line.size[0] // 2, draw_y + line.size[1] // 2),
                             fill=color_inactive, width=4)
            draw_y += line.size[1] + line_spacing

    fontsize = (width + height) // 25
    line_spacing = fontsize // 2
    fnt = get_font(fontsize)

    pad_left = 0 if sum([sum([len(line.text) for line in lines]) for lines in ver_texts]) == 0 else width * 3 // 4

    cols = im.width // width
    rows = im.height // height
    assert cols == len(hor_texts)
    assert rows == len(ver_texts)

    calc_img = Image.new("RGB", (1, 1), color_background)
    calc_d = ImageDraw.Draw(calc_img)

    for texts, allowed_width in zip(hor_texts + ver_texts, [width] * len(hor_texts) + [pad_left] * len(ver_texts)):
        items = [] + texts
        texts.clear()
        for line in items:
            wrapped = wrap(calc_d, line.text, fnt, allowed_width)
            texts += [GridAnnotation(x, line.is_active) for x in wrapped]
        for line in texts:
            bbox = calc_d.multiline_textbbox((0, 0), line.text, font=fnt)
            line.size = (bbox[2] - bbox[0], bbox[3] - bbox[1])
            line.allowed_width = allowed_width

    hor_text_heights = [sum([line.size[1] + line_spacing for line in lines]) - line_spacing for lines in hor_texts]
    ver_text_heights = [sum([line.size[1] + line_spacing for line in lines]) - line_spacing * len(lines) for lines in ver_texts]

    pad_top = 0 if sum(hor_text_heights) == 0 else max(hor_text_heights) + line_spacing * 2

    result = Image.new("RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)), color_background)
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))

    d = ImageDraw.Draw(result)
    for col in range(cols):
        x = pad_left + (width + margin) * col + width / 2
        y = pad_top / 2 - hor_text_heights[col] / 2
        draw_texts(d, x, y, hor_texts[col], fnt, fontsize)
    for row in range(rows):
        x = pad_left / 2
        y = pad_top + (height + margin) * row + height / 2 - ver_text_heights[row] / 2
        draw_texts(d, x, y, ver_texts[row], fnt, fontsize)

    return result, {"pad_left": pad_left, "pad_top": pad_top}


def draw_prompt_matrix(im, width, height, all_prompts, margin=0):
    prompts = all_prompts[1:]
    boundary = math.ceil(len(prompts) / 2)
    prompts_horiz = prompts[:boundary]
    prompts_vert = prompts[boundary:]
    hor_texts = [[GridAnnotation(x, is_active=pos & (1 << i) != 0) for i, x in enumerate(prompts_horiz)] for pos in range(1 << len(prompts_horiz))]
    ver_texts = [[GridAnnotation(x, is_active=pos & (1 << i) != 0) for i, x in enumerate(prompts_vert)] for pos in range(1 << len(prompts_vert))]
    return draw_grid_annotations(im, width, height, hor_texts, ver_texts, margin)


def combine_z(sub_grids, z_labels):
    """The Z step of draw_xyz_grid: sub-grids in one row, Z labels on top."""
    z_grid = image_grid(sub_grids, rows=1)
    w, h = map(max, zip(*(img.size for img in sub_grids)))
    title_texts = [[GridAnnotation(z)] for z in z_labels]
    return draw_grid_annotations(z_grid, w, h, title_texts, [[GridAnnotation()]])


Grid = tuple  # (tiles, tile_w, tile_h, image_w, image_h, overlap), as A1111's namedtuple


def split_grid(image, tile_w, tile_h, overlap):
    w, h = image.width, image.height
    non_overlap_width = tile_w - overlap
    non_overlap_height = tile_h - overlap
    cols = math.ceil((w - overlap) / non_overlap_width)
    rows = math.ceil((h - overlap) / non_overlap_height)
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    tiles = []
    for row in range(rows):
        row_images = []
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            row_images.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        tiles.append([y, tile_h, row_images])
    return (tiles, tile_w, tile_h, w, h, overlap)


def combine_grid(grid):
    tiles, tile_w, tile_h, image_w, image_h, overlap = grid

    def make_mask_image(r):
        r = r * 255 / overlap
        r = r.astype(np.uint8)
        return Image.fromarray(r, "L")

    mask_w = make_mask_image(np.arange(overlap, dtype=np.float32).reshape((1, overlap)).repeat(tile_h, axis=0))
    mask_h = make_mask_image(np.arange(overlap, dtype=np.float32).reshape((overlap, 1)).repeat(image_w, axis=1))
    combined_image = Image.new("RGB", (image_w, image_h))
    for y, h, row in tiles:
        combined_row = Image.new("RGB", (image_w, h))
        for x, w, tile in row:
            if x == 0:
                combined_row.paste(tile, (0, 0))
                continue
            combined_row.paste(tile.crop((0, 0, overlap, h)), (x, 0), mask=mask_w)
            combined_row.paste(tile.crop((overlap, 0, w, h)), (x + overlap, 0))
        if y == 0:
            combined_image.paste(combined_row, (0, 0))
            continue
        combined_image.paste(combined_row.crop((0, 0, combined_row.width, overlap)), (0, y), mask=mask_h)
        combined_image.paste(combined_row.crop((0, overlap, combined_row.width, h)), (0, y + overlap))
    return combined_image


def cell(rng, w, h):
    """A cell: a flat colour with noise, so pasting errors show."""
    base = rng.integers(0, 256, size=3)
    noise = rng.integers(-40, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def annotations(texts):
    return [[GridAnnotation(t) for t in lines] for lines in texts]


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    cases = []

    def save_cells(name, cells):
        names = []
        for i, c in enumerate(cells):
            path = f"{name}_cell{i}.png"
            c.save(out / path)
            names.append(path)
        return names

    def grid_case(name, sizes, rows, hor, ver, margin, background=GRID_BACKGROUND):
        cells = [cell(rng, w, h) for w, h in sizes]
        grid = image_grid(cells, rows, background)
        case = {"name": name, "kind": "grid", "cells": save_cells(name, cells), "rows": rows,
                "background": list(ImageColor.getcolor(background, "RGB")), "margin": margin}
        if hor is not None:
            w, h = map(max, zip(*(c.size for c in cells)))
            result, pads = draw_grid_annotations(grid, w, h, annotations(hor), annotations(ver), margin)
            case.update(hor=hor, ver=ver, cell_w=w, cell_h=h, **pads)
        else:
            result = grid
        result.save(out / f"{name}_expected.png")
        cases.append(case)

    # X/Y plot as xyz_grid draws it: 3 columns, 2 rows, labels of one and two lines.
    grid_case("xy", [(200, 150)] * 6, 2,
              [["Steps: 10"], ["Steps: 20"], ["Prompt S/R: a castle on a hill at dusk"]],
              [["CFG Scale: 5"], ["CFG Scale: 7.5 with extra words"]], 0)
    # Same with margins between cells, larger cells (a bigger font).
    grid_case("xy_margin", [(256, 192)] * 4, 2,
              [["Sampler: DPM++ 2M"], ["Euler a"]], [["Seed: 1234"], ["Seed: 5678"]], 12)
    # Only X labels: no left strip.
    grid_case("x_only", [(160, 128)] * 3, 1, [["Denoising: 0.3"], ["Denoising: 0.5"], ["Denoising: 0.75"]], [[""]], 0)
    # Only Y labels: no top strip.
    grid_case("y_only", [(160, 128)] * 2, 2, [[""]], [["Clip skip: 1"], ["Clip skip: 2"]], 0)
    # A word wider than its column: wrapped alone (leaving an empty first line) and shrunk.
    grid_case("shrink", [(90, 200)] * 2, 1,
              [["Checkpoint: realisticVisionV51"], ["VAE: kl-840000-ema-pruned"]], [[""]], 0)
    # Cells of different sizes, padded and centred, on a non-white background; no legend.
    grid_case("mixed", [(64, 48), (80, 40), (50, 60), (64, 64), (30, 30)], 2, None, None, 0, "#102030")

    # Prompt matrix: base + 3 parts -> 4 columns, 2 rows, inactive parts struck through.
    cells = [cell(rng, 150, 120) for _ in range(8)]
    grid = image_grid(cells, 2)
    prompts = ["a photo of a cat", "wearing a hat", "oil painting", "at night"]
    result, pads = draw_prompt_matrix(grid, 150, 120, prompts, margin=4)
    result.save(out / "matrix_expected.png")
    cases.append({"name": "matrix", "kind": "matrix", "cells": save_cells("matrix", cells), "rows": 2,
                  "prompts": prompts, "margin": 4, "cell_w": 150, "cell_h": 120, **pads})

    # Z sub-grids of two sizes side by side with titles.
    subs = [cell(rng, 300, 200), cell(rng, 260, 220)]
    result, pads = combine_z(subs, ["Checkpoint: tiny-a", "Checkpoint: tiny-b"])
    result.save(out / "z_expected.png")
    cases.append({"name": "z", "kind": "z", "cells": save_cells("z", subs), "labels": ["Checkpoint: tiny-a", "Checkpoint: tiny-b"],
                  "cell_w": 300, "cell_h": 220, **pads})

    # SD upscale's tiles: split and combine after changing every tile, so the fades matter.
    for name, (w, h, tw, th, ov) in {"tiles": (300, 220, 128, 96, 32), "tiles_one": (100, 90, 128, 96, 16)}.items():
        src = cell(rng, w, h)
        src.save(out / f"{name}_src.png")
        g = split_grid(src, tw, th, ov)
        tiles_out = []
        for ri, (y, _, row) in enumerate(g[0]):
            for ci, entry in enumerate(row):
                shifted = Image.fromarray(((np.asarray(entry[2]).astype(np.int32) * 3 + 17 * (ri + 2 * ci)) % 256).astype(np.uint8))
                entry[2] = shifted
                tiles_out.append([y, entry[0]])
        combine_grid(g).save(out / f"{name}_expected.png")
        cases.append({"name": name, "kind": "tiles", "tile_w": tw, "tile_h": th, "overlap": ov, "origins": tiles_out})

    (out / "cases.json").write_text(json.dumps(cases, indent=1))

    # Pillow's measurements of legend text, for the font module's own test.
    texts = ["Steps: 20", "CFG Scale: 7.5", "AVAVA To", "office fi fl", "Prompt S/R: a castle", "j", "-", "gyp", "Ä É ñ", ""]
    metrics = []
    for size in [6, 8, 11, 14, 17, 20, 23, 29, 40, 52]:
        f = get_font(size)
        d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        for t in texts:
            metrics.append({"size": size, "text": t, "length": d.textlength(t, font=f),
                            "bbox": list(d.textbbox((0, 0), t, font=f)), "metrics": list(f.getmetrics())})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
