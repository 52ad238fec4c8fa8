//! An example third-party sampler plugin for sdhost: the explicit midpoint method.
//!
//! The midpoint method (second-order Runge–Kutta) on the probability-flow ODE
//! dx/dσ = (x − D(x, σ))/σ: half an Euler step to σ_mid = (σ + σ_next)/2, a second model
//! call there, then the full step with the midpoint slope. The last step, to σ = 0, is a
//! plain Euler step because the slope is undefined at σ = 0.

use sdhost_plugin_api::{
    export_sampler_plugin, Context, Latent, SampleError, SampleResult, SamplerInfo, SamplerPlugin,
    SamplerSpec,
};

/// The plugin: one sampler, "Midpoint".
pub struct ExamplePlugin;

impl SamplerPlugin for ExamplePlugin {
    const NAME: &'static str = "example";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn samplers() -> Vec<SamplerInfo> {
        vec![SamplerSpec::new("Midpoint")
            .alias("example_midpoint")
            .default_schedule("karras")
            // Two model calls per step: prompt-editing schedules count both.
            .second_order()
            .option(
                "midpoint",
                0.5,
                "where between σ and σ_next the second evaluation happens",
            )
            .into()]
    }

    fn sample<'c, 'a>(
        _sampler: &str,
        context: &'c Context<'a>,
        mut x: Latent<'c, 'a>,
    ) -> SampleResult<'c, 'a> {
        let fraction = context.number("midpoint")?;
        if !(0.0..=1.0).contains(&fraction) || fraction == 0.0 {
            return Err(SampleError::BadOption(format!(
                "midpoint must be in (0, 1], got {fraction}"
            )));
        }
        let sigmas = context.sigmas().to_vec();
        for (i, pair) in sigmas.windows(2).enumerate() {
            let (sigma, sigma_next) = (pair[0], pair[1]);
            let denoised = context.denoise(&x, sigma)?;
            context.callback(i, sigma, sigma, &x, &denoised)?;
            let slope = x.mix(1.0 / sigma, &denoised, -1.0 / sigma);
            if sigma_next == 0.0 {
                x = x.mix(1.0, &slope, sigma_next - sigma);
                continue;
            }
            let sigma_mid = sigma + fraction * (sigma_next - sigma);
            let x_mid = x.mix(1.0, &slope, sigma_mid - sigma);
            let denoised_mid = context.denoise(&x_mid, sigma_mid)?;
            let slope_mid = x_mid.mix(1.0 / sigma_mid, &denoised_mid, -1.0 / sigma_mid);
            x = x.mix(1.0, &slope_mid, sigma_next - sigma);
        }
        Ok(x)
    }
}

export_sampler_plugin!(ExamplePlugin);
