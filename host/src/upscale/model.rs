//! A loaded upscaler as A1111 holds it: spandrel's `ImageModelDescriptor` (`modules/
//! modelloader.py: load_spandrel_model`), the network on its device in fp32 with the scale
//! and size requirements its call pads to.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::detect::{detect, Architecture};
use super::file::read_state_dict;
use super::UpscalerError;
use crate::models::upscalers::{Compact, Esrgan, SwinIr, UpscalerNet};
use crate::weights::{TensorMap, VarBuilder};

/// An upscaler network ready to run.
pub struct UpscalerModel {
    net: UpscalerNet,
    architecture: Architecture,
    path: PathBuf,
    device: Device,
}

impl UpscalerModel {
    /// Reads `path`, detects its architecture and builds it on `device` in fp32 (A1111 runs
    /// ESRGAN and SwinIR in fp32; sdhost runs every upscaler so, on every device).
    pub fn load(path: &Path, device: Device) -> Result<Self, UpscalerError> {
        let _guard = tch::no_grad_guard();
        let mut state = read_state_dict(path)?;
        let architecture = detect(&mut state).map_err(|source| UpscalerError::Detect {
            path: path.to_path_buf(),
            source,
        })?;
        let source = TensorMap::new(path, state);
        let vb = VarBuilder::new(&source, Kind::Float, device);
        let net = match &architecture {
            Architecture::Esrgan(c) => UpscalerNet::Esrgan(Esrgan::new(&vb, *c)?),
            Architecture::Compact(c) => UpscalerNet::Compact(Compact::new(&vb, *c)?),
            Architecture::SwinIr(c) => UpscalerNet::SwinIr(Box::new(SwinIr::new(&vb, c.clone())?)),
        };
        Ok(Self {
            net,
            architecture,
            path: path.to_path_buf(),
            device,
        })
    }

    /// The detected architecture and shapes.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Output pixels per input pixel.
    pub fn scale(&self) -> i64 {
        self.architecture.scale()
    }

    /// The network alone (`descriptor.model(x)`), on [1, C, H, W] in 0..1 on its device.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.net.forward(x)
    }

    /// `ImageModelDescriptor.__call__`: the input padded to the size requirements (reflect,
    /// then replicate beyond what reflection can give), the network, the output clamped to
    /// 0..1 and cut back to H·s × W·s.
    pub fn call(&self, x: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (_, _, h, w) = x.size4().expect("NCHW image");
        let (minimum, multiple) = self.architecture.size_requirements();
        let target = |side: i64| {
            let side = side.max(minimum);
            (side + multiple - 1) / multiple * multiple
        };
        let (pad_w, pad_h) = (target(w) - w, target(h) - h);
        let input = if pad_w > 0 || pad_h > 0 {
            let (reflect_w, reflect_h) = (pad_w.min(w - 1), pad_h.min(h - 1));
            let reflected = x.reflection_pad2d([0, reflect_w, 0, reflect_h]);
            if pad_w > reflect_w || pad_h > reflect_h {
                reflected.replication_pad2d([0, pad_w - reflect_w, 0, pad_h - reflect_h])
            } else {
                reflected
            }
        } else {
            x.shallow_clone()
        };
        let out = self.net.forward(&input).clamp(0.0, 1.0);
        if pad_w > 0 || pad_h > 0 {
            let s = self.scale();
            out.narrow(2, 0, h * s).narrow(3, 0, w * s)
        } else {
            out
        }
    }
}
