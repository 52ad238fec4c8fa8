"""The procedures' dialog: GIMP's own dialog over the arguments (choices as lists, grouped in
frames), plus what it cannot do alone: an Interrogate button that fills the prompt, and network
pickers that insert their tag into the prompt as soon as one is picked, with the network's
preview image and trigger words shown.
"""

from __future__ import annotations

from typing import Optional

import gi

gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import GdkPixbuf, GimpUi, GLib, Gtk  # noqa: E402

from sdhost_bridge import NO_NETWORK, Choices, from_slug, slug, with_embedding, with_network  # noqa: E402

# The dialog's sections: (frame title, properties), in order; a property a procedure does not
# have is left out, and the ones no section names follow at the end.
SECTIONS = (
    ("Prompt", ("prompt", "negative-prompt")),
    ("Model and networks", ("model", "vae", "lora", "lora-weight", "hypernetwork",
                            "hypernetwork-weight", "embedding")),
    ("Sampling", ("sampler", "scheduler", "steps", "cfg-scale", "denoising-strength", "seed",
                  "batch-count", "batch-size", "clip-skip")),
    ("Size", ("width", "height", "resize-mode", "enable-hr", "hr-scale", "hr-steps")),
    ("Inpaint", ("mask-blur", "mask-mode", "masked-content", "inpaint-area", "padding",
                 "min-context", "extend-canvas", "mask-alpha", "mask-channel", "mask-file",
                 "sketch-layer")),
    ("Outpaint", ("pixels", "left", "right", "up", "down", "noise-q", "color-variation")),
    ("X/Y/Z plot", ("x-type", "x-values", "y-type", "y-values", "z-type", "z-values", "draw-legend")),
    ("Source and delivery", ("use-visible", "parameters-from", "live-preview", "preview-every",
                             "socket", "time-limit")),
)
PREVIEW_SIZE = 96


def show(procedure, config, title: str, choices: Optional[Choices] = None, image=None, layer=None) -> bool:
    """Runs the procedure's dialog; False when the user cancels."""
    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    names = [prop.name for prop in config.list_properties()]
    placed: list[str] = []
    frames: list[str] = []
    for index, (section, props) in enumerate(SECTIONS):
        present = [p for p in props if p in names]
        if not present:
            continue
        box, frame_id = f"sdhost-box-{index}", f"sdhost-frame-{index}"
        dialog.fill_box(box, present)
        frame = dialog.fill_frame(frame_id, None, False, box)
        if isinstance(frame, Gtk.Frame):
            frame.set_label(section)
        frames.append(frame_id)
        placed += present
    rest = [n for n in names if n not in placed and n not in ("run-mode", "image", "drawables")]
    dialog.fill(frames + rest)
    if choices is not None:
        _add_helpers(dialog, config, choices, layer)
    ok = dialog.run()
    dialog.destroy()
    return bool(ok)


def _add_helpers(dialog, config, choices: Choices, layer) -> None:
    names = {prop.name for prop in config.list_properties()}
    area = dialog.get_content_area()
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=8)
    area.pack_start(row, False, False, 4)
    if layer is not None and "prompt" in names:
        for method, label in (("clip", "Interrogate CLIP"), ("deepbooru", "Interrogate DeepBooru")):
            button = Gtk.Button.new_with_label(label)
            button.connect("clicked", _interrogate, config, layer, method)
            row.pack_start(button, False, False, 0)
    picture = Gtk.Image()
    info = Gtk.Label(label="")
    info.set_line_wrap(True)
    info.set_max_width_chars(48)
    row.pack_start(picture, False, False, 0)
    row.pack_start(info, True, True, 0)
    for prop, weight, kinds in (("lora", "lora-weight", ("lora", "lycoris")),
                                ("hypernetwork", "hypernetwork-weight", ("hypernetwork",))):
        if prop in names:
            config.connect(f"notify::{prop}", _pick_network, choices, kinds, weight, picture, info)
    if "embedding" in names:
        config.connect("notify::embedding", _pick_embedding, choices)
    row.show_all()


def _pick_network(config, _spec, choices: Choices, kinds, weight: str, picture, info) -> None:
    """A picked LoRA or hypernetwork: its tag into the prompt at once, its card shown, and
    the picker back at None (so the tag is not added twice)."""
    prop = _spec.name
    picked = config.get_property(prop)
    if picked == slug(NO_NETWORK):
        return
    entry = next((n for n in choices.of_kind(*kinds) if slug(n["alias"]) == picked), None)
    if entry is None:
        return
    config.set_property("prompt", with_network(config.get_property("prompt"), entry,
                                               config.get_property(weight) or None))
    text = choices.network_label(entry)
    if entry.get("description"):
        text += "\n" + entry["description"]
    info.set_text(text)
    picture.clear()
    if entry.get("preview"):
        try:
            pixbuf = GdkPixbuf.Pixbuf.new_from_file_at_scale(entry["preview"], PREVIEW_SIZE, PREVIEW_SIZE, True)
            picture.set_from_pixbuf(pixbuf)
        except GLib.Error:
            pass
    GLib.idle_add(config.set_property, prop, slug(NO_NETWORK))


def _pick_embedding(config, _spec, choices: Choices) -> None:
    picked = config.get_property("embedding")
    if picked == slug(NO_NETWORK):
        return
    config.set_property("prompt", with_embedding(config.get_property("prompt"),
                                                 from_slug(picked, choices.embeddings)))
    GLib.idle_add(config.set_property, "embedding", slug(NO_NETWORK))


def _interrogate(_button, config, layer, method: str) -> None:
    """The layer's caption as the prompt (the dialog waits for the daemon)."""
    from gimp_procedures import daemon_address, interrogate, preferences
    from sdhost_link import DaemonUnavailable

    prefs = preferences()
    try:
        caption = interrogate(layer, method, daemon_address(config, prefs), prefs.token)
    except (DaemonUnavailable, ValueError) as error:
        from gi.repository import Gimp
        Gimp.message(f"Interrogate failed: {error}")
        return
    config.set_property("prompt", caption)
