"""What the whole-job references (img2img_reference.py, inpaint_reference.py) need for SD 2.x,
SDXL and the refiner: networks, prediction type, VAE scale and A1111's prompt conditioning
for a short prompt (one chunk, no emphasis), in spec sd2-sdxl.md's terms.

* prediction (§1.6, §6): `--prediction eps|v` > safetensors metadata `modelspec.prediction_type`
  (`v` / `epsilon`) > for 4-channel SD2 A1111's v test (§1.3, at the file's widths) > eps.
  v-models go through k-diffusion's CompVisVDenoiser, eps-models through CompVisDenoiser.
* prompts: SD2 → ln_final(penultimate) of [BOS, ids, EOS, 0 …] (§2.2–2.3); SDXL/refiner → a
  (crossattn, vector) pair: [CLIP-L hidden[-2] (EOS padding) | bigG hidden[-2] (0 padding)],
  [pooled | size embeddings of (height, width) of the job, crop (0, 0), and (refiner) aesthetic
  6.0 for prompts / 2.5 for negatives] (§3.2–3.4); an empty negative prompt is zeros in
  crossattn and pooled, sizes kept (§3.5).
* VAE scale 0.18215 (SD2) or 0.13025 (SDXL) (§5).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from safetensors import safe_open

from ldm_to_diffusers import build_vae
from sd2_sdxl_models import (
    SCALE, SD2, build_sgm_unet, build_text, detect_family, sdxl_vector, size_scalars,
)

BOS, EOS = 49406, 49407


def file_prediction(path: str) -> str | None:
    with safe_open(path, "pt") as f:
        value = (f.metadata() or {}).get("modelspec.prediction_type")
    return {"v": "v", "v_prediction": "v", "epsilon": "eps", "eps": "eps"}.get(value)


@torch.no_grad()
def a1111_v_test(unet) -> bool:
    """`is_using_v_parameterization_for_sd2` at the file's widths: mean(out − x) < −1 ⇔ v."""
    x = torch.full((1, 4, 8, 8), 0.5)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return (out - x).mean().item() < -1


class PromptEncoder:
    """A1111's conditioning of a one-chunk prompt without emphasis, per family."""

    def __init__(self, sd, family: str, bpe):
        self.family, self.bpe = family, bpe
        self.models = build_text(sd, family)

    def ids(self, text: str) -> list[int]:
        return self.bpe.encode(text.strip().lower())[:75]

    @torch.no_grad()
    def __call__(self, text: str, negative: bool, width: int, height: int):
        ids = self.ids(text)
        zero_padded = torch.tensor([[BOS] + ids + [EOS] + [0] * (75 - len(ids))])
        if self.family == SD2:
            return self.models["text"](input_ids=zero_padded).last_hidden_state[0]
        out = self.models["big_g"](input_ids=zero_padded, output_hidden_states=True)
        parts, pooled = [out.hidden_states[-2][0]], out.text_embeds
        if "clip_l" in self.models:
            eos_padded = torch.tensor([[BOS] + ids + [EOS] * (76 - len(ids))])
            parts.insert(0, self.models["clip_l"](input_ids=eos_padded, output_hidden_states=True).hidden_states[-2][0])
        crossattn = torch.cat(parts, dim=-1)
        if negative and text == "":
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        vector = sdxl_vector(pooled, size_scalars(self.family, width, height, aesthetic=2.5 if negative else 6.0))
        return crossattn, vector[0]


def load_job(path: str, sd, bpe, prediction: str | None = None) -> SimpleNamespace:
    """Networks and constants of an SD2/SDXL/refiner file for a job."""
    family = detect_family(sd)
    unet = build_sgm_unet(sd)
    if prediction is None:
        prediction = file_prediction(path)
    if prediction is None:
        prediction = "v" if family == SD2 and unet.config.in_channels == 4 and a1111_v_test(unet) else "eps"
    return SimpleNamespace(family=family, unet=unet, vae=build_vae(sd), encode=PromptEncoder(sd, family, bpe),
                           scale=SCALE[family], v=prediction == "v", alphas=alphas_cumprod(sd))


def alphas_cumprod(sd) -> torch.Tensor:
    """The file's ᾱ buffer; sgm's SDXL files have none and A1111 computes SD's scaled-linear
    schedule (`LegacyDDPMDiscretization`): betas from √0.00085 to √0.012, squared, float64."""
    if "alphas_cumprod" in sd:
        return sd["alphas_cumprod"].float()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class SgmWrapper(torch.nn.Module):
    """sgm's model call as k-diffusion's CompVis wrappers expect it: alphas_cumprod and
    apply_model(x, t, (crossattn, vector)); t rounded to fp16 as A1111's apply_model hijack."""

    def __init__(self, unet, alphas_cumprod):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)

    def apply_model(self, x, t, cond):
        crossattn, vector = cond
        return self.unet(x, t.half().float(), encoder_hidden_states=crossattn, y=vector).sample


class SgmCfg:
    """A1111's CFG for one (crossattn, vector) cond per image: rows = conds, then unconds."""

    def __init__(self, inner, cond, uncond, count: int, scale: float):
        self.inner, self.scale, self.count = inner, scale, count
        self.crossattn = torch.stack([cond[0]] * count + [uncond[0]] * count)
        self.vector = torch.stack([cond[1]] * count + [uncond[1]] * count)

    def __call__(self, x, sigma):
        d = self.inner(torch.cat([x, x]), sigma[:1].expand(2 * self.count), cond=(self.crossattn, self.vector))
        c, u = d[: self.count], d[self.count:]
        return u + (c - u) * self.scale
