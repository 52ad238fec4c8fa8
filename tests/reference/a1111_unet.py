"""diffusers' UNet walked the way A1111 runs the LDM UNet, for sizes that are not multiples of 64.

diffusers' `UNet2DConditionModel.forward` passes `upsample_size` to its upsamplers, which then
resize straight to the next skip connection's size. A1111 runs LDM's `UNetModel`, whose
`Upsample` always doubles the size, and patches the concatenation with the skip connection
(`modules/sd_hijack_unet.py: TorchHijackForUnet.cat`): a tensor whose last two sides differ
from the skip tensor's is nearest-resized to them first. At latent sides that are multiples of
2^levels both agree; elsewhere (96x64 pixels with SD 1.5, any odd latent side) they give other
pictures. `A1111UNet` keeps diffusers' blocks (the same weights, the same layers) and replaces
only the walk, so every reference built on `build_unet` follows A1111.

SDXL-style UNets (those with `label_emb`, diffusers' `add_embedding`) take sgm's vector `y`
as ldm/sgm's `UNetModel.forward` does: `emb = time_embed(t) + label_emb(y)`, where `y` is
already [pooled | 256-wide embeddings of the size scalars] (sd2_sdxl_models.sdxl_vector).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel


def a1111_cat(h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """`TorchHijackForUnet.cat` for the UNet's two-tensor concatenations."""
    if h.shape[-2:] != skip.shape[-2:]:
        h = F.interpolate(h, skip.shape[-2:], mode="nearest")
    return torch.cat([h, skip], dim=1)


class A1111UNet(UNet2DConditionModel):
    """diffusers' SD 1.x UNet whose forward follows LDM's order with A1111's cat rule."""

    def forward(self, sample, timestep, encoder_hidden_states, y=None, return_dict=True, **_unused):
        emb = self.time_embedding(self.get_time_embed(sample=sample, timestep=timestep))
        if y is not None:
            emb = emb + self.add_embedding(y)  # sgm's label_emb (Linear, SiLU, Linear)
        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, states = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h, states = block(hidden_states=h, temb=emb)
            skips.extend(states)
        h = self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        for block in self.up_blocks:
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                h = resnet(a1111_cat(h, skips.pop()), emb)
                if attentions is not None:
                    h = attentions[j](h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            for upsampler in block.upsamplers or []:
                h = upsampler(h)  # no output size: x2, as LDM's Upsample
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return SimpleNamespace(sample=h) if return_dict else (h,)

    def diffusers_forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None) -> torch.Tensor:
        """diffusers' own walk, to show where it parts from A1111's (SDXL: `added_cond_kwargs`
        = {"text_embeds": pooled, "time_ids": raw size scalars})."""
        return UNet2DConditionModel.forward(
            self, sample, timestep, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        ).sample
