//! The upscaler networks A1111 v1.10.1 runs through spandrel (`modules/modelloader.py:
//! load_spandrel_model`), one file per architecture, each named like its state dict's keys:
//! ESRGAN's RRDBNet ([`esrgan`]), Real-ESRGAN's compact SRVGGNet ([`compact`]) and SwinIR
//! ([`swinir`]). Which one a file holds, and its shapes, is `upscale::detect`'s business.

pub mod compact;
pub mod esrgan;
pub mod swinir;

use tch::Tensor;

pub use compact::{Compact, CompactConfig};
pub use esrgan::{Esrgan, EsrganConfig};
pub use swinir::{SwinIr, SwinIrConfig, SwinIrUpsampler};

/// An upscaler network of one of the architectures sdhost runs.
pub enum UpscalerNet {
    /// ESRGAN / Real-ESRGAN RRDBNet (spandrel "ESRGAN").
    Esrgan(Esrgan),
    /// Real-ESRGAN's SRVGGNetCompact (spandrel "Compact").
    Compact(Compact),
    /// SwinIR (spandrel "SwinIR"; boxed, it is the largest).
    SwinIr(Box<SwinIr>),
}

impl UpscalerNet {
    /// The network's forward pass on [B, C, H, W] (spandrel's `descriptor.model(x)`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            UpscalerNet::Esrgan(net) => net.forward(x),
            UpscalerNet::Compact(net) => net.forward(x),
            UpscalerNet::SwinIr(net) => net.forward(x),
        }
    }
}

/// PyTorch's `LeakyReLU(slope)`: `x` where positive, else `x · slope`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    x.where_self(&x.gt(0.0), &(x * slope))
}

/// spandrel's `pad_to_multiple(x, multiple, mode="reflect")`: reflect padding on the right
/// and bottom up to the next multiple.
pub fn pad_to_multiple_reflect(x: &Tensor, multiple: i64) -> Tensor {
    let (_, _, h, w) = x.size4().expect("NCHW image");
    let pad_h = (multiple - h % multiple) % multiple;
    let pad_w = (multiple - w % multiple) % multiple;
    if pad_h == 0 && pad_w == 0 {
        return x.shallow_clone();
    }
    x.reflection_pad2d([0, pad_w, 0, pad_h])
}
