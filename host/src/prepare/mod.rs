//! Preparing the init image (and later the mask) for a job: reading and flattening it, and
//! A1111's resize modes on top of a Pillow-exact resampler, since A1111 resizes with Pillow
//! and results should match it.

pub mod init_image;
pub mod resample;
pub mod resize;
