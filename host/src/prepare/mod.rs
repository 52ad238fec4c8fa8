//! Preparing the init image and mask for a job: reading and flattening the image, A1111's
//! resize modes on top of a Pillow-exact resampler (A1111 resizes with Pillow and results
//! should match it), the mask's threshold and blur, the "only masked" crop region and the
//! "fill" of the hole.

pub mod color_correction;
pub mod crop;
pub mod fill;
pub mod init_image;
pub mod inpaint;
pub mod mask;
pub mod modes;
pub mod pillow;
pub mod resample;
pub mod resize;
pub mod tiles;
pub mod upscalers;
