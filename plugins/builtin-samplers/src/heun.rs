//! Heun and the DPM-Solver-2-style samplers DPM2 and DPM2 ancestral (k-diffusion).

use sdhost_plugin_api::{Context, Latent, SampleResult, SamplerSpec};

use crate::common::{
    ancestral_options, ancestral_step, churn_options, churned_slope, denoise_step, require_steps,
    to_d,
};

/// How A1111 presents "Heun" (its row of the sampler table).
pub fn heun_spec() -> SamplerSpec {
    SamplerSpec::new("Heun")
        .alias("k_heun")
        .second_order()
        .with(churn_options)
}

/// Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler for the last step.
pub fn heun<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let (churned, sigma_hat, d) = churned_slope(context, i, x)?;
        x = churned;
        let dt = sigmas[i + 1] - sigma_hat;
        if sigmas[i + 1] == 0.0 {
            x = x.mix(1.0, &d, dt);
        } else {
            let x_2 = x.mix(1.0, &d, dt);
            let denoised_2 = context.denoise(&x_2, sigmas[i + 1])?;
            let d_2 = to_d(&x_2, &denoised_2, sigmas[i + 1]);
            x = Latent::combine(context, &[(1.0, &x), (dt / 2.0, &d), (dt / 2.0, &d_2)]);
        }
    }
    Ok(x)
}

/// The log-σ midpoint between two noise levels.
fn log_midpoint(a: f64, b: f64) -> f64 {
    ((a.ln() + b.ln()) / 2.0).exp()
}

/// How A1111 presents "DPM2" (its row of the sampler table).
pub fn dpm_2_spec() -> SamplerSpec {
    SamplerSpec::new("DPM2")
        .alias("k_dpm_2")
        .default_schedule("karras")
        .discard_penultimate_sigma()
        .second_order()
        .with(churn_options)
}

/// DPM2: the slope at the log-σ midpoint carries the whole step; Euler for the last step.
pub fn dpm_2<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let (churned, sigma_hat, d) = churned_slope(context, i, x)?;
        x = churned;
        x = midpoint_step(context, &x, &d, sigma_hat, sigmas[i + 1])?;
    }
    Ok(x)
}

/// One DPM-Solver-2 step from σ to σ_to with slope `d` at σ (Euler when σ_to is 0).
fn midpoint_step<'c, 'a>(
    context: &'c Context<'a>,
    x: &Latent<'c, 'a>,
    d: &Latent<'c, 'a>,
    sigma: f64,
    sigma_to: f64,
) -> SampleResult<'c, 'a> {
    if sigma_to == 0.0 {
        return Ok(x.mix(1.0, d, sigma_to - sigma));
    }
    let sigma_mid = log_midpoint(sigma, sigma_to);
    let x_2 = x.mix(1.0, d, sigma_mid - sigma);
    let denoised_2 = context.denoise(&x_2, sigma_mid)?;
    let d_2 = to_d(&x_2, &denoised_2, sigma_mid);
    Ok(x.mix(1.0, &d_2, sigma_to - sigma))
}

/// How A1111 presents "DPM2 a" (its row of the sampler table).
pub fn dpm_2_ancestral_spec() -> SamplerSpec {
    SamplerSpec::new("DPM2 a")
        .alias("k_dpm_2_a")
        .default_schedule("karras")
        .discard_penultimate_sigma()
        .uses_ensd()
        .second_order()
        .with(ancestral_options)
}

/// DPM2 ancestral: a DPM2 step to σ_down, then fresh noise of σ_up.
pub fn dpm_2_ancestral<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let eta = context.number("eta")?;
    let s_noise = context.number("s_noise")?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let denoised = denoise_step(context, i, &x)?;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        let d = to_d(&x, &denoised, sigmas[i]);
        if sigma_down == 0.0 {
            x = x.mix(1.0, &d, sigma_down - sigmas[i]);
        } else {
            x = midpoint_step(context, &x, &d, sigmas[i], sigma_down)?;
            // k-diffusion adds noise only on this branch (σ_down = 0 means σ_next = 0).
            let noise = context.noise()?;
            x = x.mix(1.0, &noise, s_noise * sigma_up);
        }
    }
    Ok(x)
}
