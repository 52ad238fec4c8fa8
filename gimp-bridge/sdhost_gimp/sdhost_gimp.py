#!/usr/bin/env python3
"""sdhost for GIMP 3: A1111's img2img tab (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint
with an external mask) on the current layer, the selection as the mask, results as new layers
placed where they belong. Talks to the sdhost daemon (`sdhost serve`) over its local socket.

Install: `gimp-bridge/install.sh` (copies this folder and sdhost_client.py, sdhost_bridge.py
into GIMP's plug-in folder).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject  # noqa: E402

from sdhost_bridge import (  # noqa: E402
    CURRENT_MODEL, Choices, JobRunner, Region, Settings, context_region, fetch_choices, from_slug,
    parasite_payload, parasite_text, placements, reuse_request, slug, start_daemon,
)
from sdhost_client import Client, DaemonError, Image, default_socket  # noqa: E402

PARASITE = "sdhost/infotext"
# The dialog's lists, from the daemon on its default socket when it runs (else A1111's), asked
# each time GIMP creates the procedures. $SDHOST_SOCKET names another socket.
CHOICES = fetch_choices(os.environ.get("SDHOST_SOCKET") or default_socket())
RGBA = "R'G'B'A u8"  # 8-bit, sRGB curve, straight alpha
MASK = "Y u8"  # the selection's own (linear) values: feathering as drawn

# procedure name → (mode, menu label, blurb)
PROCEDURES = {
    "sdhost-img2img": ("img2img", "_img2img…", "Regenerate the layer from a prompt"),
    "sdhost-sketch": ("sketch", "_Sketch…", "img2img of the layer with a sketch layer painted over it"),
    "sdhost-inpaint": ("inpaint", "_Inpaint selection…", "Regenerate the selection (the selection is the mask)"),
    "sdhost-inpaint-sketch": ("inpaint-sketch", "Inpaint s_ketch…",
                              "Regenerate where a sketch layer paints over the layer"),
    "sdhost-inpaint-mask": ("inpaint-upload", "Inpaint with a _mask…",
                            "Inpaint with a layer mask, a channel or a mask file"),
}
INFO_PROCEDURE = "sdhost-layer-info"
INTERROGATE_PROCEDURE = "sdhost-interrogate"
# The interrogated prompt: on the layer for good, and on the image until the next sdhost dialog
# opens with it as its prompt.
INTERROGATION_PARASITE = "sdhost/interrogation"
PROMPT_PARASITE = "sdhost/prompt"
INTERROGATE_METHODS = ("clip", "deepbooru")


def choice(names, first=None) -> Gimp.Choice:
    """A dialog list of names (identifiers from `slug`)."""
    options = Gimp.Choice.new()
    entries = ([first] if first else []) + list(names)
    for index, name in enumerate(entries):
        options.add(slug(name), index, name, "")
    return options


def add_arguments(p: Gimp.Procedure, mode: str, choices: Choices) -> None:
    rw = GObject.ParamFlags.READWRITE
    p.add_string_argument("prompt", "_Prompt", "Prompt (A1111 syntax)", "", rw)
    p.add_string_argument("negative-prompt", "_Negative prompt", "Negative prompt", "", rw)
    p.add_choice_argument("model", "M_odel", "Checkpoint (current: the daemon's loaded one)",
                          choice(choices.models, CURRENT_MODEL), CURRENT_MODEL, rw)
    # Defaults are the daemon's (its request fields), A1111's tab when it does not answer.
    d = choices.default
    sampler = d("sampler_name") if d("sampler_name") in choices.samplers else choices.samplers[0]
    p.add_choice_argument("sampler", "Sa_mpler", "Sampler", choice(choices.samplers), slug(sampler), rw)
    p.add_choice_argument("scheduler", "Sc_hedule type", "Schedule type", choice(choices.schedules),
                          slug(d("scheduler")), rw)
    p.add_int_argument("steps", "S_teps", "Sampling steps", 1, 150, d("steps"), rw)
    p.add_double_argument("cfg-scale", "C_FG scale", "Classifier-free guidance", 1.0, 30.0, d("cfg_scale"), rw)
    p.add_double_argument("denoising-strength", "_Denoising strength", "0 keeps the image, 1 replaces it",
                          0.0, 1.0, d("denoising_strength"), rw)
    p.add_int_argument("seed", "S_eed", "-1: random", -1, 2**31 - 1, d("seed"), rw)
    p.add_int_argument("batch-count", "Batch _count", "Batches run one after another", 1, 16, d("n_iter"), rw)
    p.add_int_argument("batch-size", "Batch si_ze", "Images per batch", 1, 8, d("batch_size"), rw)
    p.add_int_argument("width", "_Width", "Generation width (0: automatic)", 0, 4096, 0, rw)
    p.add_int_argument("height", "H_eight", "Generation height (0: automatic)", 0, 4096, 0, rw)
    p.add_int_argument("resize-mode", "_Resize mode",
                       "0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale", 0, 3,
                       d("resize_mode"), rw)
    p.add_int_argument("clip-skip", "Clip s_kip", "CLIP layers to skip", 1, 12, d("clip_skip"), rw)
    p.add_boolean_argument("use-visible", "Use the _visible image",
                           "Start from what is visible instead of the current layer", False, rw)
    p.add_layer_argument("parameters-from", "Reuse _parameters of",
                         "A result layer whose prompt and parameters to use (none: the fields above)", True, rw)
    if mode in ("sketch", "inpaint-sketch"):
        p.add_layer_argument("sketch-layer", "Sketch _layer", "The layer painted over the image", False, rw)
    if mode in ("inpaint", "inpaint-sketch", "inpaint-upload"):
        p.add_int_argument("mask-blur", "Mask _blur", "Pixels", 0, 64, d("mask_blur_x"), rw)
        p.add_boolean_argument("invert-mask", "Inpaint _not masked", "Regenerate outside the mask",
                               d("inpainting_mask_invert"), rw)
        p.add_int_argument("masked-content", "Masked _content",
                           "0 fill, 1 original, 2 latent noise, 3 latent nothing", 0, 3, d("inpainting_fill"), rw)
        p.add_boolean_argument("only-masked", "Only _masked",
                               "Generate the masked region at full resolution", True, rw)
        p.add_int_argument("padding", "Only masked _padding", "Pixels around the mask", 0, 256,
                           d("inpaint_full_res_padding"), rw)
        p.add_int_argument("min-context", "Minimum conte_xt", "Grow small regions to this size (0: off)",
                           0, 2048, 0, rw)
    if mode == "inpaint-sketch":
        p.add_double_argument("mask-alpha", "Mask _transparency", "0-100", 0.0, 100.0, 0.0, rw)
    if mode == "inpaint-upload":
        p.add_channel_argument("mask-channel", "Mask c_hannel",
                               "A channel as the mask (none: the layer's mask)", True, rw)
        p.add_string_argument("mask-file", "Mask _file", "An image file as the mask (white = regenerate)", "", rw)
    p.add_string_argument("socket", "Daemon so_cket", "The daemon's socket (empty: its default)", "", rw)
    p.add_boolean_argument("start-daemon", "Start the daemon if needed",
                           "Start `sdhost serve` (detached) when no daemon answers", False, rw)
    p.add_string_argument("daemon-command", "Daemon command", "The sdhost program to start", "sdhost", rw)
    p.add_int_argument("time-limit", "Time _limit", "Cancel after this many seconds (0: none)", 0, 86400, 0, rw)


def settings_from(config: Gimp.ProcedureConfig, mode: str, choices: Choices) -> Settings:
    get = config.get_property
    names = {prop.name for prop in config.list_properties()}
    settings = Settings(
        mode=mode, prompt=get("prompt"), negative_prompt=get("negative-prompt"),
        sampler_name=from_slug(get("sampler"), choices.samplers),
        scheduler=from_slug(get("scheduler"), choices.schedules), steps=get("steps"),
        cfg_scale=get("cfg-scale"), denoising_strength=get("denoising-strength"), seed=get("seed"),
        n_iter=get("batch-count"), batch_size=get("batch-size"), width=get("width"),
        height=get("height"), resize_mode=get("resize-mode"), clip_skip=get("clip-skip"),
    )
    if "mask-blur" in names:
        settings.mask_blur = get("mask-blur")
        settings.inpainting_mask_invert = get("invert-mask")
        settings.inpainting_fill = get("masked-content")
        settings.inpaint_full_res = get("only-masked")
        settings.inpaint_full_res_padding = get("padding")
        settings.min_context = get("min-context")
    if "mask-alpha" in names:
        settings.mask_alpha = get("mask-alpha")
    return settings


def read_rgba(drawable: Gimp.Drawable, region: Region) -> bytes:
    """The drawable's pixels in an image-coordinate region (transparent outside it)."""
    _, ox, oy = drawable.get_offsets()
    rect = Gegl.Rectangle.new(region.x - ox, region.y - oy, region.width, region.height)
    return bytes(drawable.get_buffer().get(rect, 1.0, RGBA, Gegl.AbyssPolicy.NONE))


