//! Euler and Euler ancestral (Karras et al. 2022, Algorithm 2; k-diffusion).

use sdhost_plugin_api::{Context, Latent, SampleError};

use crate::common::{ancestral_step, churn_gamma, require_steps, to_d};

/// Euler with optional churn; draws its churn noise every step, as A1111 does, even unused.
pub fn euler<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
    let steps = require_steps(context)?;
    let s_noise = context.number("s_noise")?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let gamma = churn_gamma(context, sigmas[i])?;
        let eps = context.noise()?;
        let sigma_hat = sigmas[i] * (gamma + 1.0);
        if gamma > 0.0 {
            let extra = (sigma_hat * sigma_hat - sigmas[i] * sigmas[i]).sqrt();
            x = x.mix(1.0, &eps, s_noise * extra);
        }
        let denoised = context.denoise(&x, sigma_hat)?;
        let d = to_d(&x, &denoised, sigma_hat);
        context.callback(i, sigmas[i], sigma_hat, &x, &denoised)?;
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
    let s_noise = context.number("s_noise")?;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let denoised = context.denoise(&x, sigmas[i])?;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        context.callback(i, sigmas[i], sigmas[i], &x, &denoised)?;
        let d = to_d(&x, &denoised, sigmas[i]);
        x = x.mix(1.0, &d, sigma_down - sigmas[i]);
        if sigmas[i + 1] > 0.0 {
            let noise = context.noise()?;
            x = x.mix(1.0, &noise, s_noise * sigma_up);
        }
    }
    Ok(x)
}
