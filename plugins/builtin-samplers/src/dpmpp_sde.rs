//! The stochastic DPM-Solver++ samplers, driven by Brownian-tree noise: DPM++ SDE, DPM++ 2M
//! SDE (midpoint and Heun variants) and DPM++ 3M SDE (k-diffusion).
//!
//! The tree is queried exactly where k-diffusion queries it: at the schedule's σ's (2M, 3M),
//! which are float32 values already, or, for DPM++ SDE, at levels computed through the host's
//! float32 `ln`/`exp` the way k-diffusion computes them on tensors.

use sdhost_plugin_api::{Context, Latent, SampleError};

use crate::common::{ancestral_step, denoise_step, lambda, require_steps, sigma_of, to_d};

/// How A1111 presents "DPM++ SDE" (its row of the sampler table).
pub fn dpmpp_sde_spec() -> sdhost_plugin_api::SamplerSpec {
    sdhost_plugin_api::SamplerSpec::new("DPM++ SDE")
        .alias("k_dpmpp_sde")
        .default_schedule("karras")
        .second_order()
        .brownian()
        .with(crate::common::ancestral_options)
}

/// DPM++ SDE: two stages per step (r = ½) with ancestral noise from the Brownian tree.
pub fn dpmpp_sde<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
    let steps = require_steps(context)?;
    let eta = context.number("eta")?;
    let s_noise = context.number("s_noise")?;
    let r = 0.5;
    let sigmas = context.sigmas();
    for i in 0..steps {
        let denoised = denoise_step(context, i, &x)?;
        if sigmas[i + 1] == 0.0 {
            let d = to_d(&x, &denoised, sigmas[i]);
            x = x.mix(1.0, &d, sigmas[i + 1] - sigmas[i]);
            continue;
        }
        let (t, t_next) = (lambda(sigmas[i]), lambda(sigmas[i + 1]));
        let h = t_next - t;
        let s = t + h * r;
        let fac = 1.0 / (2.0 * r);
        let (sigma_t, sigma_s, sigma_next) = (sigma_of(t), sigma_of(s), sigma_of(t_next));

        // The Brownian tree resolves σ to 1e-6 and its path is rough at that scale, so it must
        // be queried at k-diffusion's noise levels to the last bit: σ_fn(t), σ_fn(s) and
        // σ_fn(t_next) as computed on float32 tensors (the coefficients, smooth in σ, are
        // left in float64).
        let t32 = -context.ln_f32(sigmas[i] as f32);
        let t_next32 = -context.ln_f32(sigmas[i + 1] as f32);
        let s32 = t32 + (t_next32 - t32) * r as f32;
        let query_t = f64::from(context.exp_f32(-t32));
        let query_s = f64::from(context.exp_f32(-s32));
        let query_next = f64::from(context.exp_f32(-t_next32));

        let (sd, su) = ancestral_step(sigma_t, sigma_s, eta);
        let s_ = lambda(sd);
        let noise = context.brownian_noise(query_t, query_s)?;
        let x_2 = Latent::combine(
            context,
            &[
                (sigma_of(s_) / sigma_t, &x),
                (-(t - s_).exp_m1(), &denoised),
                (s_noise * su, &noise),
            ],
        );
        let denoised_2 = context.denoise(&x_2, sigma_s)?;

        let (sd, su) = ancestral_step(sigma_t, sigma_next, eta);
        let t_next_ = lambda(sd);
        let weight = -(t - t_next_).exp_m1();
        let noise = context.brownian_noise(query_t, query_next)?;
        x = Latent::combine(
            context,
            &[
                (sigma_of(t_next_) / sigma_t, &x),
                (weight * (1.0 - fac), &denoised),
                (weight * fac, &denoised_2),
                (s_noise * su, &noise),
            ],
        );
    }
    Ok(x)
}

/// The second-order correction of DPM++ 2M SDE.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    /// The midpoint rule (A1111's "DPM++ 2M SDE").
    Midpoint,
    /// Heun's rule ("DPM++ 2M SDE Heun").
    Heun,
}

fn dpmpp_2m_sde_with<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
    solver: Solver,
) -> Result<Latent<'c, 'a>, SampleError> {
    let steps = require_steps(context)?;
    let eta = context.number("eta")?;
    let s_noise = context.number("s_noise")?;
    let sigmas = context.sigmas();
    let mut old_denoised: Option<Latent<'c, 'a>> = None;
    let mut h_last = 0.0;
    for i in 0..steps {
        let denoised = denoise_step(context, i, &x)?;
        if sigmas[i + 1] == 0.0 {
            x = denoised.clone();
        } else {
            let h = lambda(sigmas[i + 1]) - lambda(sigmas[i]);
            let eta_h = eta * h;
            let decay = -(-h - eta_h).exp_m1();
            let mut terms = vec![
                (sigmas[i + 1] / sigmas[i] * (-eta_h).exp(), &x),
                (decay, &denoised),
            ];
            if let Some(old) = &old_denoised {
                let r = h_last / h;
                let c = match solver {
                    Solver::Heun => (decay / (-h - eta_h) + 1.0) / r,
                    Solver::Midpoint => 0.5 * decay / r,
                };
                terms.push((c, &denoised));
                terms.push((-c, old));
            }
            let noise;
            if eta != 0.0 {
                noise = context.brownian_noise(sigmas[i], sigmas[i + 1])?;
                let scale = sigmas[i + 1] * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise;
                terms.push((scale, &noise));
            }
            x = Latent::combine(context, &terms);
            h_last = h;
        }
        old_denoised = Some(denoised);
    }
    Ok(x)
}

