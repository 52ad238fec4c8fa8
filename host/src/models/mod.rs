//! The Stable Diffusion networks: CLIP text encoder, UNet, autoencoder.

pub mod clip;
pub mod hypernetwork;
pub mod layers;
pub mod stable_diffusion;
pub mod unet;
pub mod vae;

pub use stable_diffusion::{Architecture, StableDiffusion, CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
