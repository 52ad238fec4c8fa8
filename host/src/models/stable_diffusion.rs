//! A whole checkpoint loaded: text encoders, UNet and autoencoder, with the shapes they
//! are built with ([`Architecture`], as candle keeps `StableDiffusionConfig` beside its
//! networks) and where each network's keys sit in an LDM checkpoint.

use super::text_encoders::{ModelFamily, TextConfig, TextEncoders};
use super::unet::{UNetConfig, UNetModel};
use super::vae::{AutoencoderKl, VaeConfig};
use crate::weights::Result;
use crate::weights::{LayerRecorder, LayerTable, TensorSource, VarBuilder};
use tch::{Device, Kind};

/// Key prefix of the UNet in LDM checkpoints.
pub const UNET_PREFIX: &str = "model.diffusion_model";
/// Key prefix of the KL autoencoder in LDM checkpoints.
pub const VAE_PREFIX: &str = "first_stage_model";
/// Key prefix of the CLIP text transformer in SD1 checkpoints (transformers' `CLIPTextModel`).
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer";

/// The networks' shapes as found in a checkpoint, and where the text encoders sit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Architecture {
    /// The UNet.
    pub unet: UNetConfig,
    /// The autoencoder.
    pub vae: VaeConfig,
    /// The text encoders (which also say the family).
    pub text: TextConfig,
}

impl Architecture {
    /// The model family.
    pub fn family(&self) -> ModelFamily {
        self.text.family()
    }

    /// Whether the UNet takes the inpainting model's 5 extra channels (mask, masked image).
    pub fn is_inpainting(&self) -> bool {
        self.unet.in_channels == 9
    }

    /// A short family name: "SD 1.x", "SD 2.x inpainting", "SDXL" …
    pub fn family_name(&self) -> String {
        let family = self.family().name();
        if self.is_inpainting() {
            format!("{family} inpainting")
        } else {
            family.to_string()
        }
    }
}

/// The networks of a checkpoint, built in one dtype on one device.
pub struct StableDiffusion {
    /// Text encoders.
    pub text: TextEncoders,
    /// Denoising UNet.
    pub unet: UNetModel,
    /// KL autoencoder.
    pub vae: AutoencoderKl,
    /// Shapes they were built with.
    pub architecture: Architecture,
    /// The text encoder's and UNet's layers by checkpoint key, sharing storage with the
    /// networks: what LoRA patches in place (the VAE is not patched, as in A1111).
    pub layers: LayerTable,
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
        let recorder = LayerRecorder::default();
        let patchable = vb.clone().recording(&recorder);
        let text = TextEncoders::new(&patchable, &architecture.text)?;
        let unet = UNetModel::new(&patchable.pp(UNET_PREFIX), &architecture.unet)?;
        Ok(Self {
            text,
            unet,
            vae: AutoencoderKl::new(&vb.pp(VAE_PREFIX), &architecture.vae)?,
            architecture: architecture.clone(),
            layers: recorder.into_table(),
        })
    }
}
