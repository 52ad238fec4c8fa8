//! The img2img job: the init image into the latent space, sampling, latents back into 8-bit
//! images with their infotext, as A1111 does them (`modules/processing.py:
//! process_images_inner`, `decode_latent_batch`, `create_infotext`).

pub mod decode;
pub mod encode;
pub mod error;
pub mod extra_networks;
pub mod hires;
pub mod img2img;
pub mod init;
pub mod job;
pub mod joint;
pub mod mask_latents;
pub mod model;
pub mod output;

pub mod png_info;
pub mod preview;
pub mod stop;
pub mod txt2img;

#[cfg(test)]
mod cache_tests;
