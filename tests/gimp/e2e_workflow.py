# ruff: noqa: F821 - run by e2e_batch.py, whose helpers and GIMP modules are in scope
# End-to-end test of the plug-in's second round (a professional's workflow), run by
# e2e_batch.py in the same gimp-console after its own checks (its helpers `run`, `check`,
# `pixels`, `above`, `infotext`, `new_image`, `text_of` are in scope): geometry with offsets,
# groups, precisions and image types; outpainting; txt2img; X/Y/Z plot; upscale; live
# previews; settings kept on the image, Repeat and Reuse; preferences and TCP; cancel by
# killing the plug-in; the daemon killed mid-job.
import json
import os
import signal
import threading
import time

TCP = os.environ["SDHOST_TCP"]
TOKEN = os.environ["SDHOST_TOKEN"]
DAEMON_PID = int(os.environ["SDHOST_DAEMON_PID"])
ERROR = Gimp.PDBStatusType.EXECUTION_ERROR
CALLING = Gimp.PDBStatusType.CALLING_ERROR


def last_error():
    return Gimp.get_pdb().get_last_error() or ""


def last_job(image):
    parasite = image.get_parasite("sdhost/last-job")
    return json.loads(text_of(parasite)) if parasite else {}


def region_of(layer):
    _, x, y = layer.get_offsets()
    return x, y, layer.get_width(), layer.get_height()


def inside(inner, outer):
    x, y, w, h = inner
    ox, oy, ow, oh = outer
    return ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh


def small_layer(image, name="small", at=(41, 23), size=(40, 30), parent=None):
    layer = Gimp.Layer.new(image, name, size[0], size[1], Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, parent, 0)
    data = bytes(v for y in range(size[1]) for x in range(size[0]) for v in (x * 5 % 256, y * 7 % 256, 120, 255))
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, size[0], size[1]), RGBA, data)
    buffer.flush()
    layer.set_offsets(*at)
    return layer


# 1. A selection past the layer's edge ("Select All" on a smaller layer at odd offsets) is
# clipped to the layer: the patch lies on the layer, not at its corner spilling out.
image, base = new_image()
layer = small_layer(image)
Gimp.Selection.all(image)
status, _ = run("sdhost-inpaint", image, layer, seed=21, padding=4, width=32, height=32)
patch = above(image, layer)
check(status == SUCCESS and inside(region_of(patch), region_of(layer)),
      f"select all on a small layer: the patch {region_of(patch)} lies on the layer {region_of(layer)}")
image.select_rectangle(Gimp.ChannelOps.REPLACE, 70, 30, 26, 30)  # over the layer's right edge (81)
status, _ = run("sdhost-inpaint", image, layer, seed=22, padding=2, width=32, height=32)
patch = above(image, layer)
check(status == SUCCESS and inside(region_of(patch), region_of(layer)), "a selection over the edge is clipped")
# "Extend canvas": the same selection grows the canvas there and is outpainted.
status, _ = run("sdhost-inpaint", image, layer, seed=23, padding=2, width=32, height=32,
                **{"extend-canvas": True, "masked-content": "fill"})
patch = above(image, layer)
x, y, w, h = region_of(patch)
check(status == SUCCESS and x + w > 81 and x + w <= 96, f"extend canvas: the patch {region_of(patch)} reaches past the layer")
image.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 10, 10)
status, _ = run("sdhost-inpaint", image, layer, seed=24)
check(status == CALLING and "does not touch the layer" in last_error(), "a selection off the layer is explained")
Gimp.Selection.none(image)
image.delete()

# 2. The active layer inside a layer group, at odd offsets: the result goes into the group,
# directly above it, over it.
image, base = new_image()
group = Gimp.GroupLayer.new(image, "group")
image.insert_layer(group, None, 0)
inner = small_layer(image, "inner", at=(17, 9), size=(33, 27), parent=group)
status, _ = run("sdhost-img2img", image, inner, seed=25)
result = group.get_children()[0]
check(status == SUCCESS and result != inner and result.get_parent() == group
      and region_of(result) == region_of(inner), f"a layer in a group: the result {region_of(result)} over it, in the group")
image.delete()

# 3. Precisions and image types: 16-bit linear, 32-bit float, grayscale and indexed images give
# results placed like any other, in the image's own type.
for precision in (Gimp.Precision.U16_LINEAR, Gimp.Precision.FLOAT_LINEAR, Gimp.Precision.U8_PERCEPTUAL):
    image = Gimp.Image.new_with_precision(W, H, Gimp.ImageBaseType.RGB, precision)
    layer = small_layer(image, at=(11, 5))
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 10, 12, 12)
    status, _ = run("sdhost-inpaint", image, layer, seed=26, padding=4, width=32, height=32)
    patch = above(image, layer)
    data = pixels(patch)
    check(status == SUCCESS and inside(region_of(patch), region_of(layer)) and any(data[3::4]),
          f"{precision.value_nick}: inpaint placed over the selection")
    image.delete()
