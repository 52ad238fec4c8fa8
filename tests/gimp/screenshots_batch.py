# The dialogs of the sdhost GIMP plug-in, for the screenshots in docs/images/: run inside the
# real GIMP (gimp-3.0 on Xvfb, python-fu-eval) by tests/gimp/screenshots.sh. Each procedure
# runs in interactive mode, so its dialog opens; grab_dialog.sh, started just before, saves
# the dialog and presses Escape.
import os
import subprocess

from gi.repository import Gegl, Gimp

SOCKET = os.environ["SDHOST_SOCKET"]
OUT = os.environ["SDHOST_SHOTS_DIR"]
GRAB = os.environ["SDHOST_GRAB"]
W, H = 512, 384
PDB = Gimp.get_pdb()


def new_image():
    """A layer with a soft sky-to-meadow gradient, shown in a window as a user has it."""
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "photo", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    rows = []
    for y in range(H):
        t = y / H
        sky = (int(120 + 100 * t), int(170 + 50 * t), 235) if t < 0.6 else (70, int(150 - 60 * t), 60)
        rows.append(bytes(sky + (255,)) * W)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, W, H), "R'G'B'A u8", b"".join(rows))
    buffer.flush()
    Gimp.Display.new(image)
    return image, layer


def config_for(name, image, layer, run_mode, **props):
    procedure = PDB.lookup_procedure(name)
    if procedure is None:
        raise RuntimeError(f"{name} is not registered")
    config = procedure.create_config()
    config.set_property("run-mode", run_mode)
    names = {prop.name for prop in config.list_properties()}
    if "image" in names:
        config.set_property("image", image)
        config.set_core_object_array("drawables", [layer])
    for key, value in props.items():
        config.set_property(key, value)
    return procedure, config


def shoot(name, title, file, image, layer):
    """The procedure's dialog, saved as `file` while it is open."""
    grabber = subprocess.Popen(["/bin/sh", GRAB, title, os.path.join(OUT, file)])
    procedure, config = config_for(name, image, layer, Gimp.RunMode.INTERACTIVE)
    status = procedure.run(config).index(0)
    grabber.wait(timeout=120)
    print(f"SHOT {file}: dialog returned {status.value_nick}, grabber exit {grabber.returncode}")


image, layer = new_image()
# A non-interactive inpaint first: the image keeps its settings (prompt, LoRA), and the
# interactive dialog opens with them, the LoRA's card shown.
image.select_ellipse(Gimp.ChannelOps.REPLACE, 180, 120, 160, 130)
procedure, config = config_for("sdhost-inpaint", image, layer, Gimp.RunMode.NONINTERACTIVE,
                               socket=SOCKET, prompt="a red fox sitting in the grass, golden hour",
                               **{"negative-prompt": "blurry, lowres", "lora": "add-detail",
                                  "steps": 4, "seed": 1234, "live-preview": "none"})
print("SHOT inpaint (non-interactive):", procedure.run(config).index(0).value_nick)
shoot("sdhost-inpaint", "Inpaint selection", "gimp-inpaint-dialog.png", image, layer)
shoot("sdhost-txt2img", "txt2img", "gimp-txt2img-dialog.png", image, layer)
Gimp.Selection.none(image)
shoot("sdhost-outpaint", "Outpaint", "gimp-outpaint-dialog.png", image, layer)
# Preferences for the daemon over TCP, as for one on another machine (last: every run of the
# plug-in from now on talks TCP).
procedure, config = config_for("sdhost-preferences", image, layer, Gimp.RunMode.NONINTERACTIVE,
                               address=os.environ["SDHOST_TCP"], token=os.environ["SDHOST_TOKEN"])
print("SHOT preferences (non-interactive):", procedure.run(config).index(0).value_nick)
shoot("sdhost-preferences", "sdhost preferences", "gimp-preferences-dialog.png", image, layer)
print("SHOT done")
