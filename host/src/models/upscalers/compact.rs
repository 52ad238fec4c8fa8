//! Real-ESRGAN's compact network, SRVGGNetCompact (spandrel `architectures/Compact/__arch/
//! SRVGG.py`): `body.0` convolution, then PReLU and convolution pairs in one list, a pixel
//! shuffle, and the nearest-upsampled input added so the network learns the residual.

use tch::Tensor;

use crate::models::layers::{Conv2d, ConvSpec};
use crate::weights::{Result, VarBuilder};

/// The shapes of an SRVGGNetCompact, read from its state dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactConfig {
    /// Input channels.
    pub in_nc: i64,
    /// Output channels.
    pub out_nc: i64,
    /// Feature width.
    pub nf: i64,
    /// Convolutions between the first and the last.
    pub convs: i64,
    /// The pixel-shuffle factor.
    pub scale: i64,
}

/// SRVGGNetCompact with PReLU activations (the only kind spandrel builds).
pub struct Compact {
    config: CompactConfig,
    convs: Vec<Conv2d>,
    prelus: Vec<Tensor>,
}

impl Compact {
    /// Loads the network under `vb` (`body.0` … `body.{2·convs + 2}`).
    pub fn new(vb: &VarBuilder, config: CompactConfig) -> Result<Self> {
        let c = &config;
        let body = vb.pp("body");
        let mut convs = vec![Conv2d::new(&body.pp(0), c.in_nc, c.nf, ConvSpec::SAME3)?];
        let mut prelus = vec![body.pp(1).get("weight", &[c.nf])?];
        for i in 0..c.convs {
            convs.push(Conv2d::new(
                &body.pp(2 + 2 * i),
                c.nf,
                c.nf,
                ConvSpec::SAME3,
            )?);
            prelus.push(body.pp(3 + 2 * i).get("weight", &[c.nf])?);
        }
        let last = c.out_nc * c.scale * c.scale;
        convs.push(Conv2d::new(
            &body.pp(2 + 2 * c.convs),
            c.nf,
            last,
            ConvSpec::SAME3,
        )?);
        Ok(Self {
            config,
            convs,
            prelus,
        })
    }

    /// The shapes it was built with.
    pub fn config(&self) -> &CompactConfig {
        &self.config
    }

    /// `SRVGGNetCompact.forward`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut out = x.shallow_clone();
        for (conv, prelu) in self.convs.iter().zip(&self.prelus) {
            out = conv.forward(&out).prelu(prelu);
        }
        let last = self
            .convs
            .last()
            .expect("at least the first and last convolutions");
        out = last.forward(&out).pixel_shuffle(self.config.scale);
        let s = self.config.scale;
        let (_, _, h, w) = x.size4().expect("NCHW image");
        // `F.interpolate(x, scale_factor=s, mode="nearest")` passes the factor to the kernel.
        let base = x.upsample_nearest2d([h * s, w * s], Some(s as f64), Some(s as f64));
        out + base
    }
}
