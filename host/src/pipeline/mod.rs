//! The img2img job's ends: the init image into the latent space and latents back into 8-bit
//! images, as A1111 does them (spec §1.6).

pub mod decode;
pub mod encode;
pub mod png_info;
