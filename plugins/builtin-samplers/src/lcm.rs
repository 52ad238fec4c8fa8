//! LCM (latent consistency models; A1111 `sd_samplers_lcm.py`).
//!
//! LCM's denoiser calls the UNet at the nearest of its 50 "original" timesteps
//! (19, 39, …, 999) and mixes the standard prediction with the input by consistency-model
//! boundary scalings; both are affine in the standard D, so the guided D from the host gives
//! LCM's guided prediction exactly.

use sdhost_plugin_api::{Context, Latent, SampleError, SampleResult, SamplerSpec};

use crate::common::require_steps;

/// LCM's original timestep count and its spacing on the 1000-step scale.
const ORIGINAL_TIMESTEPS: usize = 50;
/// σ_data of the boundary-condition scalings.
const SIGMA_DATA: f64 = 0.5;

/// ln σ of LCM's 50 levels (ᾱ at t = 19, 39, …, 999), as float32 like A1111's table.
fn log_sigmas(context: &Context<'_>) -> Result<Vec<f32>, SampleError> {
    let alphas = context.alphas_cumprod();
    if alphas.len() % ORIGINAL_TIMESTEPS != 0 || alphas.is_empty() {
        return Err(SampleError::BadInput(format!(
            "LCM needs a model with a multiple of {ORIGINAL_TIMESTEPS} timesteps, got {}",
            alphas.len()
        )));
    }
    let skip = alphas.len() / ORIGINAL_TIMESTEPS;
    Ok((0..ORIGINAL_TIMESTEPS)
        .map(|k| {
            let a = alphas[k * skip + skip - 1] as f32;
            (((1.0 - a) / a).sqrt()).ln()
        })
        .collect())
}

/// The LCM timestep of a noise level: nearest level in log σ, on the 1000-step scale.
fn timestep(log_sigmas: &[f32], skip: usize, sigma: f64) -> f64 {
    let log_sigma = (sigma as f32).ln();
    let nearest = log_sigmas
        .iter()
        .enumerate()
        .fold((0, f32::INFINITY), |best, (i, &ls)| {
            let distance = (log_sigma - ls).abs();
            if distance < best.1 {
                (i, distance)
            } else {
                best
            }
        })
        .0;
    (nearest * skip + skip - 1) as f64
}

/// How A1111 presents "LCM" (its row of the sampler table).
pub fn lcm_spec() -> SamplerSpec {
    SamplerSpec::new("LCM")
        .alias("k_lcm")
        .default_schedule("lcm")
}

/// The LCM sampler: jump to the consistency prediction, re-noise to the next level.
pub fn lcm<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let steps = require_steps(context)?;
    let log_sigmas = log_sigmas(context)?;
    let skip = context.alphas_cumprod().len() / ORIGINAL_TIMESTEPS;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let t = timestep(&log_sigmas, skip, sigmas[i]);
        let standard = context.denoise_at(&x, sigmas[i], t)?;
        let scaled = t * 10.0;
        let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
        let denoised = standard.mix(c_out, &x, c_skip);
        context.callback(i, sigmas[i], sigmas[i], &x, &denoised)?;
        x = denoised;
        if sigmas[i + 1] > 0.0 {
            let noise = context.noise()?;
            x = x.mix(1.0, &noise, sigmas[i + 1]);
        }
    }
    Ok(x)
}
