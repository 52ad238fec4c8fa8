//! Sampling: the model's noise levels, sigma schedules, noise sources and the k-diffusion
//! denoiser with classifier-free guidance that sampler plugins drive.
pub mod brownian;
pub mod denoiser;
pub mod noise;
pub mod noise_levels;
pub mod plan;
pub mod plugins;
pub mod schedule;
pub mod session;
