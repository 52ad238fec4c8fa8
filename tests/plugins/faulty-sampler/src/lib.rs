//! Test fixture: samplers that panic, return errors or NaN, leak handles or never report a step,
//! to show that the host turns each into a job error (or a cancellation) and keeps running.

use sdhost_plugin_api::{
    export_sampler_plugin, Context, Latent, SampleError, SampleResult, SamplerInfo, SamplerPlugin,
    SamplerSpec,
};

/// The fixture plugin.
pub struct FaultyPlugin;

impl SamplerPlugin for FaultyPlugin {
    const NAME: &'static str = "faulty";
    const VERSION: &'static str = "0.0.1";

    fn samplers() -> Vec<SamplerInfo> {
        ["Panics", "Fails", "Leaks", "Silent", "NotFinite"]
            .into_iter()
            .map(|name| SamplerSpec::new(name).into())
            .collect()
    }

    fn sample<'c, 'a>(
        sampler: &str,
        context: &'c Context<'a>,
        mut x: Latent<'c, 'a>,
    ) -> SampleResult<'c, 'a> {
        if sampler == "Silent" {
            // A noise draw and a model call per σ, and never `context.callback`: only the
            // host's own cancel check can stop it.
            for &sigma in context.sigmas() {
                let noise = context.noise()?;
                x = context.denoise(&(&x + &noise), sigma)?;
            }
            return Ok(x);
        }
        let sigma = context.sigmas()[0];
        let denoised = context.denoise(&x, sigma)?;
        match sampler {
            "Panics" => panic!("deliberate panic after one model call"),
            "Fails" => Err(SampleError::BadInput("deliberate failure".into())),
            // Garbage that looks like success: the host must refuse to decode it.
            "NotFinite" => Ok(denoised.add_scalar(f64::NAN)),
            // Keeps an extra handle alive past the end: the host must free it itself.
            _ => {
                std::mem::forget(denoised.clone());
                Ok(denoised)
            }
        }
    }
}

export_sampler_plugin!(FaultyPlugin);
