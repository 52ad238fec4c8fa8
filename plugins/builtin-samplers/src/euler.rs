//! Euler and Euler ancestral (Karras et al. 2022, Algorithm 2; k-diffusion).

use sdhost_plugin_api::{Context, Latent, SampleError};

use crate::common::{
    add_ancestral_noise, ancestral_step, churned_slope, denoise_step, require_steps, to_d,
};

/// Euler with optional churn; draws its churn noise every step, as A1111 does, even unused.
pub fn euler<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
    let steps = require_steps(context)?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let (churned, sigma_hat, d) = churned_slope(context, i, x)?;
        x = churned;
        x = x.mix(1.0, &d, sigmas[i + 1] - sigma_hat);
    }
    Ok(x)
}

/// Euler ancestral: an Euler step to σ_down, then fresh noise of σ_up.
pub fn euler_ancestral<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
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
