//! The autoencoder's decoder: latent → image in [−1, 1].

use super::blocks::{norm_swish_conv_in_bands, normalize, MidBlock, ResnetBlock};
use super::VaeConfig;
use crate::models::layers::{Conv2d, ConvSpec, GroupNorm, Upsample};
use crate::models::row_bands::{size4, RowBands};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::Tensor;

/// One resolution level: ResNet blocks, then an Upsample except at level 0.
struct UpLevel {
    blocks: Vec<ResnetBlock>,
    upsample: Option<Upsample>,
}

/// LDM `Decoder` (keys `conv_in`, `mid`, `up.I.block.J`, `up.I.upsample`, `norm_out`, `conv_out`).
pub struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    /// Levels in execution order (from the deepest, `up.{levels-1}`, to `up.0`).
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// Loads the decoder under `vb` (`first_stage_model.decoder`).
    pub fn new(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let levels = cfg.ch_mult.len();
        let mut ch = cfg.ch * cfg.ch_mult[levels - 1];
        let conv_in = Conv2d::new(&vb.pp("conv_in"), cfg.z_channels, ch, ConvSpec::SAME3)?;
        let mid = MidBlock::new(&vb.pp("mid"), ch)?;
        let mut up = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let level = vb.pp(format!("up.{i}"));
            let out = cfg.ch * cfg.ch_mult[i];
            let mut blocks = Vec::new();
            for j in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(&level.pp(format!("block.{j}")), ch, out)?);
                ch = out;
            }
            let upsample = if i != 0 {
                Some(Upsample::new(&level.pp("upsample"), ch)?)
            } else {
                None
            };
            up.push(UpLevel { blocks, upsample });
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: normalize(&vb.pp("norm_out"), ch)?,
            conv_out: Conv2d::new(&vb.pp("conv_out"), ch, cfg.out_channels, ConvSpec::SAME3)?,
        })
    }

    /// Latent (after `post_quant_conv`) → image in about [−1, 1].
    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid.forward(&self.conv_in.forward(z));
        for level in &self.up {
            for block in &level.blocks {
                h = block.forward(&h);
            }
            if let Some(u) = &level.upsample {
                h = u.forward_in_bands(&h);
            }
        }
        self.output(&h)
    }

    /// `conv_out(swish(norm_out(h)))`, in row bands when `h` is large: the full-resolution
    /// normalised copy of `h` is never built whole.
    fn output(&self, h: &Tensor) -> Tensor {
        let bands = RowBands::for_activation(size4(h), h.kind());
        if bands.is_whole() {
            return self.conv_out.forward(&self.norm_out.forward(h).silu_());
        }
        norm_swish_conv_in_bands(&self.norm_out, &self.conv_out, h, bands, |_, _| None)
    }
}