def read_mask(drawable: Gimp.Drawable, region: Region) -> bytes:
    _, ox, oy = drawable.get_offsets()
    rect = Gegl.Rectangle.new(region.x - ox, region.y - oy, region.width, region.height)
    return bytes(drawable.get_buffer().get(rect, 1.0, MASK, Gegl.AbyssPolicy.NONE))


def show_dialog(procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, title: str) -> bool:
    """The procedure's dialog over its arguments; False when the user cancels."""
    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    dialog.fill(None)
    ok = dialog.run()
    dialog.destroy()
    return bool(ok)


def fail(procedure: Gimp.Procedure, message: str,
         status: Gimp.PDBStatusType = Gimp.PDBStatusType.EXECUTION_ERROR):
    return procedure.new_return_values(status, GLib.Error(message))


def run(procedure, run_mode, image, drawables, config, data):
    name = procedure.get_name()
    mode = PROCEDURES[name][0]
    if run_mode == Gimp.RunMode.INTERACTIVE:
        handed = image.get_parasite(PROMPT_PARASITE)
        if handed is not None:
            # "Interrogate" ran since the last dialog: its prompt becomes this dialog's.
            config.set_property("prompt", parasite_text(handed.get_data()))
            image.detach_parasite(PROMPT_PARASITE)
        if not show_dialog(procedure, config, PROCEDURES[name][1].replace("_", "").rstrip("…")):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        return fail(procedure, "select exactly one layer", Gimp.PDBStatusType.CALLING_ERROR)
    layer = drawables[0]
    settings = settings_from(config, mode, CHOICES)
    socket_path = config.get_property("socket") or default_socket()
    if config.get_property("start-daemon"):
        try:
            Client.connect_unix(socket_path, timeout=5).close()
        except OSError:
            try:
                Gimp.progress_init("sdhost: starting the daemon…")
                start_daemon(config.get_property("daemon-command"), socket_path)
            except OSError as error:
                return fail(procedure, str(error))
    source = config.get_property("parameters-from")
    if source is not None:
        parasite = source.get_parasite(PARASITE)
        if parasite is None:
            return fail(procedure, f"layer \"{source.get_name()}\" has no sdhost parameters",
                        Gimp.PDBStatusType.CALLING_ERROR)
        # The daemon reads the infotext as it reads its own (one parser, in the daemon).
        try:
            with Client.connect_unix(socket_path, timeout=10) as client:
                reuse_request(settings, client.read_infotext(parasite_text(parasite.get_data())))
        except (OSError, DaemonError) as error:
            return fail(procedure, f"cannot read the layer's parameters: {error}")
    image_w, image_h = image.get_width(), image.get_height()

    # The mask source decides the region: the selection, a channel, a layer mask or a file.
    bounds = None
    mask_drawable = None
    mask_file = None
    if mode in ("inpaint", "inpaint-sketch"):
        _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
        if mode == "inpaint" and not non_empty:
            return fail(procedure, "select the area to inpaint first", Gimp.PDBStatusType.CALLING_ERROR)
        if non_empty:
            bounds = (x1, y1, x2, y2)
            mask_drawable = image.get_selection()
    elif mode == "inpaint-upload":
        mask_drawable = config.get_property("mask-channel") or layer.get_mask()
        mask_file = config.get_property("mask-file") or None
        if mask_drawable is None and mask_file is None:
            return fail(procedure, "give a mask channel, a layer mask or a mask file",
                        Gimp.PDBStatusType.CALLING_ERROR)
        if mask_file is not None:
            mask_drawable = None
    sketch = config.get_property("sketch-layer") if mode in ("sketch", "inpaint-sketch") else None
    if mode in ("sketch", "inpaint-sketch") and sketch is None:
        return fail(procedure, "choose the sketch layer", Gimp.PDBStatusType.CALLING_ERROR)

    width, height = settings.generation_size(Region(0, 0, image_w, image_h))
    region = context_region(image_w, image_h, bounds, settings.inpaint_full_res and bounds is not None,
                            settings.inpaint_full_res_padding, width, height, settings.min_context)
    if config.get_property("use-visible"):
        # The composite of the visible layers, through a temporary layer undo never sees.
        image.undo_freeze()
        visible = Gimp.Layer.new_from_visible(image, image, "sdhost visible")
        image.insert_layer(visible, None, 0)
        pixels = read_rgba(visible, region)
        image.remove_layer(visible)
        image.undo_thaw()
    else:
        pixels = read_rgba(layer, region)
    attachments = [("image", Image(pixels, region.width, region.height))]
    if mask_drawable is not None:
        attachments.append(("mask", Image(read_mask(mask_drawable, region), region.width, region.height, "y8")))
    elif mask_file is not None:
        try:
            with open(mask_file, "rb") as f:
                attachments.append(("mask", Image(f.read(), format="png")))
        except OSError as error:
            return fail(procedure, f"cannot read the mask file: {error}", Gimp.PDBStatusType.CALLING_ERROR)
    if sketch is not None:
        attachments.append(("sketch", Image(read_rgba(sketch, region), region.width, region.height)))
    params = settings.params(region)
    header = {"mode": mode, "params": params}

    model = from_slug(config.get_property("model"), CHOICES.models)
    runner = JobRunner(lambda: Client.connect_unix(socket_path), header, attachments,
                       None if model == CURRENT_MODEL else model)
    Gimp.progress_init("sdhost: generating…")
    limit = config.get_property("time-limit")
    started = time.monotonic()

    def progress(fraction: float, text: str) -> None:
        Gimp.progress_set_text(f"sdhost: {text}")
        Gimp.progress_update(fraction)

    outcome = runner.wait(progress, (lambda: time.monotonic() - started > limit) if limit else None)
    Gimp.progress_end()
    if outcome.status == "error":
        return fail(procedure, outcome.error or "the daemon failed")
    if outcome.status == "cancelled" and not outcome.results:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    image.undo_group_start()
    try:
        parent, position = layer.get_parent(), image.get_item_position(layer)
        placed = placements(outcome.results, region, settings.prompt)
        target = parent
        if len(placed) > 1:
            group = Gimp.GroupLayer.new(image, f"sdhost: {len(placed)} results")
            image.insert_layer(group, parent, position)
            target, position = group, 0
        for item in placed:
            out = Gimp.Layer.new(image, item.name, item.width, item.height, Gimp.ImageType.RGBA_IMAGE,
                                 100.0, Gimp.LayerMode.NORMAL)
            image.insert_layer(out, target, position)
            buffer = out.get_buffer()
            buffer.set(Gegl.Rectangle.new(0, 0, item.width, item.height), RGBA, item.rgba)
            buffer.flush()
            out.set_offsets(item.x, item.y)
            out.update(0, 0, item.width, item.height)
            if not item.patch and (item.width, item.height) != (region.width, region.height):
                # Generated at another size than the region it replaces: fit it there.
                out.scale(region.width, region.height, False)
                out.set_offsets(region.x, region.y)
            out.attach_parasite(Gimp.Parasite.new(PARASITE, Gimp.PARASITE_PERSISTENT,
                                                  parasite_payload(item.infotext)))
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def run_interrogate(procedure, run_mode, image, drawables, config, data):
    """A prompt from the layer, as A1111's "Interrogate CLIP" / "Interrogate DeepBooru" write it:
    returned, kept on the layer (parasite) and handed to the next sdhost dialog as its prompt."""
    if run_mode == Gimp.RunMode.INTERACTIVE and not show_dialog(procedure, config, "Interrogate"):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        return fail(procedure, "select exactly one layer", Gimp.PDBStatusType.CALLING_ERROR)
    layer = drawables[0]
    method = from_slug(config.get_property("method"), INTERROGATE_METHODS)
    socket_path = config.get_property("socket") or default_socket()
    region = Region(0, 0, layer.get_width(), layer.get_height())
    picture = Image(read_rgba(layer, region), region.width, region.height)
    Gimp.progress_init(f"sdhost: interrogating ({method})…")
    try:
        with Client.connect_unix(socket_path) as client:
            caption = client.interrogate(picture, method)
    except OSError as error:
        return fail(procedure, f"cannot reach the sdhost daemon at {socket_path}: {error}")
    except DaemonError as error:
        return fail(procedure, f"interrogation failed: {error}")
    finally:
        Gimp.progress_end()
    data = parasite_payload(caption)
    layer.attach_parasite(Gimp.Parasite.new(INTERROGATION_PARASITE, Gimp.PARASITE_PERSISTENT, data))
    image.attach_parasite(Gimp.Parasite.new(PROMPT_PARASITE, 0, data))
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message(f"Prompt for the next sdhost dialog:\n{caption}")
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    values.remove(1)
    values.insert(1, GObject.Value(GObject.TYPE_STRING, caption))
    return values


