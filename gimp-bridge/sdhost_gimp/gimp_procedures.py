"""The procedures' run functions: the dialog (interactive), the job with progress, live preview
and cancel, the results as layers, and the settings kept on the image. One `run_generation`
serves every generating procedure; the small ones (interrogate, upscale, layer info, repeat,
reuse settings, preferences) follow.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

from gi.repository import Gimp, GLib, GObject

import gimp_dialog
import gimp_jobs
from gimp_layers import (
    INFOTEXT_PARASITE, PreviewLayer, fill, grow_canvas, insert_results, layer_region, layer_type, read,
)
from sdhost_bridge import (
    CURRENT_MODEL, INTERROGATE_METHODS, LIVE_PREVIEWS, NO_NETWORK, PROPERTIES, SETTINGS_PARASITE,
    Choices, JobRunner, from_slug, parasite_payload, parasite_text, placements, properties_from,
    read_settings_record, reuse_request, settings_from, settings_record, slug, with_embedding,
    with_network,
)
from sdhost_client import DaemonError, Image, ProtocolError
from sdhost_geometry import Region
from sdhost_link import Address, DaemonUnavailable, Preferences, connect, ensure_daemon, lost, too_old

# The interrogated prompt: on the layer for good, and on the image until the next sdhost dialog
# opens with it as its prompt.
INTERROGATION_PARASITE = "sdhost/interrogation"
PROMPT_PARASITE = "sdhost/prompt"
# What the last job did (procedure, layers made, previews shown), for scripts.
LAST_JOB_PARASITE = "sdhost/last-job"

# procedure name → (mode, menu label, blurb); the five img2img tabs and the other generators.
GENERATORS = {
    "sdhost-img2img": ("img2img", "_img2img…", "Regenerate the layer from a prompt"),
    "sdhost-sketch": ("sketch", "_Sketch…", "img2img of the layer with a sketch layer painted over it"),
    "sdhost-inpaint": ("inpaint", "_Inpaint selection…", "Regenerate the selection (the selection is the mask)"),
    "sdhost-inpaint-sketch": ("inpaint-sketch", "Inpaint s_ketch…",
                              "Regenerate where a sketch layer paints over the layer"),
    "sdhost-inpaint-mask": ("inpaint-upload", "Inpaint with a _mask…",
                            "Inpaint with a layer mask, a channel or a mask file"),
    "sdhost-txt2img": ("txt2img", "_txt2img…", "A new picture for the selection or the whole image"),
    "sdhost-outpaint": ("outpaint", "_Outpaint…",
                        "Grow the layer by N pixels (Outpainting mk2), or fill its transparent areas"),
    "sdhost-xyz-plot": ("xyz", "_X/Y/Z plot…", "img2img over a grid of parameter values"),
}


def fail(procedure: Gimp.Procedure, message: str,
         status: Gimp.PDBStatusType = Gimp.PDBStatusType.EXECUTION_ERROR):
    return procedure.new_return_values(status, GLib.Error(message))


def success(procedure: Gimp.Procedure, text: Optional[str] = None):
    values = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    if text is not None:
        values.remove(1)
        values.insert(1, GObject.Value(GObject.TYPE_STRING, text))
    return values


def preferences() -> Preferences:
    return Preferences.load(Gimp.directory())


def daemon_address(config: Gimp.ProcedureConfig, prefs: Preferences) -> Address:
    """The `socket` argument's address, else the preferences' (one rule with the lists')."""
    return prefs.daemon_address(config.get_property("socket"))


def property_names(config: Gimp.ProcedureConfig) -> set[str]:
    return {prop.name for prop in config.list_properties()}


# A layer or channel argument in kept settings: its tattoo (which survives saving the XCF).
ITEM = "gimp-item-tattoo:"


def set_properties(config: Gimp.ProcedureConfig, values: dict[str, Any],
                   image: Optional[Gimp.Image] = None) -> None:
    """Sets the values the config has a property for (a value a choice no longer offers, such
    as a model removed since, or a layer deleted since, is skipped)."""
    names = property_names(config)
    for name, value in values.items():
        if name not in names:
            continue
        if isinstance(value, str) and value.startswith(ITEM):
            if image is None:
                continue
            tattoo = value[len(ITEM):]
            if not tattoo.isdigit():  # a damaged parasite: skip the value, not the job
                continue
            value = image.get_layer_by_tattoo(int(tattoo)) or image.get_channel_by_tattoo(int(tattoo))
            if value is None:
                continue
        try:
            config.set_property(name, value)
        except (TypeError, ValueError):
            pass


def plain_values(config: Gimp.ProcedureConfig) -> dict[str, Any]:
    """The config's values worth keeping: plain ones, and layers and channels by tattoo."""
    skip = {"run-mode", "image", "drawables", "socket", "time-limit"}
    values = {}
    for prop in config.list_properties():
        if prop.name in skip:
            continue
        value = config.get_property(prop.name)
        if isinstance(value, Gimp.Item):
            values[prop.name] = f"{ITEM}{value.get_tattoo()}"
        elif isinstance(value, (str, int, float, bool)):
            values[prop.name] = value
    return values


def image_settings(image: Gimp.Image) -> tuple[str, dict[str, Any]]:
    parasite = image.get_parasite(SETTINGS_PARASITE)
    return read_settings_record(parasite_text(parasite.get_data())) if parasite else ("", {})


def keep_settings(image: Gimp.Image, procedure: str, values: dict[str, Any]) -> None:
    """The image remembers its last sdhost job's settings (saved in the XCF): its dialogs open
    with them, and Repeat runs them again."""
    image.attach_parasite(Gimp.Parasite.new(SETTINGS_PARASITE, Gimp.PARASITE_PERSISTENT,
                                            parasite_payload(settings_record(procedure, values))))


def note_last_job(image: Gimp.Image, record: dict[str, Any]) -> None:
    image.attach_parasite(Gimp.Parasite.new(LAST_JOB_PARASITE, 0, parasite_payload(json.dumps(record))))


def apply_prompt_pickers(settings, config: Gimp.ProcedureConfig, choices: Choices) -> None:
    """The LoRA, hypernetwork and embedding picked: their tags added to the prompt."""
    get = config.get_property
    for prop, weight, kinds in (("lora", "lora-weight", ("lora", "lycoris")),
                                ("hypernetwork", "hypernetwork-weight", ("hypernetwork",))):
        picked = get(prop)
        if picked and picked != slug(NO_NETWORK):
            entry = next((n for n in choices.of_kind(*kinds) if slug(n["alias"]) == picked), None)
            if entry is None:
                raise gimp_jobs.UserError(f"the daemon has no {prop} {picked!r}")
            settings.prompt = with_network(settings.prompt, entry, get(weight) or None)
    embedding = get("embedding")
    if embedding and embedding != slug(NO_NETWORK):
        settings.prompt = with_embedding(settings.prompt, from_slug(embedding, choices.embeddings))


def before_dialog(image: Gimp.Image, config: Gimp.ProcedureConfig) -> None:
    """Per-image memory: the image's last sdhost settings, and a prompt Interrogate handed over."""
    _, values = image_settings(image)
    set_properties(config, values, image)
    handed = image.get_parasite(PROMPT_PARASITE)
    if handed is not None:
        config.set_property("prompt", parasite_text(handed.get_data()))
        image.detach_parasite(PROMPT_PARASITE)


def run_job(image: Gimp.Image, job: gimp_jobs.PreparedJob, runner: JobRunner, config: Gimp.ProcedureConfig,
            anchor: tuple[Optional[Gimp.Layer], int]):
    """Waits for the job with progress (step, time left), the live preview layer and the time
    limit; the preview layer is gone afterwards, whatever happened."""
    preview = PreviewLayer(image, anchor[0], anchor[1], job.region)
    limit = config.get_property("time-limit")
    started = time.monotonic()

    def progress(fraction: float, text: str) -> None:
        Gimp.progress_set_text(f"sdhost: {text}")
        Gimp.progress_update(fraction)

    Gimp.progress_init("sdhost: waiting for the daemon…")
    try:
        outcome = runner.wait(progress, (lambda: time.monotonic() - started > limit) if limit else None,
                              preview.show)
    finally:
        preview.remove()
        Gimp.progress_end()
    return outcome, preview.shown


def run_generation(procedure, run_mode, image, drawables, config, choices: Choices):
    """Every generating procedure: dialog, job, results as layers, settings kept."""
    name = procedure.get_name()
    mode, label, _ = GENERATORS[name]
    if run_mode == Gimp.RunMode.INTERACTIVE:
        before_dialog(image, config)
        layer = drawables[0] if len(drawables) == 1 else None
        if not gimp_dialog.show(procedure, config, label.replace("_", "").rstrip("…"), choices, image, layer):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    prefs = preferences()
    try:
        address = daemon_address(config, prefs)
    except ValueError as error:
        return fail(procedure, str(error), Gimp.PDBStatusType.CALLING_ERROR)
    names = property_names(config)
    settings = settings_from(config.get_property, names, mode if mode in GENERATOR_MODES else "img2img", choices)
    try:
        apply_prompt_pickers(settings, config, choices)
        ensure_daemon(address, prefs)
        source = config.get_property("parameters-from") if "parameters-from" in names else None
        if source is not None:
            reuse_layer_settings(settings, source, address, prefs.token)
        job, anchor = prepare(name, mode, image, drawables, settings, config, names)
    except gimp_jobs.UserError as error:
        return fail(procedure, str(error), Gimp.PDBStatusType.CALLING_ERROR)
    except DaemonUnavailable as error:
        return fail(procedure, str(error))
    preview = from_slug(config.get_property("live-preview"), LIVE_PREVIEWS)
    if preview != "None":
        job.header["preview"] = {"method": preview, "every": config.get_property("preview-every")}
    model = from_slug(config.get_property("model"), choices.models)
    runner = JobRunner(lambda: connect(address, prefs.token), job.header, job.attachments,
                       None if model == CURRENT_MODEL else model, job.kind)
    outcome, previews = run_job(image, job, runner, config, anchor)
    if outcome.status == "error":
        return fail(procedure, outcome.error or "the daemon failed")
    if outcome.status == "cancelled" and not outcome.results:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    image.undo_group_start()
    try:
        region = job.region
        if job.grow_canvas:
            dx, dy = grow_canvas(image, region)
            region = region.shifted(dx, dy)
        placed = placements(outcome.results, region, job.prompt_for_names)
        made = insert_results(image, placed, region if job.fit else None, anchor[0], anchor[1],
                              job.group_name)
    finally:
        image.undo_group_end()
    keep_settings(image, name, plain_values(config))
    note_last_job(image, {"procedure": name, "status": outcome.status, "previews": previews,
                          "layers": [layer.get_name() for layer in made], "warnings": outcome.warnings})
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


GENERATOR_MODES = ("img2img", "sketch", "inpaint", "inpaint-sketch", "inpaint-upload")


def prepare(name, mode, image, drawables, settings, config, names):
    """The job and where its layers go (parent, position: directly above the source layer)."""
    if mode == "txt2img":
        if len(drawables) == 1:
            layer = drawables[0]
            anchor = (layer.get_parent(), image.get_item_position(layer))
        else:
            anchor = (None, 0)
        return gimp_jobs.txt2img(image, settings, config), anchor
    layer = gimp_jobs.one_layer(drawables)
    anchor = (layer.get_parent(), image.get_item_position(layer))
    if mode == "outpaint":
        return gimp_jobs.outpaint(image, layer, settings, config), anchor
    if mode == "xyz":
        return gimp_jobs.xyz_plot(image, layer, settings, config), anchor
    return gimp_jobs.img2img(image, layer, settings, config, names), anchor


def reuse_layer_settings(settings, source: Gimp.Layer, address: Address, token: str) -> None:
    """A result layer's infotext, read by the daemon's own parser, over the settings."""
    parasite = source.get_parasite(INFOTEXT_PARASITE)
    if parasite is None:
        raise gimp_jobs.UserError(f"layer \"{source.get_name()}\" has no sdhost parameters")
    try:
        with connect(address, token, timeout=10) as client:
            reuse_request(settings, client.read_infotext(parasite_text(parasite.get_data())))
    except (OSError, DaemonError) as error:
        raise DaemonUnavailable(f"cannot read the layer's parameters: {error}") from error


def run_interrogate(procedure, run_mode, image, drawables, config, choices: Choices):
    """A prompt from the layer, as A1111's "Interrogate CLIP" / "Interrogate DeepBooru" write it:
    returned, kept on the layer (parasite) and handed to the next sdhost dialog as its prompt."""
    if run_mode == Gimp.RunMode.INTERACTIVE and not gimp_dialog.show(procedure, config, "Interrogate"):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    try:
        layer = gimp_jobs.one_layer(drawables)
        address = daemon_address(config, preferences())
    except (gimp_jobs.UserError, ValueError) as error:
        return fail(procedure, str(error), Gimp.PDBStatusType.CALLING_ERROR)
    method = from_slug(config.get_property("method"), INTERROGATE_METHODS)
    Gimp.progress_init(f"sdhost: interrogating ({method})…")
    try:
        caption = interrogate(layer, method, address, preferences().token)
    except DaemonUnavailable as error:
        return fail(procedure, str(error))
    finally:
        Gimp.progress_end()
    data = parasite_payload(caption)
    layer.attach_parasite(Gimp.Parasite.new(INTERROGATION_PARASITE, Gimp.PARASITE_PERSISTENT, data))
    image.attach_parasite(Gimp.Parasite.new(PROMPT_PARASITE, 0, data))
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message(f"Prompt for the next sdhost dialog:\n{caption}")
    return success(procedure, caption)


def interrogate(layer: Gimp.Layer, method: str, address: Address, token: str) -> str:
    """The layer's caption from the daemon (raises DaemonUnavailable with the reason)."""
    region = layer_region(layer)
    picture = Image(read(layer, region), region.width, region.height)
    try:
        with connect(address, token) as client:
            return client.interrogate(picture, method)
    except DaemonError as error:
        raise DaemonUnavailable(f"interrogation failed: {error.message}") from error
    except (ProtocolError, ConnectionError) as error:
        raise DaemonUnavailable(lost(error)) from error


def run_upscale(procedure, run_mode, image, drawables, config, choices: Choices):
    """The layer through an upscaler (A1111's extras): a new layer above it, the canvas grown
    to hold it when asked."""
    if run_mode == Gimp.RunMode.INTERACTIVE and not gimp_dialog.show(procedure, config, "Upscale"):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    try:
        layer = gimp_jobs.one_layer(drawables)
        prefs = preferences()
        address = daemon_address(config, prefs)
    except (gimp_jobs.UserError, ValueError) as error:
        return fail(procedure, str(error), Gimp.PDBStatusType.CALLING_ERROR)
    upscaler = from_slug(config.get_property("upscaler"), choices.upscalers)
    scale = config.get_property("scale")
    region = layer_region(layer)
    picture = Image(read(layer, region), region.width, region.height)
    Gimp.progress_init(f"sdhost: upscaling with {upscaler}…")
    try:
        ensure_daemon(address, prefs)
        with connect(address, prefs.token) as client:
            result = client.upscale(picture, upscaler, scale)
    except DaemonUnavailable as error:
        return fail(procedure, str(error))
    except DaemonError as error:
        message = too_old("upscale") if error.code == "unknown_request" else error.message
        return fail(procedure, f"upscaling failed: {message}")
    except (ProtocolError, ConnectionError) as error:
        return fail(procedure, lost(error))
    finally:
        Gimp.progress_end()
    image.undo_group_start()
    try:
        if config.get_property("grow-canvas"):
            dx, dy = grow_canvas(image, Region(region.x, region.y, result.width, result.height))
            region = region.shifted(dx, dy)
        out = Gimp.Layer.new(image, f"{layer.get_name()} ({upscaler} ×{scale:g})", result.width,
                             result.height, layer_type(image), 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(out, layer.get_parent(), image.get_item_position(layer))
        fill(out, result.data, result.width, result.height)
        out.set_offsets(region.x, region.y)
    finally:
        image.undo_group_end()
    note_last_job(image, {"procedure": procedure.get_name(), "status": "done", "previews": 0,
                          "layers": [out.get_name()], "warnings": []})
    Gimp.displays_flush()
    return success(procedure)


def run_info(procedure, run_mode, image, drawables, config, choices: Choices):
    """Shows (and returns) the infotext a result layer carries."""
    if len(drawables) != 1:
        return fail(procedure, "select one layer", Gimp.PDBStatusType.CALLING_ERROR)
    parasite = drawables[0].get_parasite(INFOTEXT_PARASITE)
    if parasite is None:
        return fail(procedure, "this layer has no sdhost parameters", Gimp.PDBStatusType.CALLING_ERROR)
    text = parasite_text(parasite.get_data())
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message(text)
    return success(procedure, text)


def run_repeat(procedure, run_mode, image, drawables, config, choices: Choices):
    """Runs the image's last sdhost job again with its settings, on the current layer and
    selection (a random seed stays random)."""
    name, values = image_settings(image)
    if not name:
        return fail(procedure, "no sdhost job has run on this image yet", Gimp.PDBStatusType.CALLING_ERROR)
    target = Gimp.get_pdb().lookup_procedure(name)
    if target is None:
        return fail(procedure, f"the procedure {name} is not installed")
    repeat = target.create_config()
    repeat.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    repeat.set_property("image", image)
    repeat.set_core_object_array("drawables", list(drawables))
    set_properties(repeat, values, image)
    if config.get_property("socket"):
        repeat.set_property("socket", config.get_property("socket"))
    result = target.run(repeat)
    status = result.index(0)
    if status != Gimp.PDBStatusType.SUCCESS:
        error = Gimp.get_pdb().get_last_error() or ""
        return procedure.new_return_values(status, GLib.Error(error))
    return success(procedure)


def run_reuse_settings(procedure, run_mode, image, drawables, config, choices: Choices):
    """A result layer's parameters (its infotext) become the image's sdhost settings: the
    next dialog opens with them and Repeat runs them."""
    if len(drawables) != 1:
        return fail(procedure, "select one layer", Gimp.PDBStatusType.CALLING_ERROR)
    prefs = preferences()
    settings = settings_from(lambda _: None, set(), "img2img", choices)
    try:
        reuse_layer_settings(settings, drawables[0], daemon_address(config, prefs), prefs.token)
    except gimp_jobs.UserError as error:
        return fail(procedure, str(error), Gimp.PDBStatusType.CALLING_ERROR)
    except (DaemonUnavailable, ValueError) as error:
        return fail(procedure, str(error))
    text = parasite_text(drawables[0].get_parasite(INFOTEXT_PARASITE).get_data())
    name = "sdhost-inpaint" if "Mask blur:" in text else "sdhost-img2img"
    values = properties_from(settings, set(PROPERTIES))
    keep_settings(image, name, values)
    if run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message(f"The next sdhost dialog opens with the settings of \"{drawables[0].get_name()}\".")
    return success(procedure)


def run_preferences(procedure, run_mode, image, drawables, config, choices: Choices):
    """The daemon's address and token, and whether to start it: set once, used by every
    procedure."""
    prefs = preferences()
    fields = {"address": "address", "token": "token", "start-daemon": "start_daemon",
              "daemon-command": "daemon_command"}
    if run_mode == Gimp.RunMode.INTERACTIVE:
        for prop, attr in fields.items():
            config.set_property(prop, getattr(prefs, attr))
        if not gimp_dialog.show(procedure, config, "sdhost preferences"):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    for prop, attr in fields.items():
        setattr(prefs, attr, config.get_property(prop))
    try:
        Address.parse(prefs.address)
    except ValueError as error:
        return fail(procedure, str(error), Gimp.PDBStatusType.CALLING_ERROR)
    try:
        prefs.save(Gimp.directory())
    except OSError as error:
        return fail(procedure, f"cannot save the preferences: {error}")
    return success(procedure)


RUNNERS: dict[str, Callable] = {
    "sdhost-interrogate": run_interrogate,
    "sdhost-upscale": run_upscale,
    "sdhost-layer-info": run_info,
    "sdhost-repeat": run_repeat,
    "sdhost-reuse-settings": run_reuse_settings,
    "sdhost-preferences": run_preferences,
}
RUNNERS.update({name: run_generation for name in GENERATORS})
