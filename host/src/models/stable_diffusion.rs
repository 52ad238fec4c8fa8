//! A whole SD 1.x checkpoint loaded: text encoder, UNet and autoencoder.

use super::clip::ClipTextModel;
use super::unet::UNetModel;
use super::vae::AutoencoderKl;
use crate::checkpoint::{Architecture, UNET_PREFIX, VAE_PREFIX};
use crate::error::Result;
use crate::weights::{TensorSource, VarBuilder};
use tch::{Device, Kind};

/// The three networks of a checkpoint, built in one dtype on one device.
pub struct StableDiffusion {
    /// CLIP text encoder.
    pub clip: ClipTextModel,
    /// Denoising UNet.
    pub unet: UNetModel,
    /// KL autoencoder.
    pub vae: AutoencoderKl,
    /// Shapes they were built with.
    pub architecture: Architecture,
}

impl StableDiffusion {
    /// Builds every network of `architecture` from `source` in `kind` on `device`.
    pub fn load(
        source: &dyn TensorSource,
        architecture: &Architecture,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let vb = VarBuilder::new(source, kind, device);
        Ok(Self {
            clip: ClipTextModel::new(&vb.pp(&architecture.clip_prefix), &architecture.clip)?,
            unet: UNetModel::new(&vb.pp(UNET_PREFIX), &architecture.unet)?,
            vae: AutoencoderKl::new(&vb.pp(VAE_PREFIX), &architecture.vae)?,
            architecture: architecture.clone(),
        })
    }
}
