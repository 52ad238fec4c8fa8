//! ESRGAN's RRDBNet in spandrel's "old" key layout (`model.0`, `model.1.sub.N.RDBk.convj.0`,
//! …; spandrel `architectures/ESRGAN/__arch/RRDB.py`), with ESRGAN+'s extra 1×1 paths and
//! Real-ESRGAN's pixel-unshuffled input. Files in the new (basicsr) layout are renamed to this
//! one before they get here (`upscale::detect`), as spandrel does.

use tch::Tensor;

use super::{leaky_relu, pad_to_multiple_reflect};
use crate::models::layers::{Conv2d, ConvSpec};
use crate::weights::{Result, VarBuilder};

/// The shapes of an RRDBNet, read from its state dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EsrganConfig {
    /// Input channels of the first convolution (3, or 12/48 after a pixel unshuffle).
    pub in_nc: i64,
    /// Output channels.
    pub out_nc: i64,
    /// Feature width (`num_filters`).
    pub nf: i64,
    /// Growth channels of each dense block (`gc`).
    pub gc: i64,
    /// RRDB blocks in the trunk.
    pub blocks: i64,
    /// ×2 nearest-upsample + convolution stages (log2 of the body's scale).
    pub upsamples: i64,
    /// ESRGAN+'s 1×1 residual paths in every dense block.
    pub plus: bool,
    /// Real-ESRGAN's pixel-unshuffle factor of the input (2 or 4), if any.
    pub shuffle: Option<i64>,
}

impl EsrganConfig {
    /// The body's scale (`2 ** upsamples`).
    pub fn body_scale(&self) -> i64 {
        1 << self.upsamples
    }

    /// The scale from input to output pixels (spandrel's descriptor `scale`).
    pub fn scale(&self) -> i64 {
        self.body_scale() / self.shuffle.unwrap_or(1)
    }
}

/// `LeakyReLU(0.2)`, ESRGAN's activation.
fn leaky(x: &Tensor) -> Tensor {
    leaky_relu(x, 0.2)
}

/// `ResidualDenseBlock_5C`: five 3×3 convolutions over the growing concatenation.
struct DenseBlock {
    convs: Vec<Conv2d>,
    conv1x1: Option<Tensor>,
}

impl DenseBlock {
    fn new(vb: &VarBuilder, c: &EsrganConfig) -> Result<Self> {
        let convs = (0..5)
            .map(|j| {
                let out = if j == 4 { c.nf } else { c.gc };
                Conv2d::new(
                    &vb.pp(format!("conv{}", j + 1)).pp(0),
                    c.nf + j * c.gc,
                    out,
                    ConvSpec::SAME3,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let conv1x1 = if c.plus {
            Some(vb.pp("conv1x1").get("weight", &[c.gc, c.nf, 1, 1])?)
        } else {
            None
        };
        Ok(Self { convs, conv1x1 })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x1 = leaky(&self.convs[0].forward(x));
        let mut x2 = leaky(&self.convs[1].forward(&Tensor::cat(&[x, &x1], 1)));
        if let Some(w) = &self.conv1x1 {
            x2 += x.conv2d(w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        }
        let x3 = leaky(&self.convs[2].forward(&Tensor::cat(&[x, &x1, &x2], 1)));
        let mut x4 = leaky(&self.convs[3].forward(&Tensor::cat(&[x, &x1, &x2, &x3], 1)));
        if self.conv1x1.is_some() {
            x4 += &x2;
        }
        let x5 = self.convs[4].forward(&Tensor::cat(&[x, &x1, &x2, &x3, &x4], 1));
        x5 * 0.2 + x
    }
}

/// `RRDB`: three dense blocks and a scaled residual.
struct Rrdb {
    blocks: [DenseBlock; 3],
}

impl Rrdb {
    fn new(vb: &VarBuilder, c: &EsrganConfig) -> Result<Self> {
        Ok(Self {
            blocks: [
                DenseBlock::new(&vb.pp("RDB1"), c)?,
                DenseBlock::new(&vb.pp("RDB2"), c)?,
                DenseBlock::new(&vb.pp("RDB3"), c)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let out = self
            .blocks
            .iter()
            .fold(x.shallow_clone(), |h, b| b.forward(&h));
        out * 0.2 + x
    }
}

/// RRDBNet: `model.0` feature convolution, `model.1` the residual trunk (`sub.0…` RRDBs and
/// `sub.{blocks}` its last convolution), upsample stages at `model.3`, `model.6`, …, then the
/// HR convolution and the output convolution.
pub struct Esrgan {
    config: EsrganConfig,
    first: Conv2d,
    trunk: Vec<Rrdb>,
    trunk_conv: Conv2d,
    upsamples: Vec<Conv2d>,
    hr: Conv2d,
    last: Conv2d,
}

impl Esrgan {
    /// Loads the network under `vb` (the state dict's root).
    pub fn new(vb: &VarBuilder, config: EsrganConfig) -> Result<Self> {
        let c = &config;
        let model = vb.pp("model");
        let sub = model.pp(1).pp("sub");
        let trunk = (0..c.blocks)
            .map(|i| Rrdb::new(&sub.pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        let upsamples = (0..c.upsamples)
            .map(|i| Conv2d::new(&model.pp(3 + 3 * i), c.nf, c.nf, ConvSpec::SAME3))
            .collect::<Result<Vec<_>>>()?;
        let hr_at = 2 + 3 * c.upsamples;
        Ok(Self {
            first: Conv2d::new(&model.pp(0), c.in_nc, c.nf, ConvSpec::SAME3)?,
            trunk,
            trunk_conv: Conv2d::new(&sub.pp(c.blocks), c.nf, c.nf, ConvSpec::SAME3)?,
            upsamples,
            hr: Conv2d::new(&model.pp(hr_at), c.nf, c.nf, ConvSpec::SAME3)?,
            last: Conv2d::new(&model.pp(hr_at + 2), c.nf, c.out_nc, ConvSpec::SAME3)?,
            config,
        })
    }

    /// The shapes it was built with.
    pub fn config(&self) -> &EsrganConfig {
        &self.config
    }

    fn body(&self, x: &Tensor) -> Tensor {
        let fea = self.first.forward(x);
        let trunk = self
            .trunk
            .iter()
            .fold(fea.shallow_clone(), |h, b| b.forward(&h));
        let mut h = fea + self.trunk_conv.forward(&trunk);
        for conv in &self.upsamples {
            let (_, _, hh, ww) = h.size4().expect("NCHW features");
            let up = h.upsample_nearest2d([2 * hh, 2 * ww], Some(2.0), Some(2.0));
            h = leaky(&conv.forward(&up));
        }
        self.last.forward(&leaky(&self.hr.forward(&h)))
    }

    /// `RRDBNet.forward` on [B, C, H, W] in 0..1: with a pixel unshuffle, the input is first
    /// reflect-padded to a multiple of the factor and the output cut back to H·s × W·s.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let Some(factor) = self.config.shuffle else {
            return self.body(x);
        };
        let (_, _, h, w) = x.size4().expect("NCHW image");
        let scale = self.config.scale();
        let padded = pad_to_multiple_reflect(x, factor);
        let out = self.body(&padded.pixel_unshuffle(factor));
        out.narrow(2, 0, h * scale).narrow(3, 0, w * scale)
    }
}
