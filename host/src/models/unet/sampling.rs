//! Resolution changes between UNet levels.

use crate::error::Result;
use crate::models::layers::{Conv2d, ConvSpec};
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

/// Nearest-neighbour ×2 followed by a 3×3 convolution (`conv`).
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// Loads `conv` for `channels` channels.
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&vb.pp("conv"), channels, channels, ConvSpec::SAME3)?,
        })
    }

    /// Doubles height and width, or matches `size` when a skip connection has odd size.
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (_, _, h, w) = x.size4().expect("UNet features are NCHW");
        let (oh, ow) = size.unwrap_or((2 * h, 2 * w));
        self.conv
            .forward(&x.upsample_nearest2d([oh, ow], None, None))
    }
}
