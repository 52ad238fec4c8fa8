//! The Stable Diffusion networks: text encoders (CLIP, OpenCLIP), UNet, autoencoder; and the
//! interrogator's OpenAI CLIP (both towers).

pub mod blip;
pub mod clip;
pub mod deepdanbooru;
pub mod hypernetwork;
pub mod layers;
pub mod open_clip;
pub mod openai_clip;
pub mod row_bands;
pub mod stable_diffusion;
pub mod text_encoders;
pub mod unet;
pub mod upscalers;
pub mod vae;

/// What a UNet predicts (A1111's `parameterization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Prediction {
    /// Noise ε (SD1, SD2 512-base, SDXL).
    Epsilon,
    /// Velocity v (SD2 768-v, v-prediction fine-tunes).
    V,
}

pub use stable_diffusion::{Architecture, StableDiffusion, CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
