//! Restart sampling (Xu et al. 2023) as A1111 runs it (`sd_samplers_extra.restart_sampler`):
//! Heun steps on a shortened Karras schedule, with segments that jump back up from σ ≈ 0.1
//! to σ ≈ 2 by fresh noise and descend again.

use sdhost_plugin_api::{Context, Latent, SampleResult, SamplerSpec};

use crate::common::{require_steps, s_noise_option, to_d};

/// Karras et al. noise levels (ρ = 7) from σ_max down to σ_min, then 0, rounded to f32 as
/// k-diffusion's tensors are.
fn karras(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    let mut sigmas: Vec<f64> = (0..n)
        .map(|i| {
            let ramp = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            };
            f64::from((max_inv + ramp * (min_inv - max_inv)).powf(rho) as f32)
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// Index of the σ nearest to `value` (the first on ties, like `argmin`).
fn nearest(sigmas: &[f64], value: f64) -> usize {
    let mut best = 0;
    for (i, s) in sigmas.iter().enumerate() {
        if (s - value).abs() < (sigmas[best] - value).abs() {
            best = i;
        }
    }
    best
}

/// The (σ, σ_next) pairs Restart walks, with the restart segments inserted.
fn step_list(sigmas: &[f64]) -> Vec<(f64, f64)> {
    let steps = sigmas.len() - 1;
    let mut schedule = sigmas.to_vec();
    // A1111's automatic restart list: {0.1: [restart_steps + 1, restart_times, 2]}.
    let mut restart: Option<(usize, usize, usize, f64)> = None;
    if steps >= 20 {
        let (restart_steps, restart_times) = if steps >= 36 { (steps / 4, 2) } else { (9, 1) };
        schedule = karras(
            steps - restart_steps * restart_times,
            sigmas[sigmas.len() - 2],
            sigmas[0],
        );
        restart = Some((
            nearest(&schedule, 0.1),
            restart_steps + 1,
            restart_times,
            2.0,
        ));
    }
    let mut list = Vec::new();
    for i in 0..schedule.len() - 1 {
        list.push((schedule[i], schedule[i + 1]));
        if let Some((at, restart_steps, times, restart_max)) = restart {
            if i + 1 == at {
                let max_idx = nearest(&schedule, restart_max);
                if max_idx < at {
                    let segment = karras(restart_steps, schedule[at], schedule[max_idx]);
                    let segment = &segment[..segment.len() - 1];
                    for _ in 0..times {
                        list.extend(segment.windows(2).map(|w| (w[0], w[1])));
                    }
                }
            }
        }
    }
    list
}

/// How A1111 presents "Restart" (its row of the sampler table).
pub fn restart_spec() -> SamplerSpec {
    SamplerSpec::new("Restart")
        .alias("restart")
        .default_schedule("karras")
        .second_order()
        .with(s_noise_option)
}

/// Restart: Heun steps, re-noising wherever the next step starts above the last σ reached.
pub fn restart<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    require_steps(context)?;
    let s_noise = context.number("s_noise")?;
    let list = step_list(context.sigmas());
    context.set_total_steps(list.len() as u32);
    let mut last_sigma: Option<f64> = None;
    for (step, &(old_sigma, new_sigma)) in list.iter().enumerate() {
        match last_sigma {
            Some(last) if last < old_sigma => {
                let noise = context.noise()?;
                let scale = s_noise * (old_sigma * old_sigma - last * last).sqrt();
                x = x.mix(1.0, &noise, scale);
            }
            _ => {}
        }
        let denoised = context.denoise(&x, old_sigma)?;
        let d = to_d(&x, &denoised, old_sigma);
        context.callback(step, new_sigma, old_sigma, &x, &denoised)?;
        let dt = new_sigma - old_sigma;
        if new_sigma == 0.0 {
            x = x.mix(1.0, &d, dt);
        } else {
            let x_2 = x.mix(1.0, &d, dt);
            let denoised_2 = context.denoise(&x_2, new_sigma)?;
            let d_2 = to_d(&x_2, &denoised_2, new_sigma);
            x = Latent::combine(context, &[(1.0, &x), (dt / 2.0, &d), (dt / 2.0, &d_2)]);
        }
        last_sigma = Some(new_sigma);
    }
    Ok(x)
}
