"""The daemon's network listing through the Python client: LoRA metadata, preview, hashes,
the `sd_vae` choices, and a VAE that is not there as a warning of the job."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from sdhost_client import Client, Image


def rgba(width: int, height: int) -> Image:
    return Image(bytes((x * 5 + y * 3 + c * 40) % 256 for y in range(height) for x in range(width)
                       for c in range(4)), width, height, "rgba8")


def test_networks_come_with_their_metadata(daemon):
    with daemon.client() as client:
        assert {n["kind"] for n in client.welcome["networks"]} == {"lora", "lycoris", "vae"}
        lora = client.networks("lora")
        assert [n["name"] for n in lora] == ["detail"]
        detail = lora[0]
        assert detail["alias"] == "add_detail"
        assert detail["base_model"] == "SD1" and detail["base_model_version"] == "sd_v1"
        assert detail["trigger_words"] == [{"tag": "detailed", "count": 9}, {"tag": "sharp", "count": 4}]
        assert os.path.isfile(detail["preview"]) and detail["preview"].endswith("detail.preview.png")
        assert Client.prompt_tag(detail) == "<lora:add_detail:0.6>"
        assert [n["name"] for n in client.networks("lycoris")] == ["loha"]
        assert client.vae_choices() == ["Automatic", "None", "kl-f8.safetensors"]
        with pytest.raises(ValueError):
            client.networks("checkpoint")

        # The addnet hash (sha256 after the safetensors header), once the daemon has it.
        data = open(detail["file"], "rb").read()
        header = int.from_bytes(data[:8], "little")
        addnet = hashlib.sha256(data[8 + header:]).hexdigest()[:12]
        deadline = time.monotonic() + 60
        while client.networks("lora")[0]["hash"] is None:
            assert time.monotonic() < deadline, "the hash never came"
            time.sleep(0.1)
        assert client.networks("lora")[0]["hash"] == addnet


def test_a_vae_that_is_not_there_is_a_warning(daemon):
    with daemon.client() as client:
        job = client.img2img(rgba(32, 32), params={"steps": 2, "seed": 1,
                                                   "override_settings": {"sd_vae": "gone.pt"}})
        results = client.run(job)
        assert len(results) == 1
        assert any("gone.pt" in w for w in client.warnings), client.warnings
        assert "VAE" not in results[0]["infotext"]
