//! Test fixture: samplers that panic, return errors or leak handles, to show that the host
//! turns each into a job error and keeps running.

use sdhost_plugin_api::{
    export_sampler_plugin, Context, Latent, SampleError, SamplerInfo, SamplerPlugin, ScheduleInput,
};

/// The fixture plugin.
pub struct FaultyPlugin;

fn info(name: &str) -> SamplerInfo {
    SamplerInfo {
        name: name.into(),
        aliases: Default::default(),
        default_schedule: None.into(),
        input: ScheduleInput::Sigmas,
        discard_penultimate_sigma: false,
        second_order: false,
        uses_ensd: false,
        brownian: false,
        options: Default::default(),
    }
}

impl SamplerPlugin for FaultyPlugin {
    const NAME: &'static str = "faulty";
    const VERSION: &'static str = "0.0.1";

    fn samplers() -> Vec<SamplerInfo> {
        vec![info("Panics"), info("Fails"), info("Leaks")]
    }

    fn sample<'c, 'a>(
        sampler: &str,
        context: &'c Context<'a>,
        x: Latent<'c, 'a>,
    ) -> Result<Latent<'c, 'a>, SampleError> {
        let sigma = context.sigmas()[0];
        let denoised = context.denoise(&x, sigma)?;
        match sampler {
            "Panics" => panic!("deliberate panic after one model call"),
            "Fails" => Err(SampleError::BadInput("deliberate failure".into())),
            // Keeps an extra handle alive past the end: the host must free it itself.
            _ => {
                std::mem::forget(denoised.clone());
                Ok(denoised)
            }
        }
    }
}

export_sampler_plugin!(FaultyPlugin);
