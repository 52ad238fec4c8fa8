"""What each generating procedure sends and where its results go: a `PreparedJob` from the
image, the selection and the dialog's settings. img2img's five modes, txt2img, outpainting
(Outpainting mk2 by N pixels, or filling transparent and out-of-layer areas) and the X/Y/Z
plot. Reads pixels on GIMP's main thread; sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from gi.repository import Gimp

from gimp_layers import MASK, layer_region, read, read_visible, selection_region
from sdhost_bridge import Settings
from sdhost_client import Image
from sdhost_geometry import (
    Region, SelectionOutside, outpaint_canvas, transparency_mask, work_area,
)


class UserError(ValueError):
    """Something the user must change before the job can run (a CALLING_ERROR)."""


@dataclass
class PreparedJob:
    """A job ready to send: its request and where its results go."""

    kind: str  # the daemon request: img2img or txt2img
    header: dict[str, Any]
    attachments: list[tuple[str, Image]]
    # The image region the job's pictures stand for (results that are not patches are fitted
    # to it when `fit` is set), and where previews show.
    region: Region
    fit: bool = True
    group_name: Optional[str] = None
    # Grow the canvas to hold the results (outpainting past the image's edge).
    grow_canvas: bool = False
    prompt_for_names: str = ""
    notes: list[str] = field(default_factory=list)


def one_layer(drawables) -> Gimp.Layer:
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        raise UserError("select exactly one layer")
    return drawables[0]


def source_pixels(image: Gimp.Image, layer: Gimp.Layer, region: Region, use_visible: bool) -> Image:
    pixels = read_visible(image, region) if use_visible else read(layer, region)
    return Image(pixels, region.width, region.height)


def img2img(image: Gimp.Image, layer: Gimp.Layer, settings: Settings, config, names: set[str]) -> PreparedJob:
    """One of A1111's img2img tabs on the layer: the selection (clipped to the layer, or
    growing the canvas with "extend canvas") or a channel, a layer mask or a file as the mask."""
    get = config.get_property
    mode = settings.mode
    selection = None
    mask_drawable = None
    mask_png = None
    if mode in ("inpaint", "inpaint-sketch"):
        selection = selection_region(image)
        if mode == "inpaint" and selection is None:
            raise UserError("select the area to inpaint first")
        mask_drawable = image.get_selection() if selection is not None else None
    elif mode == "inpaint-upload":
        mask_drawable = get("mask-channel") or layer.get_mask()
        mask_file = get("mask-file") or None
        if mask_drawable is None and mask_file is None:
            raise UserError("give a mask channel, a layer mask or a mask file")
        if mask_file is not None:
            mask_drawable = None
            try:
                with open(mask_file, "rb") as f:
                    mask_png = f.read()
            except OSError as error:
                raise UserError(f"cannot read the mask file: {error}") from error
    sketch = get("sketch-layer") if mode in ("sketch", "inpaint-sketch") else None
    if mode in ("sketch", "inpaint-sketch") and sketch is None:
        raise UserError("choose the sketch layer")
    try:
        area = work_area(layer_region(layer), selection,
                         "extend-canvas" in names and bool(get("extend-canvas")))
    except SelectionOutside as error:
        raise UserError(str(error)) from error
    width, height = settings.generation_size(area.canvas)
    region = area.context(settings.inpaint_full_res and area.selection is not None,
                          settings.inpaint_full_res_padding, width, height, settings.min_context)
    attachments = [("image", source_pixels(image, layer, region, bool(get("use-visible"))))]
    if mask_drawable is not None:
        attachments.append(("mask", Image(read(mask_drawable, region, MASK), region.width, region.height, "y8")))
    elif mask_png is not None:
        attachments.append(("mask", Image(mask_png, format="png")))
    if sketch is not None:
        attachments.append(("sketch", Image(read(sketch, region), region.width, region.height)))
    header = {"mode": mode, "params": settings.params(region)}
    return PreparedJob("img2img", header, attachments, region, prompt_for_names=settings.prompt)


def txt2img(image: Gimp.Image, settings: Settings, config) -> PreparedJob:
    """A new picture for the selection's bounds, or the whole image: at that size unless a
    size is set (or Hires. fix enlarges it), then it keeps its own."""
    selection = selection_region(image)
    whole = Region(0, 0, image.get_width(), image.get_height())
    area = selection.intersect(whole) if selection is not None else whole
    params = settings.params(area)
    enable_hr = bool(config.get_property("enable-hr"))
    params.update(enable_hr=enable_hr, hr_scale=config.get_property("hr-scale"),
                  hr_second_pass_steps=config.get_property("hr-steps"))
    for img2img_only in ("resize_mode", "inpaint_full_res", "inpaint_full_res_padding",
                         "inpainting_fill", "inpainting_mask_invert", "mask_blur", "mask_alpha"):
        params.pop(img2img_only, None)
    if not enable_hr:
        params.pop("denoising_strength", None)
    automatic = settings.width <= 0 or settings.height <= 0
    return PreparedJob("txt2img", {"params": params}, [], area or whole,
                       fit=automatic and not enable_hr, prompt_for_names=settings.prompt)


def outpaint(image: Gimp.Image, layer: Gimp.Layer, settings: Settings, config) -> PreparedJob:
    """Outpainting: with `pixels` > 0, A1111's Outpainting mk2 grows the layer's picture
    towards the chosen sides (the canvas grows to hold it); with 0, the transparent parts of
    the layer and the selected parts outside it are the mask and are filled."""
    get = config.get_property
    layer_r = layer_region(layer)
    pixels = int(get("pixels"))
    if pixels > 0:
        sides = {side: bool(get(side)) for side in ("left", "right", "up", "down")}
        if not any(sides.values()):
            raise UserError("choose at least one side to outpaint towards")
        grown = outpaint_canvas(layer_r, pixels, **sides)
        script_args = [None, pixels, settings.mask_blur, [s for s, on in sides.items() if on],
                       float(get("noise-q")), float(get("color-variation"))]
        params = settings.params(layer_r)
        header = {"mode": "img2img", "params": params, "script_name": "Outpainting mk2",
                  "script_args": script_args}
        attachments = [("image", source_pixels(image, layer, layer_r, bool(get("use-visible"))))]
        return PreparedJob("img2img", header, attachments, grown, fit=False, grow_canvas=True,
                           prompt_for_names=settings.prompt)
    selection = selection_region(image)
    area = work_area(layer_r, selection, extend_canvas=True)
    settings.mode = "inpaint"
    width, height = settings.generation_size(area.canvas)
    only_masked = settings.inpaint_full_res and area.selection is not None
    region = area.context(only_masked, settings.inpaint_full_res_padding, width, height, settings.min_context)
    rgba = read(layer, region)
    chosen = read(image.get_selection(), region, MASK) if selection is not None else None
    mask = transparency_mask(rgba, chosen)
    if not any(mask):
        raise UserError("nothing to outpaint: the layer has no transparent area"
                        + (" in the selection" if selection is not None else "")
                        + " (set Pixels to grow it)")
    header = {"mode": "inpaint", "params": settings.params(region)}
    attachments = [("image", Image(rgba, region.width, region.height)),
                   ("mask", Image(mask, region.width, region.height, "y8"))]
    return PreparedJob("img2img", header, attachments, region, prompt_for_names=settings.prompt)


def xyz_plot(image: Gimp.Image, layer: Gimp.Layer, settings: Settings, config) -> PreparedJob:
    """A1111's X/Y/Z plot over img2img of the layer: every cell a layer named by its axis
    values, and the grid, in a group named by the axes."""
    get = config.get_property
    from sdhost_bridge import XYZ_AXES, from_slug

    axes = []
    for axis in ("x", "y", "z"):
        label = from_slug(get(f"{axis}-type"), XYZ_AXES)
        values = get(f"{axis}-values") or ""
        if label != "Nothing" and not values.strip():
            raise UserError(f"give the {axis.upper()} values for {label}")
        axes.append((label, values))
    if all(label == "Nothing" for label, _ in axes):
        raise UserError("choose at least one axis")
    region = layer_region(layer)
    script_args: list[Any] = []
    for label, values in axes:
        script_args += [label, values, []]
    # Text values for every axis (csv_mode), since the plug-in has no per-axis dropdowns.
    script_args += [bool(get("draw-legend")), False, False, False, False, False, False, 0, True]
    header = {"mode": "img2img", "params": settings.params(region), "script_name": "X/Y/Z plot",
              "script_args": script_args}
    attachments = [("image", source_pixels(image, layer, region, bool(get("use-visible"))))]
    shown = " × ".join(f"{label}: {values}" for label, values in axes if label != "Nothing")
    return PreparedJob("img2img", header, attachments, region, group_name=f"sdhost X/Y/Z plot: {shown}",
                       prompt_for_names=settings.prompt)
