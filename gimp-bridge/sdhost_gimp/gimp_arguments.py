"""The procedures' arguments: one definition per property, shared by every procedure that has
it, so scripts use the same names everywhere (`prompt`, `sampler`, `mask-blur` …). Lists come
from the daemon (`Choices`); the labelled lists of A1111's tab are choices, not numbers.
"""

from __future__ import annotations

from gi.repository import Gimp, GObject

from sdhost_bridge import (
    CURRENT_MODEL, INPAINT_AREAS, LIVE_PREVIEWS, MASK_MODES, MASKED_CONTENT, NO_NETWORK,
    RESIZE_MODES, XYZ_AXES, Choices, slug,
)

RW = GObject.ParamFlags.READWRITE


def choice(names, first=None, labels=None) -> Gimp.Choice:
    """A dialog list of names (identifiers from `slug`), shown with `labels` when given."""
    options = Gimp.Choice.new()
    entries = ([first] if first else []) + list(names)
    shown = ([first] if first else []) + list(labels or names)
    for index, (name, label) in enumerate(zip(entries, shown)):
        options.add(slug(name), index, label, "")
    return options


def add_prompt(p: Gimp.Procedure, choices: Choices) -> None:
    """Prompt, model, VAE, and the network pickers that add tags to the prompt."""
    p.add_string_argument("prompt", "Prompt", "Prompt (A1111 syntax)", "", RW)
    p.add_string_argument("negative-prompt", "Negative prompt", "Negative prompt", "", RW)
    p.add_choice_argument("model", "Model", "Checkpoint (current: the daemon's loaded one)",
                          choice(choices.models, CURRENT_MODEL), CURRENT_MODEL, RW)
    p.add_choice_argument("vae", "SD VAE", "VAE (A1111's SD VAE)", choice(choices.vaes),
                          slug(choices.default("sd_vae") or "Automatic"), RW)
    loras = choices.of_kind("lora", "lycoris")
    p.add_choice_argument("lora", "LoRA", "Adds <lora:…> (with its activation text) to the prompt",
                          choice([n["alias"] for n in loras], NO_NETWORK,
                                 [choices.network_label(n) for n in loras]), slug(NO_NETWORK), RW)
    p.add_double_argument("lora-weight", "LoRA weight", "0: the LoRA's preferred weight (else 1)",
                          -4.0, 4.0, 0.0, RW)
    hypernetworks = choices.of_kind("hypernetwork")
    p.add_choice_argument("hypernetwork", "Hypernetwork", "Adds <hypernet:…> to the prompt",
                          choice([n["alias"] for n in hypernetworks], NO_NETWORK,
                                 [choices.network_label(n) for n in hypernetworks]), slug(NO_NETWORK), RW)
    p.add_double_argument("hypernetwork-weight", "Hypernetwork weight", "0: 1", -4.0, 4.0, 0.0, RW)
    p.add_choice_argument("embedding", "Embedding", "Adds a textual-inversion embedding to the prompt",
                          choice(choices.embeddings, NO_NETWORK), slug(NO_NETWORK), RW)


def add_sampling(p: Gimp.Procedure, choices: Choices, denoising: float | None = None) -> None:
    """Sampler, schedule, steps, CFG, seed, batches and size."""
    d = choices.default
    sampler = d("sampler_name") if d("sampler_name") in choices.samplers else choices.samplers[0]
    p.add_choice_argument("sampler", "Sampler", "Sampler", choice(choices.samplers), slug(sampler), RW)
    p.add_choice_argument("scheduler", "Schedule type", "Schedule type", choice(choices.schedules),
                          slug(d("scheduler")), RW)
    p.add_int_argument("steps", "Steps", "Sampling steps", 1, 150, d("steps"), RW)
    p.add_double_argument("cfg-scale", "CFG scale", "Classifier-free guidance", 1.0, 30.0, d("cfg_scale"), RW)
    p.add_double_argument("denoising-strength", "Denoising strength", "0 keeps the image, 1 replaces it",
                          0.0, 1.0, d("denoising_strength") if denoising is None else denoising, RW)
    p.add_int_argument("seed", "Seed", "-1: random", -1, 2**31 - 1, d("seed"), RW)
    p.add_int_argument("batch-count", "Batch count", "Batches run one after another", 1, 16, d("n_iter"), RW)
    p.add_int_argument("batch-size", "Batch size", "Images per batch", 1, 8, d("batch_size"), RW)
    p.add_int_argument("width", "Width", "Generation width (0: automatic)", 0, 4096, 0, RW)
    p.add_int_argument("height", "Height", "Generation height (0: automatic)", 0, 4096, 0, RW)
    p.add_int_argument("clip-skip", "Clip skip", "CLIP layers to skip", 1, 12, d("clip_skip"), RW)


