//! LDM `ResBlock`: two normalised 3×3 convolutions with the timestep embedding added between.

use crate::models::layers::{Conv2d, ConvSpec, GroupNorm, Linear};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::Tensor;

use super::{GROUPS, NORM_EPS};

/// Residual block with timestep conditioning (`in_layers`, `emb_layers`, `out_layers`).
pub struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    emb_proj: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip_connection: Option<Conv2d>,
}

impl ResBlock {
    /// Loads a block mapping `in_ch` to `out_ch` channels with a `temb_dim` embedding.
    pub fn new(vb: &VarBuilder, in_ch: i64, out_ch: i64, temb_dim: i64) -> Result<Self> {
        Ok(Self {
            in_norm: GroupNorm::new(&vb.pp("in_layers.0"), GROUPS, in_ch, NORM_EPS, true)?,
            in_conv: Conv2d::new(&vb.pp("in_layers.2"), in_ch, out_ch, ConvSpec::SAME3)?,
            emb_proj: Linear::new(&vb.pp("emb_layers.1"), temb_dim, out_ch, true)?,
            out_norm: GroupNorm::new(&vb.pp("out_layers.0"), GROUPS, out_ch, NORM_EPS, true)?,
            out_conv: Conv2d::new(&vb.pp("out_layers.3"), out_ch, out_ch, ConvSpec::SAME3)?,
            skip_connection: if in_ch == out_ch {
                None
            } else {
                Some(Conv2d::new(
                    &vb.pp("skip_connection"),
                    in_ch,
                    out_ch,
                    ConvSpec::POINTWISE,
                )?)
            },
        })
    }

    /// `skip(x) + out_layers(in_layers(x) + emb_layers(emb))`.
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        // Activations and sums go in place into tensors made here, so each full-size
        // activation is freed as soon as it is used (the peak memory at 64×64 latents).
        let mut h = self.in_conv.forward(&self.in_norm.forward(x).silu_());
        h += self
            .emb_proj
            .forward(&emb.silu())
            .unsqueeze(-1)
            .unsqueeze(-1);
        let mut h = self.out_conv.forward(&self.out_norm.forward(&h).silu_());
        match &self.skip_connection {
            Some(skip) => h += skip.forward(x),
            None => h += x,
        }
        h
    }
}
