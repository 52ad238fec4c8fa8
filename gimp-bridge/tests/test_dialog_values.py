"""The dialog's values: labelled choices to request fields and back, network pickers that add
their tags to the prompt, settings kept on the image, progress with time left, and live
previews reaching the main thread."""

from __future__ import annotations

import pytest

from sdhost_bridge import (
    INPAINT_AREAS, MASK_MODES, MASKED_CONTENT, PROPERTIES, RESIZE_MODES, Choices, JobRunner,
    Settings, cell_name, eta_text, fetch_choices, position, properties_from,
    read_settings_record, reuse_request, settings_from, settings_record, slug, with_embedding,
    with_network,
)
from sdhost_client import Image
from sdhost_link import Address

LORA = {"kind": "lora", "name": "detail", "alias": "add_detail", "preferred_weight": 0.6,
        "activation_text": None, "trigger_words": [{"tag": "detailed", "count": 9}], "base_model": "SD1"}


def test_labelled_choices_are_a1111s_positions():
    assert position("crop-and-resize", RESIZE_MODES) == 1
    assert position("latent-nothing", MASKED_CONTENT) == 3
    assert position("only-masked", INPAINT_AREAS) == 1
    assert position("inpaint-not-masked", MASK_MODES) == 1
    with pytest.raises(ValueError, match="just-resize"):
        position("stretch", RESIZE_MODES)


def test_dialog_values_become_settings_and_back():
    values = {"prompt": "a cat", "sampler": "euler-a", "scheduler": "karras", "steps": 12,
              "resize-mode": "resize-and-fill", "mask-mode": "inpaint-not-masked",
              "masked-content": "latent-noise", "inpaint-area": "whole-picture", "vae": "kl-f8-safetensors",
              "mask-blur": 6, "seed": 5}
    choices = Choices(networks=({"kind": "vae", "name": "kl-f8.safetensors", "alias": "kl-f8"},))
    settings = settings_from(values.get, set(values), "inpaint", choices)
    assert (settings.sampler_name, settings.scheduler, settings.steps) == ("Euler a", "Karras", 12)
    assert settings.resize_mode == 2 and settings.inpainting_mask_invert is True
    assert settings.inpainting_fill == 2 and settings.inpaint_full_res is False
    assert settings.sd_vae == "kl-f8.safetensors" and settings.mask_blur == 6
    assert properties_from(settings, set(values)) == values


def test_network_pickers_add_tags_as_a1111s_cards_do():
    assert with_network("a castle", LORA) == "a castle, <lora:add_detail:0.6>"
    assert with_network("a castle,", LORA, 1.2) == "a castle, <lora:add_detail:1.2>"
    # Picked twice: once in the prompt.
    once = with_network("a castle", LORA)
    assert with_network(once, LORA) == once
    hyper = {"kind": "hypernetwork", "alias": "anime", "activation_text": "anime style"}
    assert with_network("", hyper) == "<hypernet:anime:1>, anime style"
    assert with_embedding("a castle", "EasyNegative") == "a castle, EasyNegative"
    assert with_embedding("EasyNegative, a castle", "EasyNegative") == "EasyNegative, a castle"
    assert Choices().network_label(LORA) == "add_detail [SD1] — detailed"


def test_the_images_settings_record_round_trips():
    text = settings_record("sdhost-inpaint", {"prompt": "un café", "steps": 3, "sketch": object()})
    assert read_settings_record(text) == ("sdhost-inpaint", {"prompt": "un café", "steps": 3})
    assert read_settings_record("garbage") == ("", {})


def test_a_layers_infotext_becomes_dialog_values(daemon):
    text = ("a cat\nNegative prompt: dog\nSteps: 12, Sampler: Euler a, Schedule type: Karras, CFG scale: 6.5, "
            "Seed: 77, Size: 64x48, Denoising strength: 0.4, Mask blur: 8, Inpaint area: Only masked, "
            "Masked area padding: 16, Masked content: latent noise")
    with daemon.client() as client:
        settings = reuse_request(Settings(), client.read_infotext(text))
    values = properties_from(settings, set(PROPERTIES))
    assert values["sampler"] == "euler-a" and values["seed"] == 77 and values["steps"] == 12
    assert values["inpaint-area"] == "only-masked" and values["masked-content"] == "latent-noise"
    assert values["negative-prompt"] == "dog" and values["mask-blur"] == 8


def test_pickers_are_filled_from_the_daemon(daemon):
    choices = fetch_choices(Address(path=str(daemon.socket)))
    assert [n["alias"] for n in choices.of_kind("lora")] == ["add_detail"]
    assert choices.vaes == ("Automatic", "None", "kl-f8.safetensors")
    assert slug("add_detail") == "add-detail"


def test_progress_shows_the_time_left():
    assert eta_text(0, 20, 0.0) == "step 0/20"
    assert eta_text(5, 20, 10.0) == "step 5/20, 30 s left"
    assert eta_text(1, 100, 10.0) == "step 1/100, 16 min left"
    assert eta_text(20, 20, 40.0) == "step 20/20"
    assert cell_name([{"axis": "Steps", "value": "10"}, {"axis": "CFG Scale", "value": "5"}], 3) == \
        "Steps: 10, CFG Scale: 5 (3)"


def test_live_previews_reach_the_main_thread(daemon):
    picture = Image(bytes(range(256)) * (32 * 32 * 4 // 256), 32, 32)
    runner = JobRunner(daemon.client, {"params": {"steps": 4, "denoising_strength": 1.0, "seed": 1},
                                       "preview": {"method": "Approx cheap", "every": 1}},
                       [("image", picture)])
    shown = []
    outcome = runner.wait(lambda *_: None, None, shown.append)
    assert outcome.status == "done", outcome.error
    assert shown and all(p.format == "rgba8" and p.width == 4 and p.height == 4 for p in shown)
