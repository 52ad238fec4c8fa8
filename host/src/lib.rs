//! sdhost: Stable Diffusion img2img and inpainting for image editors, on libtorch.
//!
//! The modules follow the data path: [`checkpoint`] reads model files, [`models`] holds the
//! networks, [`weights`] connects the two.

pub mod checkpoint;
pub mod cli;
pub mod daemon;
pub mod device;
pub mod error;
pub mod infotext;
pub mod models;
pub mod pickle;
pub mod pipeline;
pub mod prepare;
pub mod prompt;
pub mod request;
pub mod rng;
pub mod sampling;
pub mod tiny_model;
pub mod weights;
