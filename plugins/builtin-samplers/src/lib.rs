//! sdhost's built-in samplers: A1111's img2img sampler list, as a sampler plugin.
//!
//! The host loads this library through the same ABI as any third-party plugin. Each sampler
//! is a short function of the context (model, noise, σ schedule) and the starting latent, in
//! the manner of k-diffusion's `sampling.py`, with its spec beside it: how A1111 presents it
//! (names, aliases, default schedule, flags, options with defaults). [`catalog`] lists them.

mod catalog;
mod common;
mod dpm_solver;
mod dpmpp;
mod dpmpp_sde;
mod euler;
mod heun;
mod lcm;
mod lms;
mod restart;
mod timesteps;
mod unipc;

use sdhost_plugin_api::{
    export_sampler_plugin, Context, Latent, SampleResult, SamplerInfo, SamplerPlugin,
};

/// The built-in sampler plugin.
pub struct BuiltinSamplers;

impl SamplerPlugin for BuiltinSamplers {
    const NAME: &'static str = "sdhost built-in";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn samplers() -> Vec<SamplerInfo> {
        catalog::samplers()
    }

    fn sample<'c, 'a>(
        sampler: &str,
        context: &'c Context<'a>,
        x: Latent<'c, 'a>,
    ) -> SampleResult<'c, 'a> {
        catalog::run(sampler, context, x)
    }
}

export_sampler_plugin!(BuiltinSamplers);
