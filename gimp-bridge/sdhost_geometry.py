"""Where a job works in the image: the canvas (the active layer, or the layer grown over the
selection with "extend canvas"), the selection clipped to it, the context region sent to the
daemon, and the outpainting mask of transparent or out-of-layer pixels. Image coordinates
throughout (GIMP's layer offsets are image coordinates, inside groups too); standard library
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Region:
    """A rectangle of the image, in image pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def intersect(self, other: "Region") -> Optional["Region"]:
        """The common part, or None when they do not overlap."""
        x1, y1 = max(self.x, other.x), max(self.y, other.y)
        x2, y2 = min(self.right, other.right), min(self.bottom, other.bottom)
        return Region(x1, y1, x2 - x1, y2 - y1) if x2 > x1 and y2 > y1 else None

    def union(self, other: "Region") -> "Region":
        """The smallest rectangle holding both."""
        x1, y1 = min(self.x, other.x), min(self.y, other.y)
        return Region(x1, y1, max(self.right, other.right) - x1, max(self.bottom, other.bottom) - y1)

    def shifted(self, dx: int, dy: int) -> "Region":
        return Region(self.x + dx, self.y + dy, self.width, self.height)

    def bounds(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2), x2 and y2 exclusive."""
        return self.x, self.y, self.right, self.bottom


def expand_to_aspect(x1: int, y1: int, x2: int, y2: int, width: int, height: int,
                     image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """A1111's `expand_crop_region`: grow the box to width:height, shifted back inside."""
    ratio_box, ratio = (x2 - x1) / (y2 - y1), width / height
    if ratio_box > ratio:
        diff = int((x2 - x1) / ratio - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_h:
            y1, y2 = y1 - (y2 - image_h), image_h
        if y1 < 0:
            y2, y1 = y2 - y1, 0
        y2 = min(y2, image_h)
    else:
        diff = int((y2 - y1) * ratio - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_w:
            x1, x2 = x1 - (x2 - image_w), image_w
        if x1 < 0:
            x2, x1 = x2 - x1, 0
        x2 = min(x2, image_w)
    return x1, y1, x2, y2


def context_region(image_w: int, image_h: int, bounds: Optional[tuple[int, int, int, int]],
                   only_masked: bool, padding: int, width: int, height: int,
                   min_context: int = 0) -> Region:
    """The part of a picture of image_w x image_h to read and send: all of it, or for "Only
    masked" the selection's bounds (x1, y1, x2, y2, exclusive) padded, grown to `min_context`
    and to the generation size's aspect ratio, as the daemon would crop it (so nothing outside
    is read)."""
    if not only_masked or bounds is None:
        return Region(0, 0, image_w, image_h)
    x1, y1, x2, y2 = bounds
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, image_w), min(y2 + padding, image_h)
    for axis in ("x", "y"):
        lo, hi, limit = (x1, x2, image_w) if axis == "x" else (y1, y2, image_h)
        missing = min(min_context, limit) - (hi - lo)
        if missing > 0:
            lo -= missing // 2
            hi += missing - missing // 2
            if lo < 0:
                hi, lo = hi - lo, 0
            if hi > limit:
                lo, hi = max(lo - (hi - limit), 0), limit
        if axis == "x":
            x1, x2 = lo, hi
        else:
            y1, y2 = lo, hi
    x1, y1, x2, y2 = expand_to_aspect(x1, y1, x2, y2, width, height, image_w, image_h)
    return Region(x1, y1, x2 - x1, y2 - y1)


class SelectionOutside(ValueError):
    """The selection does not touch the layer."""


@dataclass(frozen=True)
class WorkArea:
    """What a job sees as its picture (`canvas`) and its selection inside it (`selection`,
    None: no selection), both in image coordinates."""

    canvas: Region
    selection: Optional[Region]

    def context(self, only_masked: bool, padding: int, width: int, height: int,
                min_context: int = 0) -> Region:
        """The region to read and send (image coordinates), inside the canvas."""
        local = None
        if self.selection is not None:
            local = self.selection.shifted(-self.canvas.x, -self.canvas.y).bounds()
        region = context_region(self.canvas.width, self.canvas.height, local, only_masked,
                                padding, width, height, min_context)
        return region.shifted(self.canvas.x, self.canvas.y)


def work_area(layer: Region, selection: Optional[Region], extend_canvas: bool = False) -> WorkArea:
    """GIMP's convention for filters: the job works on the active layer, and a selection that
    reaches past the layer's edges is clipped to it. With `extend_canvas` the canvas grows over
    the selection instead: the pixels outside the layer are transparent and, being selected,
    are generated (outpainting). Raises SelectionOutside when the selection misses the layer
    (and the canvas is not extended)."""
    if selection is None or selection.is_empty():
        return WorkArea(layer, None)
    canvas = layer.union(selection) if extend_canvas else layer
    clipped = selection.intersect(canvas)
    if clipped is None:
        raise SelectionOutside("the selection does not touch the layer: select part of the "
                               "layer, or turn on \"extend canvas\" to outpaint around it")
    return WorkArea(canvas, clipped)


# 255 - alpha: a transparent pixel is to be generated, a half-transparent one half.
_INVERT = bytes(255 - v for v in range(256))


def transparency_mask(rgba: bytes, selection: Optional[bytes] = None) -> bytes:
    """The outpainting mask (Y8, white = generate) of an RGBA8 picture: its transparency, within
    the selection's values (Y8 of the same size) when one is given."""
    mask = rgba[3::4].translate(_INVERT)
    if selection is None:
        return mask
    return bytes(m * s // 255 for m, s in zip(mask, selection))


def outpaint_canvas(layer: Region, pixels: int, left: bool, right: bool, up: bool,
                    down: bool) -> Region:
    """Where Outpainting mk2's picture of `layer` grown by `pixels` towards the chosen sides
    goes: as A1111's script grows it, each grown axis rounded up to a multiple of 64 and the
    extra shared between its two sides in proportion (host/src/scripts/outpainting.rs,
    `Expansion`)."""

    def grow(lo_on: bool, hi_on: bool, size: int) -> tuple[int, int]:
        lo, hi = (pixels if lo_on else 0), (pixels if hi_on else 0)
        target = -(-(size + lo + hi) // 64) * 64
        if lo:
            lo = lo * (target - size) // (lo + hi)
        if hi:
            hi = target - size - lo
        return lo, hi

    grow_left, grow_right = grow(left, right, layer.width)
    grow_up, grow_down = grow(up, down, layer.height)
    return Region(layer.x - grow_left, layer.y - grow_up, layer.width + grow_left + grow_right,
                  layer.height + grow_up + grow_down)