/// How A1111 presents "DPM++ 2M SDE" (its row of the sampler table).
pub fn dpmpp_2m_sde_spec() -> sdhost_plugin_api::SamplerSpec {
    sdhost_plugin_api::SamplerSpec::new("DPM++ 2M SDE")
        .alias("k_dpmpp_2m_sde")
        .default_schedule("exponential")
        .brownian()
        .with(crate::common::ancestral_options)
}

/// DPM++ 2M SDE with the midpoint correction.
pub fn dpmpp_2m_sde<'c, 'a>(
    context: &'c Context<'a>,
    x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
    dpmpp_2m_sde_with(context, x, Solver::Midpoint)
}

/// How A1111 presents "DPM++ 2M SDE Heun" (its row of the sampler table).
pub fn dpmpp_2m_sde_heun_spec() -> sdhost_plugin_api::SamplerSpec {
    sdhost_plugin_api::SamplerSpec::new("DPM++ 2M SDE Heun")
        .alias("k_dpmpp_2m_sde_heun")
        .default_schedule("exponential")
        .brownian()
        .with(crate::common::ancestral_options)
}

/// DPM++ 2M SDE with Heun's correction.
pub fn dpmpp_2m_sde_heun<'c, 'a>(
    context: &'c Context<'a>,
    x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
    dpmpp_2m_sde_with(context, x, Solver::Heun)
}

/// How A1111 presents "DPM++ 3M SDE" (its row of the sampler table).
pub fn dpmpp_3m_sde_spec() -> sdhost_plugin_api::SamplerSpec {
    sdhost_plugin_api::SamplerSpec::new("DPM++ 3M SDE")
        .alias("k_dpmpp_3m_sde")
        .default_schedule("exponential")
        .discard_penultimate_sigma()
        .brownian()
        .with(crate::common::ancestral_options)
}

/// DPM++ 3M SDE: third-order multistep with Brownian noise.
pub fn dpmpp_3m_sde<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> Result<Latent<'c, 'a>, SampleError> {
    let steps = require_steps(context)?;
    let eta = context.number("eta")?;
    let s_noise = context.number("s_noise")?;
    let sigmas = context.sigmas();
    let mut denoised_1: Option<Latent<'c, 'a>> = None;
    let mut denoised_2: Option<Latent<'c, 'a>> = None;
    let (mut h_1, mut h_2): (Option<f64>, Option<f64>) = (None, None);
    for i in 0..steps {
        let denoised = denoise_step(context, i, &x)?;
        let mut h_now = None;
        if sigmas[i + 1] == 0.0 {
            x = denoised.clone();
        } else {
            let h = lambda(sigmas[i + 1]) - lambda(sigmas[i]);
            let h_eta = h * (eta + 1.0);
            let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
            let mut terms = vec![((-h_eta).exp(), &x), (-(-h_eta).exp_m1(), &denoised)];
            // The multistep corrections, expanded into coefficients of D, D₁ and D₂.
            match (h_1, h_2, &denoised_1, &denoised_2) {
                (Some(h1), Some(h2), Some(d_1), Some(d_2)) => {
                    let (r0, r1) = (h1 / h, h2 / h);
                    let phi_3 = phi_2 / h_eta - 0.5;
                    // d1_0 = (D − D₁)/r0, d1_1 = (D₁ − D₂)/r1, d1 = d1_0 + (d1_0 − d1_1)·r0/(r0+r1),
                    // d2 = (d1_0 − d1_1)/(r0+r1); the step adds φ₂·d1 − φ₃·d2.
                    let k = r0 / (r0 + r1);
                    let m = 1.0 / (r0 + r1);
                    let c10 = phi_2 * (1.0 + k) - phi_3 * m;
                    let c11 = -phi_2 * k + phi_3 * m;
                    terms.push((c10 / r0, &denoised));
                    terms.push((-c10 / r0 + c11 / r1, d_1));
                    terms.push((-c11 / r1, d_2));
                }
                (Some(h1), _, Some(d_1), _) => {
                    let r = h1 / h;
                    terms.push((phi_2 / r, &denoised));
                    terms.push((-phi_2 / r, d_1));
                }
                _ => {}
            }
            let noise;
            if eta != 0.0 {
                noise = context.brownian_noise(sigmas[i], sigmas[i + 1])?;
                let scale = sigmas[i + 1] * (-(-2.0 * h * eta).exp_m1()).sqrt() * s_noise;
                terms.push((scale, &noise));
            }
            x = Latent::combine(context, &terms);
            h_now = Some(h);
        }
        denoised_2 = denoised_1.take();
        denoised_1 = Some(denoised);
        // k-diffusion shifts h only after a non-final step (h is undefined on the last one).
        if let Some(h) = h_now {
            h_2 = h_1;
            h_1 = Some(h);
        }
    }
    Ok(x)
}
