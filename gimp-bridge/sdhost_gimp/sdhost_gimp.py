#!/usr/bin/env python3
"""sdhost for GIMP 3: A1111's img2img tab (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint
with an external mask), txt2img, outpainting, the X/Y/Z plot, Interrogate and upscalers on the
current layer, the selection as the mask, results as new layers placed where they belong.
Talks to the sdhost daemon (`sdhost serve`) over its local socket or TCP (Filters > sdhost >
Preferences). Every procedure runs from scripts too, with the same property names.

Install: `gimp-bridge/install.sh` (copies this folder and the sdhost_*.py modules into GIMP's
plug-in folder).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, GObject  # noqa: E402

import gimp_arguments as args  # noqa: E402
from gimp_procedures import GENERATORS, RUNNERS  # noqa: E402
from sdhost_bridge import INTERROGATE_METHODS, Choices, fetch_choices  # noqa: E402
from sdhost_link import Address, Preferences  # noqa: E402

MENU = "<Image>/Filters/sdhost"
# The other procedures: name → (menu label, blurb).
TOOLS = {
    "sdhost-interrogate": ("I_nterrogate…", "A prompt from the layer (Interrogate CLIP or DeepBooru)"),
    "sdhost-upscale": ("_Upscale layer…", "The layer through an upscaler (A1111's extras)"),
    "sdhost-layer-info": ("_Parameters of this layer", "The generation parameters (A1111 infotext) of a result layer"),
    "sdhost-repeat": ("_Repeat last job", "Run the image's last sdhost job again on the current layer and selection"),
    "sdhost-reuse-settings": ("Reuse settings of this _layer",
                              "The next sdhost dialog opens with this result layer's parameters"),
    "sdhost-preferences": ("Pr_eferences…", "The daemon's address and token, and starting it"),
}
_choices: Choices | None = None


def choices() -> Choices:
    """The dialog's lists from the daemon (asked once per plug-in run, briefly), else A1111's.
    $SDHOST_SOCKET names the daemon when the preferences do not."""
    global _choices
    if _choices is None:
        prefs = Preferences.load(Gimp.directory())
        try:
            address = prefs.daemon_address()
        except ValueError:
            address = Address.parse("")
        _choices = fetch_choices(address, prefs.token)
    return _choices


def generator(plug_in, name: str) -> Gimp.Procedure:
    mode, label, blurb = GENERATORS[name]
    p = Gimp.ImageProcedure.new(plug_in, name, Gimp.PDBProcType.PLUGIN, run, None)
    if mode == "txt2img":
        p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.NO_DRAWABLES
                               | Gimp.ProcedureSensitivityMask.DRAWABLE
                               | Gimp.ProcedureSensitivityMask.ALWAYS)
    else:
        p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    p.set_image_types("*")
    p.set_menu_label(label)
    p.add_menu_path(MENU)
    p.set_documentation(blurb, blurb + ", with Stable Diffusion through the sdhost daemon.", name)
    p.set_attribution("sdhost", "sdhost", "2026")
    c = choices()
    args.add_prompt(p, c)
    args.add_sampling(p, c, denoising=0.7 if mode == "txt2img" else None)
    rw = args.RW
    if mode == "txt2img":
        p.add_boolean_argument("enable-hr", "Hires. fix", "Sample again at a larger size", False, rw)
        p.add_double_argument("hr-scale", "Hires. upscale by", "Hires. fix scale", 1.0, 4.0, 2.0, rw)
        p.add_int_argument("hr-steps", "Hires. steps", "0: as many as the first pass", 0, 150, 0, rw)
    else:
        args.add_source(p, c)
    if mode in ("sketch", "inpaint-sketch"):
        p.add_layer_argument("sketch-layer", "Sketch layer", "The layer painted over the image", False, rw)
    if mode in ("inpaint", "inpaint-sketch", "inpaint-upload", "outpaint"):
        args.add_inpaint(p, c, masked_content="fill" if mode == "outpaint" else None)
    if mode == "inpaint-sketch":
        p.add_double_argument("mask-alpha", "Mask transparency", "0-100", 0.0, 100.0, 0.0, rw)
    if mode == "inpaint-upload":
        p.add_channel_argument("mask-channel", "Mask channel",
                               "A channel as the mask (none: the layer's mask)", True, rw)
        p.add_string_argument("mask-file", "Mask file", "An image file as the mask (white = regenerate)", "", rw)
    if mode == "outpaint":
        p.add_int_argument("pixels", "Pixels to expand",
                           "Grow the layer by this much (0: fill its transparent areas instead)", 0, 512, 128, rw)
        for side, label in (("left", "Left"), ("right", "Right"), ("up", "Up"), ("down", "Down")):
            p.add_boolean_argument(side, label, f"Outpaint towards the {side}", True, rw)
        p.add_double_argument("noise-q", "Fall-off exponent", "Lower: more detail", 0.0, 4.0, 1.0, rw)
        p.add_double_argument("color-variation", "Color variation", "0-1", 0.0, 1.0, 0.05, rw)
    if mode == "xyz":
        args.add_xyz(p)
    args.add_delivery(p)
    return p


def tool(plug_in, name: str) -> Gimp.Procedure:
    label, blurb = TOOLS[name]
    p = Gimp.ImageProcedure.new(plug_in, name, Gimp.PDBProcType.PLUGIN, run, None)
    p.set_image_types("*")
    if name == "sdhost-preferences":
        p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.ALWAYS | Gimp.ProcedureSensitivityMask.NO_IMAGE
                               | Gimp.ProcedureSensitivityMask.NO_DRAWABLES)
    else:
        p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    p.set_menu_label(label)
    p.add_menu_path(MENU)
    p.set_documentation(blurb, blurb + ".", name)
    p.set_attribution("sdhost", "sdhost", "2026")
    rw = args.RW
    string_out = ("sdhost-layer-info", "sdhost-interrogate")
    if name == "sdhost-interrogate":
        p.add_choice_argument("method", "Method", "clip: BLIP caption + CLIP ranking; deepbooru: tags",
                              args.choice(INTERROGATE_METHODS), "clip", rw)
    if name == "sdhost-upscale":
        c = choices()
        p.add_choice_argument("upscaler", "Upscaler", "A1111's upscaler list", args.choice(c.upscalers),
                              "lanczos", rw)
        p.add_double_argument("scale", "Scale", "Upscale by", 1.0, 8.0, 2.0, rw)
        p.add_boolean_argument("grow-canvas", "Grow the canvas", "Make the image big enough for the layer",
                               True, rw)
    if name == "sdhost-preferences":
        p.add_string_argument("address", "Daemon address",
                              "A socket path or HOST:PORT (empty: the daemon's default socket)", "", rw)
        p.add_string_argument("token", "Token", "A TCP daemon's token (its ~/.config/sdhost/token)", "", rw)
        p.add_boolean_argument("start-daemon", "Start the daemon if needed",
                               "Start `sdhost serve` (detached) when no daemon answers", False, rw)
        p.add_string_argument("daemon-command", "Daemon command", "The sdhost program to start", "sdhost", rw)
    elif name != "sdhost-layer-info":
        args.add_socket(p)
    if name in string_out:
        out = {"sdhost-layer-info": ("infotext", "Infotext", "A1111 infotext"),
               "sdhost-interrogate": ("caption", "Caption", "The interrogated prompt")}[name]
        p.add_string_return_value(out[0], out[1], out[2], "", GObject.ParamFlags.READWRITE)
    return p


def run(procedure, run_mode, image, drawables, config, data):
    return RUNNERS[procedure.get_name()](procedure, run_mode, image, drawables, config, choices())


class SdHost(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False

    def do_query_procedures(self):
        return list(GENERATORS) + list(TOOLS)

    def do_create_procedure(self, name):
        return generator(self, name) if name in GENERATORS else tool(self, name)


Gimp.main(SdHost.__gtype__, sys.argv)
