//! The autoencoder's encoder: image → moments of the latent Gaussian.

use super::blocks::{normalize, Downsample, MidBlock, ResnetBlock};
use super::VaeConfig;
use crate::models::layers::{Conv2d, ConvSpec, GroupNorm};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::Tensor;

/// One resolution level: ResNet blocks, then a Downsample except at the last level.
struct DownLevel {
    blocks: Vec<ResnetBlock>,
    downsample: Option<Downsample>,
}

/// LDM `Encoder` (keys `conv_in`, `down.I.block.J`, `down.I.downsample`, `mid`, `norm_out`, `conv_out`).
pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownLevel>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// Loads the encoder under `vb` (`first_stage_model.encoder`).
    pub fn new(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let levels = cfg.ch_mult.len();
        let mut ch = cfg.ch;
        let mut down = Vec::with_capacity(levels);
        for (i, &mult) in cfg.ch_mult.iter().enumerate() {
            let level = vb.pp(format!("down.{i}"));
            let out = cfg.ch * mult;
            let mut blocks = Vec::new();
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(&level.pp(format!("block.{j}")), ch, out)?);
                ch = out;
            }
            let downsample = if i + 1 != levels {
                Some(Downsample::new(&level.pp("downsample"), ch)?)
            } else {
                None
            };
            down.push(DownLevel { blocks, downsample });
        }
        Ok(Self {
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.in_channels, cfg.ch, ConvSpec::SAME3)?,
            down,
            mid: MidBlock::new(&vb.pp("mid"), ch)?,
            norm_out: normalize(&vb.pp("norm_out"), ch)?,
            conv_out: Conv2d::new(&vb.pp("conv_out"), ch, 2 * cfg.z_channels, ConvSpec::SAME3)?,
        })
    }

    /// Image in [−1, 1], NCHW → `2·z_channels` moment channels at 1/2^(levels−1) resolution.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(&h);
            }
            if let Some(d) = &level.downsample {
                h = d.forward(&h);
            }
        }
        let h = self.mid.forward(&h);
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}
