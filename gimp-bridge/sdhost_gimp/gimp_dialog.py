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
from gi.repository import GdkPixbuf, GimpUi, GLib, GObject, Gtk  # noqa: E402

from sdhost_bridge import NO_NETWORK, Choices, from_slug, slug, with_embedding, with_network  # noqa: E402

# The dialog's sections: (frame title, properties), in order; a property a procedure does not
# have is left out, and the ones no section names follow at the end. A tuple is one row.
SECTIONS = (
    ("Prompt", ("prompt", "negative-prompt")),
    ("Model and networks", ("model", "vae", "lora", "lora-weight", "hypernetwork",
                            "hypernetwork-weight", "embedding")),
    ("Sampling", ("sampler", "scheduler", "steps", "cfg-scale", "denoising-strength", "seed",
                  ("batch-count", "batch-size"), "clip-skip")),
    ("Size", (("width", "height"), "resize-mode", "enable-hr", "hr-scale", "hr-steps")),
    ("Inpaint", ("mask-blur", "mask-mode", "masked-content", "inpaint-area", "padding",
                 "min-context", "extend-canvas", "mask-alpha", "mask-channel", "mask-file",
                 "sketch-layer")),
    ("Outpaint", ("pixels", ("left", "right", "up", "down"), "noise-q", "color-variation")),
    ("X/Y/Z plot", ("x-type", "x-values", "y-type", "y-values", "z-type", "z-values", "draw-legend")),
    ("Source and delivery", ("use-visible", "parameters-from", "live-preview", "preview-every",
                             "socket", "time-limit")),
)
PREVIEW_SIZE = 96
# Past this many rows the frames go into two columns, so that the dialog fits a 1000-pixel
# screen (the outpaint dialog has 36 rows, and the helpers take about 4 more).
ONE_COLUMN_MAX = 14
HELPER_ROWS = 4


def show(procedure, config, title: str, choices: Optional[Choices] = None, image=None, layer=None) -> bool:
    """Runs the procedure's dialog; False when the user cancels."""
    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    # The procedure's arguments (the config has a "procedure" property too, which has no widget).
    names = [spec.name for spec in procedure.get_arguments()]
    if "token" in names:
        # A daemon's token is a password: dots on screen (screen sharing, screenshots).
        widget = dialog.get_widget("token", GObject.TYPE_NONE)
        entry = widget.get_entry() if isinstance(widget, GimpUi.LabelEntry) else widget
        if isinstance(entry, Gtk.Entry):
            entry.set_visibility(False)
    placed: list[str] = []
    frames: list[tuple[str, int]] = []
    for index, (section, items) in enumerate(SECTIONS):
        rows = []
        for number, item in enumerate(items):
            if isinstance(item, tuple):
                present = [p for p in item if p in names]
                if present:
                    row = dialog.fill_box(f"sdhost-row-{index}-{number}", present)
                    row.set_orientation(Gtk.Orientation.HORIZONTAL)
                    row.set_spacing(12)
                    rows.append(f"sdhost-row-{index}-{number}")
                    placed += present
            elif item in names:
                rows.append(item)
                placed.append(item)
        if not rows:
            continue
        box, frame_id = f"sdhost-box-{index}", f"sdhost-frame-{index}"
        dialog.fill_box(box, rows)
        frame = dialog.fill_frame(frame_id, None, False, box)
        if isinstance(frame, Gtk.Frame):
            frame.set_label(section)
        frames.append((frame_id, len(rows)))
    rest = [n for n in names if n not in placed and n not in ("run-mode", "image", "drawables")]
    ids, side = _columns(dialog, frames, HELPER_ROWS if choices is not None else 0)
    dialog.fill(ids + rest)
    if choices is not None:
        helpers = _helpers(config, choices, layer)
        if side is not None:
            side.pack_start(helpers, False, False, 8)
        else:
            dialog.get_content_area().pack_start(helpers, False, False, 4)
        helpers.show_all()
    ok = dialog.run()
    dialog.destroy()
    return bool(ok)


def _columns(dialog, frames: list[tuple[str, int]], helper_rows: int) -> tuple[list[str], Optional[Gtk.Box]]:
    """The frames in one column, or in two side by side, split where the rows (with the
    helpers' under the right column) are halved, the left one the longer on a tie; the right
    column is returned too, for the helpers."""
    total = sum(count for _, count in frames) + helper_rows
    if total <= ONE_COLUMN_MAX or len(frames) < 2:
        return [frame_id for frame_id, _ in frames], None
    counts = [count for _, count in frames]
    split = min(range(1, len(frames)), key=lambda k: (abs(2 * sum(counts[:k]) - total), -k))
    dialog.fill_box("sdhost-left", [frame_id for frame_id, _ in frames[:split]])
    right = dialog.fill_box("sdhost-right", [frame_id for frame_id, _ in frames[split:]])
    columns = dialog.fill_box("sdhost-columns", ["sdhost-left", "sdhost-right"])
    columns.set_orientation(Gtk.Orientation.HORIZONTAL)
    columns.set_spacing(18)
    return ["sdhost-columns"], right


def _helpers(config, choices: Choices, layer) -> Gtk.Box:
    """The Interrogate buttons, and the card (preview, name, trigger words) of the network
    last picked."""
    names = {prop.name for prop in config.list_properties()}
    helpers = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
    if layer is not None and "prompt" in names:
        buttons = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=8)
        for method, label in (("clip", "Interrogate CLIP"), ("deepbooru", "Interrogate DeepBooru")):
            button = Gtk.Button.new_with_label(label)
            button.set_tooltip_text("Fill the prompt with the layer's caption")
            button.connect("clicked", _interrogate, config, layer, method)
            buttons.pack_start(button, False, False, 0)
        helpers.pack_start(buttons, False, False, 0)
    card = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=8)
    picture = Gtk.Image()
    picture.set_valign(Gtk.Align.START)
    info = Gtk.Label(label="")
    info.set_line_wrap(True)
    info.set_max_width_chars(36)
    info.set_xalign(0.0)
    info.set_valign(Gtk.Align.START)
    card.pack_start(picture, False, False, 0)
    card.pack_start(info, False, False, 0)
    helpers.pack_start(card, False, False, 0)
    for prop, weight, kinds in (("lora", "lora-weight", ("lora", "lycoris")),
                                ("hypernetwork", "hypernetwork-weight", ("hypernetwork",))):
        if prop in names:
            config.connect(f"notify::{prop}", _pick_network, choices, kinds, weight, picture, info)
    if "embedding" in names:
        config.connect("notify::embedding", _pick_embedding, choices)
    # A network already set (a script's run, Repeat, the image's last settings) counts as
    # picked: its tag goes into the prompt now and its card shows, as when the user picks it.
    for prop in ("lora", "hypernetwork", "embedding"):
        if prop in names and config.get_property(prop) != slug(NO_NETWORK):
            config.notify(prop)
    return helpers


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