image = Gimp.Image.new(W, H, Gimp.ImageBaseType.GRAY)
gray = Gimp.Layer.new(image, "gray", W, H, Gimp.ImageType.GRAYA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(gray, None, 0)
buffer = gray.get_buffer()
buffer.set(Gegl.Rectangle.new(0, 0, W, H), "Y'A u8", bytes((x + y) % 256 if c == 0 else 255
                                                         for y in range(H) for x in range(W) for c in range(2)))
buffer.flush()
status, _ = run("sdhost-img2img", image, gray, seed=27)
result = above(image, gray)
check(status == SUCCESS and region_of(result) == (0, 0, W, H) and result.is_gray(), "grayscale: a gray result layer")
image.delete()
image, base = new_image()
image.convert_indexed(Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 32, False, False, "")
status, _ = run("sdhost-img2img", image, base, seed=28)
result = above(image, base)
check(status == SUCCESS and result.is_indexed() and region_of(result) == (0, 0, W, H),
      "indexed: a result in the image's palette")
image.delete()

# 4. Outpainting: Outpainting mk2 grows the layer and the canvas with it; with 0 pixels the
# transparent part of the layer is filled.
image, base = new_image()
status, _ = run("sdhost-outpaint", image, base, seed=29, pixels=32, steps=2, **{"denoising-strength": 0.8})
grown = above(image, base)
check(status == SUCCESS and (image.get_width(), image.get_height()) == (192, 128)
      and region_of(grown) == (0, 0, 192, 128) and region_of(base) == (48, 32, W, H),
      f"outpaint by 32 px: canvas {image.get_width()}x{image.get_height()}, layer {region_of(grown)}")
check("Outpainting mk2" not in grown.get_name() and infotext(grown) is not None, "the grown picture carries its infotext")
image.delete()
image, base = new_image()
buffer = base.get_buffer()
buffer.set(Gegl.Rectangle.new(60, 10, 20, 20), RGBA, bytes(20 * 20 * 4))
buffer.flush()
status, _ = run("sdhost-outpaint", image, base, seed=30, pixels=0, padding=4, width=32, height=32)
patch = above(image, base)
x, y, w, h = region_of(patch)
check(status == SUCCESS and x <= 60 and y <= 10 and x + w >= 80 and y + h >= 30,
      f"outpaint the transparent hole: patch {region_of(patch)}")
opaque = new_image()
status, _ = run("sdhost-outpaint", opaque[0], opaque[1], pixels=0)
check(status == CALLING and "nothing to outpaint" in last_error(), "an opaque layer has nothing to fill")
opaque[0].delete()
image.delete()

# 5. txt2img: a layer of the image's size, or of the selection's bounds; a batch as a group
# with the seeds in the layer names.
image, base = new_image()
status, _ = run("sdhost-txt2img", image, base, seed=31)
made = above(image, base)
check(status == SUCCESS and region_of(made) == (0, 0, W, H) and "Seed: 31" in infotext(made), "txt2img fills the image")
image.select_rectangle(Gimp.ChannelOps.REPLACE, 10, 20, 40, 24)
status, _ = run("sdhost-txt2img", image, base, seed=32, **{"batch-size": 2})
group = above(image, base)
names = sorted(l.get_name() for l in group.get_children())
check(status == SUCCESS and isinstance(group, Gimp.GroupLayer) and names == ["sdhost: a house (32)", "sdhost: a house (33)"]
      and all(region_of(l) == (10, 20, 40, 24) for l in group.get_children()),
      f"txt2img of the selection, a batch of two: {names}")
Gimp.Selection.none(image)
image.delete()

# 6. X/Y/Z plot: a group named by the axes, a layer per cell named by its values, the grid.
image, base = new_image()
status, _ = run("sdhost-xyz-plot", image, base, seed=34, steps=2,
                **{"x-type": "steps", "x-values": "1,2", "y-type": "cfg-scale", "y-values": "5,7"})
group = above(image, base)
names = [l.get_name() for l in group.get_children()]
check(status == SUCCESS and group.get_name() == "sdhost X/Y/Z plot: Steps: 1,2 × CFG Scale: 5,7",
      f"the plot's group: {group.get_name()}")
check(sorted(n for n in names if not n.startswith("sdhost: grid")) ==
      ["Steps: 1, CFG Scale: 5.0 (34)", "Steps: 1, CFG Scale: 7.0 (34)",
       "Steps: 2, CFG Scale: 5.0 (34)", "Steps: 2, CFG Scale: 7.0 (34)"] and any(n.startswith("sdhost: grid") for n in names), f"cells and grid: {names}")
image.delete()

# 7. Upscale: a layer through an upscaler, the canvas grown to hold it.
image, base = new_image()
status, _ = run("sdhost-upscale", image, base, upscaler="lanczos", scale=2.0)
big = above(image, base)
check(status == SUCCESS and region_of(big) == (0, 0, 2 * W, 2 * H) and image.get_width() == 2 * W,
      f"upscaled layer {region_of(big)}")
image.delete()

# 8. Live previews: shown during the job in a preview layer, gone at the end.
image, base = new_image()
status, _ = run("sdhost-img2img", image, base, seed=35, steps=4, **{"live-preview": "approx-cheap"})
job = last_job(image)
check(status == SUCCESS and job.get("previews", 0) >= 1, f"previews shown during the job: {job}")
check(all(l.get_name() != "sdhost: preview" for l in image.get_layers()), "the preview layer is removed at the end")
status, _ = run("sdhost-img2img", image, base, seed=36, steps=2, **{"live-preview": "none"})
check(status == SUCCESS and last_job(image)["previews"] == 0, "no previews when turned off")

# 9. Settings kept on the image (XCF parasite), Repeat, and Reuse settings of a layer.
parasite = image.get_parasite("sdhost/settings")
record = json.loads(text_of(parasite))
check(record["procedure"] == "sdhost-img2img" and record["values"]["seed"] == 36
      and parasite.get_flags() & Gimp.PARASITE_PERSISTENT, "the job's settings are kept on the image")
status, _ = run("sdhost-repeat", image, base)
check(status == SUCCESS and "Seed: 36" in infotext(above(image, base)), "Repeat runs the last job again")
earlier = [l for l in image.get_layers() if infotext(l) and "Seed: 35" in infotext(l)][0]
status, _ = run("sdhost-reuse-settings", image, earlier)
record = json.loads(text_of(image.get_parasite("sdhost/settings")))
check(status == SUCCESS and record["values"]["seed"] == 35 and record["values"]["steps"] == 4,
      "Reuse settings: the layer's parameters become the image's")
status, _ = run("sdhost-repeat", image, base)
check(status == SUCCESS and "Seed: 35" in infotext(above(image, base)), "and Repeat runs them")
image.delete()

# Repeat keeps a sketch job's sketch layer (kept by its tattoo).
image, base = new_image()
strokes = small_layer(image, "strokes", at=(0, 0), size=(W, H))
status, _ = run("sdhost-sketch", image, base, seed=40, **{"sketch-layer": strokes})
status, _ = run("sdhost-repeat", image, base)
check(status == SUCCESS and "Seed: 40" in infotext(above(image, base)), "Repeat of a sketch job finds its sketch layer")
image.delete()

# 10. Preferences: the daemon over TCP with its token, set once; a wrong token is explained.
image, base = new_image()
prefs = PDB.lookup_procedure("sdhost-preferences")


def set_preferences(address, token):
    config = prefs.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("address", address)
    config.set_property("token", token)
    return prefs.run(config).index(0)


check(set_preferences(TCP, TOKEN) == SUCCESS, "preferences saved")
status, _ = run("sdhost-img2img", image, base, socket="", seed=37)
check(status == SUCCESS and "Seed: 37" in infotext(above(image, base)), "a job through the preferences' TCP address")
set_preferences(TCP, "0" * 64)
status, _ = run("sdhost-img2img", image, base, socket="", seed=38)
check(status == ERROR and "refused the token" in last_error(), f"a wrong token is explained: {last_error()}")
check(set_preferences("not an address:x", "") == CALLING, "a bad address is refused")
set_preferences("", "")
image.delete()


# 11. Cancel from GIMP's progress bar kills the plug-in: the daemon stops the job within a step
# (the next job runs at once; otherwise it would wait behind 64 x 1000 steps).
def kill_plug_in(after):
    time.sleep(after)
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"sdhost_gimp.py" in f.read():
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


image, base = new_image()
threading.Thread(target=kill_plug_in, args=(3,), daemon=True).start()
status, _ = run("sdhost-img2img", image, base, steps=1000, **{"batch-count": 16, "denoising-strength": 1.0})
check(status != SUCCESS, "the killed plug-in's job fails in GIMP, GIMP goes on")
started = time.monotonic()
status, _ = run("sdhost-img2img", image, base, seed=39)
check(status == SUCCESS, f"the daemon dropped the killed plug-in's job ({time.monotonic() - started:.1f} s)")

# 12. The daemon killed mid-job: a clear error, GIMP alive (last: the daemon stays down).
threading.Thread(target=lambda: (time.sleep(3), os.kill(DAEMON_PID, signal.SIGKILL)), daemon=True).start()
status, _ = run("sdhost-img2img", image, base, steps=1000, **{"batch-count": 16, "denoising-strength": 1.0})
check(status == ERROR and "stopped during the job" in last_error(), f"daemon killed: {last_error()}")
status, _ = run("sdhost-img2img", image, base)
check(status == ERROR and "cannot reach the sdhost daemon" in last_error(), f"then down: {last_error()}")
check(image.is_valid() and len(image.get_layers()) >= 2, "GIMP and the image are fine")
image.delete()
