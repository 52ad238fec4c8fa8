"""The GIMP side of pixels: reading a layer, the selection or a channel as bytes (any
precision, linear or perceptual, RGB, grayscale or indexed: babl converts), writing results as
layers placed where they belong, and the live preview layer. Runs on GIMP's main thread.
"""

from __future__ import annotations

from typing import Optional

from gi.repository import Gegl, Gimp

from sdhost_bridge import Placement, parasite_payload
from sdhost_client import Image
from sdhost_geometry import Region

RGBA = "R'G'B'A u8"  # 8-bit, sRGB curve, straight alpha
MASK = "Y u8"  # the selection's own (linear) values: feathering as drawn
INFOTEXT_PARASITE = "sdhost/infotext"
PREVIEW_NAME = "sdhost: preview"


def layer_region(drawable: Gimp.Drawable) -> Region:
    """Where a drawable lies in the image (offsets are image coordinates, inside groups too)."""
    _, x, y = drawable.get_offsets()
    return Region(x, y, drawable.get_width(), drawable.get_height())


def selection_region(image: Gimp.Image) -> Optional[Region]:
    """The selection's bounds (feather included), or None when nothing is selected."""
    _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    return Region(x1, y1, x2 - x1, y2 - y1) if non_empty else None


def read(drawable: Gimp.Drawable, region: Region, fmt: str = RGBA) -> bytes:
    """A drawable's pixels in an image-coordinate region, converted to `fmt` (transparent or
    black outside the drawable)."""
    _, ox, oy = drawable.get_offsets()
    rect = Gegl.Rectangle.new(region.x - ox, region.y - oy, region.width, region.height)
    return bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.NONE))


def read_visible(image: Gimp.Image, region: Region) -> bytes:
    """The composite of the visible layers, through a temporary layer undo never sees."""
    image.undo_freeze()
    try:
        visible = Gimp.Layer.new_from_visible(image, image, "sdhost visible")
        image.insert_layer(visible, None, 0)
        pixels = read(visible, region)
        image.remove_layer(visible)
    finally:
        image.undo_thaw()
    return pixels


def layer_type(image: Gimp.Image) -> Gimp.ImageType:
    """The type with alpha a new layer of this image needs (its base type: RGB, gray or
    indexed; the precision is the image's)."""
    base = image.get_base_type()
    if base == Gimp.ImageBaseType.GRAY:
        return Gimp.ImageType.GRAYA_IMAGE
    if base == Gimp.ImageBaseType.INDEXED:
        return Gimp.ImageType.INDEXEDA_IMAGE
    return Gimp.ImageType.RGBA_IMAGE


def fill(layer: Gimp.Layer, rgba: bytes, width: int, height: int) -> None:
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, width, height), RGBA, rgba)
    buffer.flush()
    layer.update(0, 0, width, height)


def insert_results(image: Gimp.Image, placed: list[Placement], fit: Optional[Region],
                   parent: Optional[Gimp.Layer], position: int,
                   group_name: Optional[str] = None) -> list[Gimp.Layer]:
    """The results as layers at `position` in `parent` (directly above the source layer):
    one layer, or a group of them when there are several (or `group_name` is given). A result
    generated at another size than the region it stands for (`fit`) is scaled to it; patches
    and grids keep their own size. Each layer carries its infotext as a persistent parasite."""
    target = parent
    layers = []
    if len(placed) > 1 or group_name:
        group = Gimp.GroupLayer.new(image, group_name or f"sdhost: {len(placed)} results")
        image.insert_layer(group, parent, position)
        target, position = group, 0
    for item in placed:
        out = Gimp.Layer.new(image, item.name, item.width, item.height, layer_type(image), 100.0,
                             Gimp.LayerMode.NORMAL)
        image.insert_layer(out, target, position)
        position += 1
        fill(out, item.rgba, item.width, item.height)
        out.set_offsets(item.x, item.y)
        if (fit is not None and not item.patch and not item.grid
                and (item.width, item.height) != (fit.width, fit.height)):
            out.scale(fit.width, fit.height, False)
            out.set_offsets(fit.x, fit.y)
        out.attach_parasite(Gimp.Parasite.new(INFOTEXT_PARASITE, Gimp.PARASITE_PERSISTENT,
                                              parasite_payload(item.infotext)))
        layers.append(out)
    return layers


class PreviewLayer:
    """The live preview: one layer over the region being generated, replaced in place at each
    preview, outside the undo history, removed at the end."""

    def __init__(self, image: Gimp.Image, parent: Optional[Gimp.Layer], position: int,
                 region: Region) -> None:
        self.image = image
        self.parent = parent
        self.position = position
        self.region = region
        self.layer: Optional[Gimp.Layer] = None
        self.shown = 0

    def show(self, picture: Image) -> None:
        """Shows a preview (RGBA8 at any size: Approx cheap's is the latent's), scaled over
        the region."""
        self.image.undo_freeze()
        try:
            self._drop()
            layer = Gimp.Layer.new(self.image, PREVIEW_NAME, picture.width, picture.height,
                                   layer_type(self.image), 100.0, Gimp.LayerMode.NORMAL)
            self.image.insert_layer(layer, self.parent, self.position)
            fill(layer, picture.data, picture.width, picture.height)
            if (picture.width, picture.height) != (self.region.width, self.region.height):
                layer.scale(self.region.width, self.region.height, False)
            layer.set_offsets(self.region.x, self.region.y)
            self.layer = layer
            self.shown += 1
        finally:
            self.image.undo_thaw()
        Gimp.displays_flush()

    def _drop(self) -> None:
        if self.layer is not None and self.layer.is_valid():
            self.image.remove_layer(self.layer)
        self.layer = None

    def remove(self) -> None:
        """Takes the preview away (the results replace it)."""
        if self.layer is None:
            return
        self.image.undo_freeze()
        try:
            self._drop()
        finally:
            self.image.undo_thaw()
        Gimp.displays_flush()


def grow_canvas(image: Gimp.Image, needed: Region) -> tuple[int, int]:
    """Grows the image's canvas to hold `needed` (image coordinates); returns how far the
    existing content moved (right, down)."""
    canvas = Region(0, 0, image.get_width(), image.get_height()).union(needed)
    if (canvas.width, canvas.height) == (image.get_width(), image.get_height()):
        return 0, 0
    dx, dy = -canvas.x, -canvas.y
    image.resize(canvas.width, canvas.height, dx, dy)
    return dx, dy
