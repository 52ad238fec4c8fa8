//! Euler and Euler ancestral (Karras et al. 2022, Algorithm 2; k-diffusion).

use sdhost_plugin_api::{Context, Latent, SampleResult, SamplerSpec};

use crate::common::{
    add_ancestral_noise, ancestral_options, ancestral_step, churn_options, churned_slope,
    denoise_step, require_steps, to_d,
};

/// How A1111 presents "Euler" (its row of the sampler table).
pub fn euler_spec() -> SamplerSpec {
    SamplerSpec::new("Euler")
        .alias("k_euler")
        .with(churn_options)
}

/// Euler with optional churn; draws its churn noise every step, as A1111 does, even unused.
pub fn euler<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let (churned, sigma_hat, d) = churned_slope(context, i, x)?;
        x = churned;
        x = x.mix(1.0, &d, sigmas[i + 1] - sigma_hat);
    }
    Ok(x)
}

/// How A1111 presents "Euler a" (its row of the sampler table).
pub fn euler_ancestral_spec() -> SamplerSpec {
    SamplerSpec::new("Euler a")
        .alias("k_euler_a")
        .alias("k_euler_ancestral")
        .uses_ensd()
        .with(ancestral_options)
}

/// Euler ancestral: an Euler step to σ_down, then fresh noise of σ_up.
pub fn euler_ancestral<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let eta = context.number("eta")?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let denoised = denoise_step(context, i, &x)?;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        let d = to_d(&x, &denoised, sigmas[i]);
        x = x.mix(1.0, &d, sigma_down - sigmas[i]);
        x = add_ancestral_noise(context, x, sigmas[i + 1], sigma_up)?;
    }
    Ok(x)
}