def add_source(p: Gimp.Procedure, choices: Choices) -> None:
    """What an img2img-like job starts from."""
    p.add_choice_argument("resize-mode", "Resize mode", "How the picture is fitted to the size",
                          choice(RESIZE_MODES), slug(RESIZE_MODES[int(choices.default("resize_mode"))]), RW)
    p.add_boolean_argument("use-visible", "Use the visible image",
                           "Start from what is visible instead of the current layer", False, RW)
    p.add_layer_argument("parameters-from", "Reuse parameters of",
                         "A result layer whose prompt and parameters to use (none: the fields above)", True, RW)


def add_inpaint(p: Gimp.Procedure, choices: Choices, masked_content: str | None = None) -> None:
    """Inpainting's settings, and how a selection past the layer's edge is taken."""
    d = choices.default
    p.add_int_argument("mask-blur", "Mask blur", "Pixels", 0, 64, d("mask_blur_x"), RW)
    p.add_choice_argument("mask-mode", "Mask mode", "Regenerate the masked or the unmasked part",
                          choice(MASK_MODES), slug(MASK_MODES[int(bool(d("inpainting_mask_invert")))]), RW)
    p.add_choice_argument("masked-content", "Masked content", "What the masked area starts from",
                          choice(MASKED_CONTENT),
                          masked_content or slug(MASKED_CONTENT[int(d("inpainting_fill"))]), RW)
    p.add_choice_argument("inpaint-area", "Inpaint area", "Only masked: generate the region at full resolution",
                          choice(INPAINT_AREAS), slug(INPAINT_AREAS[1]), RW)
    p.add_int_argument("padding", "Only masked padding", "Pixels around the mask", 0, 256,
                       d("inpaint_full_res_padding"), RW)
    p.add_int_argument("min-context", "Minimum context", "Grow small regions to this size (0: off)",
                       0, 2048, 0, RW)
    p.add_boolean_argument("extend-canvas", "Extend canvas",
                           "A selection past the layer's edge grows the canvas there and is outpainted "
                           "(off: it is clipped to the layer)", False, RW)


def add_delivery(p: Gimp.Procedure) -> None:
    """Live previews, the daemon to use, and a time limit."""
    p.add_choice_argument("live-preview", "Live preview", "Show the image as it forms (a preview layer)",
                          choice(LIVE_PREVIEWS), slug(LIVE_PREVIEWS[1]), RW)
    p.add_int_argument("preview-every", "Preview every", "Show every Nth step", 1, 100, 1, RW)
    add_socket(p)
    p.add_int_argument("time-limit", "Time limit", "Cancel after this many seconds (0: none)", 0, 86400, 0, RW)


def add_socket(p: Gimp.Procedure) -> None:
    p.add_string_argument("socket", "Daemon socket",
                          "The daemon's socket or HOST:PORT (empty: the preferences')", "", RW)


def add_xyz(p: Gimp.Procedure) -> None:
    """X/Y/Z plot's axes (A1111's labels, values in its syntax)."""
    for axis, default in (("x", "Seed"), ("y", "Nothing"), ("z", "Nothing")):
        upper = axis.upper()
        p.add_choice_argument(f"{axis}-type", f"{upper} type", f"{upper} axis",
                              choice(XYZ_AXES), slug(default), RW)
        p.add_string_argument(f"{axis}-values", f"{upper} values",
                              "Values: 10,20 or 1-5 or 5-9 (+2) or 0.3-0.7 [5]", "", RW)
    p.add_boolean_argument("draw-legend", "Draw legend", "Axis values on the grid", True, RW)
