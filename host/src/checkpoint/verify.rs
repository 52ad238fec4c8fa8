//! Structure check of a checkpoint: every key the networks need, with the right shape,
//! without reading any weight data.

use super::Checkpoint;
use crate::models::{Architecture, StableDiffusion};
use crate::weights::Result;
use crate::weights::TensorSource;
use tch::{Device, Kind, Tensor};

/// A source that checks keys and shapes against the checkpoint and hands out zero-stride
/// stand-ins, so that building the networks reads only the header.
struct ShapeCheck<'a>(&'a Checkpoint);

impl TensorSource for ShapeCheck<'_> {
    fn stored_shape(&self, key: &str) -> Option<Vec<i64>> {
        self.0.shape(key)
    }

    fn tensor(&self, key: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        self.0.expect_shape(key, shape)?;
        Ok(Tensor::zeros([1], (kind, device)).expand(shape, false))
    }
}

/// Checks that every tensor of `architecture` is present in `ckpt` with the expected shape.
pub fn verify_structure(ckpt: &Checkpoint, architecture: &Architecture) -> Result<()> {
    StableDiffusion::load(&ShapeCheck(ckpt), architecture, Kind::Float, Device::Cpu).map(drop)
}