def run_info(procedure, run_mode, image, drawables, config, data):
    """Shows (and returns) the infotext a result layer carries."""
    if len(drawables) != 1:
        return fail(procedure, "select one layer", Gimp.PDBStatusType.CALLING_ERROR)
    parasite = drawables[0].get_parasite(PARASITE)
    if parasite is None:
        return fail(procedure, "this layer has no sdhost parameters", Gimp.PDBStatusType.CALLING_ERROR)
    text = parasite_text(parasite.get_data())
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message(text)
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    values.remove(1)
    values.insert(1, GObject.Value(GObject.TYPE_STRING, text))
    return values


class SdHost(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False

    def do_query_procedures(self):
        return list(PROCEDURES) + [INFO_PROCEDURE, INTERROGATE_PROCEDURE]

    def do_create_procedure(self, name):
        if name == INFO_PROCEDURE:
            p = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_info, None)
            p.set_menu_label("sdhost: _Parameters of this layer")
            p.add_menu_path("<Image>/Filters/sdhost")
            p.set_documentation("The generation parameters (A1111 infotext) of an sdhost result layer",
                                "", name)
            p.set_attribution("sdhost", "sdhost", "2026")
            p.add_string_return_value("infotext", "Infotext", "A1111 infotext", "",
                                      GObject.ParamFlags.READWRITE)
            return p
        if name == INTERROGATE_PROCEDURE:
            p = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_interrogate, None)
            p.set_image_types("RGB*")
            p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
            p.set_menu_label("I_nterrogate…")
            p.add_menu_path("<Image>/Filters/sdhost")
            p.set_documentation("A prompt from the layer (Interrogate CLIP or DeepBooru)",
                                "Describes the layer as A1111's interrogate buttons do; the prompt is "
                                "returned, kept on the layer and put into the next sdhost dialog.", name)
            p.set_attribution("sdhost", "sdhost", "2026")
            rw = GObject.ParamFlags.READWRITE
            p.add_choice_argument("method", "_Method", "clip: BLIP caption + CLIP ranking; deepbooru: tags",
                                  choice(INTERROGATE_METHODS), "clip", rw)
            p.add_string_argument("socket", "Daemon so_cket", "The daemon's socket (empty: its default)", "", rw)
            p.add_string_return_value("caption", "Caption", "The interrogated prompt", "",
                                      GObject.ParamFlags.READWRITE)
            return p
        mode, label, blurb = PROCEDURES[name]
        p = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        p.set_image_types("RGB*")
        p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        p.set_menu_label(label)
        p.add_menu_path("<Image>/Filters/sdhost")
        p.set_documentation(blurb, blurb + ", with Stable Diffusion through the sdhost daemon.", name)
        p.set_attribution("sdhost", "sdhost", "2026")
        add_arguments(p, mode, CHOICES)
        return p


Gimp.main(SdHost.__gtype__, sys.argv)
