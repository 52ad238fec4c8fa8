"""Where a job works: the selection clipped to the layer (GIMP's filter convention) or
growing the canvas, the context region inside it, the outpainting masks and Outpainting mk2's
canvas as the daemon grows it."""

from __future__ import annotations

import pytest

from sdhost_geometry import (Region, SelectionOutside, outpaint_canvas, transparency_mask,
                             work_area)


def test_a_selection_past_the_layers_edge_is_clipped_to_the_layer():
    # A 100x80 layer at (50, 40) in a bigger image; "Select All" on the image selects more.
    layer = Region(50, 40, 100, 80)
    area = work_area(layer, Region(0, 0, 400, 300))
    assert area.canvas == layer and area.selection == layer
    # A selection hanging over the right edge keeps only its part on the layer.
    area = work_area(layer, Region(120, 60, 60, 20))
    assert area.selection == Region(120, 60, 30, 20)
    # The context region (only masked) lies inside the layer, in image coordinates.
    region = area.context(True, 8, 64, 64)
    assert layer.intersect(region) == region
    assert region.x <= 120 and region.right >= 150 and region.y <= 60 and region.bottom >= 80
    # Whole picture: the layer, not the image.
    assert area.context(False, 8, 64, 64) == layer


def test_odd_offsets_and_negative_positions_are_kept():
    layer = Region(-13, 7, 61, 45)
    area = work_area(layer, Region(-20, 0, 30, 30))
    assert area.selection == Region(-13, 7, 23, 23)
    region = area.context(True, 4, 32, 32)
    assert layer.intersect(region) == region


def test_extend_canvas_grows_over_the_selection():
    layer = Region(50, 40, 100, 80)
    area = work_area(layer, Region(120, 60, 60, 20), extend_canvas=True)
    assert area.canvas == Region(50, 40, 130, 80)
    assert area.selection == Region(120, 60, 60, 20)
    region = area.context(True, 8, 64, 64)
    assert region.right > layer.right


def test_a_selection_off_the_layer_is_explained():
    with pytest.raises(SelectionOutside, match="does not touch the layer"):
        work_area(Region(0, 0, 10, 10), Region(20, 20, 5, 5))
    # With extend canvas it is outpainted instead.
    assert work_area(Region(0, 0, 10, 10), Region(20, 20, 5, 5), True).canvas == Region(0, 0, 25, 25)


def test_transparency_becomes_the_outpainting_mask():
    rgba = bytes([9, 9, 9, 255, 9, 9, 9, 0, 9, 9, 9, 128, 9, 9, 9, 0])
    assert transparency_mask(rgba) == bytes([0, 255, 127, 255])
    # Within the selection only.
    assert transparency_mask(rgba, bytes([255, 255, 255, 0])) == bytes([0, 255, 127, 0])


@pytest.mark.parametrize("size,pixels,sides,expected", [
    # 40 + 8 on the left rounds up to 64: the left side grows by 24 (as the daemon's test).
    ((40, 32), 8, ("left",), Region(-24, 0, 64, 32)),
    ((96, 64), 32, ("left", "right", "up", "down"), Region(-48, -32, 192, 128)),
    ((64, 64), 128, ("down",), Region(0, 0, 64, 192)),
])
def test_outpaint_canvas_is_where_outpainting_mk2_grows(size, pixels, sides, expected):
    layer = Region(0, 0, *size)
    flags = {side: side in sides for side in ("left", "right", "up", "down")}
    assert outpaint_canvas(layer, pixels, **flags) == expected
