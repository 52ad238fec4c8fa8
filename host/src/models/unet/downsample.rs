//! Downsampling between UNet levels (upsampling is the shared `layers::Upsample`).

use crate::models::layers::{Conv2d, ConvSpec};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::Tensor;

/// Strided 3×3 convolution halving the resolution (`op`).
pub struct Downsample {
    op: Conv2d,
}

impl Downsample {
    /// Loads `op` for `channels` channels.
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        let spec = ConvSpec {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        Ok(Self {
            op: Conv2d::new(&vb.pp("op"), channels, channels, spec)?,
        })
    }

    /// Halves height and width.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.op.forward(x)
    }
}
