//! DPM fast and DPM adaptive: DPM-Solver (Lu et al. 2022) with fixed or adaptive steps in
//! t = −ln σ between A1111's σ_max = sigmas[0] and σ_min = the last non-zero σ, with
//! ancestral noise (η = 1 by default in A1111), as k-diffusion's `DPMSolver` does it.

use sdhost_plugin_api::{Context, Latent, SampleError, SampleResult, SamplerSpec};

use crate::common::{ancestral_options, ancestral_step, lambda as time, sigma_of as sigma};

/// The model as DPM-Solver sees it: ε(x, t) = (x − D(x, σ(t)))/σ(t).
struct Solver<'c, 'a> {
    context: &'c Context<'a>,
}

impl<'c, 'a> Solver<'c, 'a> {
    fn eps(&self, x: &Latent<'c, 'a>, t: f64) -> SampleResult<'c, 'a> {
        let s = sigma(t);
        let denoised = self.context.denoise(x, s)?;
        Ok(x.mix(1.0 / s, &denoised, -1.0 / s))
    }

    /// First order: x − σ(t_next)·(eʰ − 1)·ε.
    fn step_1(
        &self,
        x: &Latent<'c, 'a>,
        t_next: f64,
        h: f64,
        eps: &Latent<'c, 'a>,
    ) -> Latent<'c, 'a> {
        x.mix(1.0, eps, -sigma(t_next) * h.exp_m1())
    }

    /// Second order with the intermediate point at t + r1·h.
    fn step_2(
        &self,
        x: &Latent<'c, 'a>,
        t: f64,
        t_next: f64,
        r1: f64,
        eps: &Latent<'c, 'a>,
    ) -> SampleResult<'c, 'a> {
        let h = t_next - t;
        let s1 = t + r1 * h;
        let u1 = x.mix(1.0, eps, -sigma(s1) * (r1 * h).exp_m1());
        let eps_r1 = self.eps(&u1, s1)?;
        let a = sigma(t_next) * h.exp_m1();
        let b = sigma(t_next) / (2.0 * r1) * h.exp_m1();
        Ok(Latent::combine(
            self.context,
            &[(1.0, x), (-a + b, eps), (-b, &eps_r1)],
        ))
    }

    /// Third order with r1 = 1/3, r2 = 2/3.
    fn step_3(
        &self,
        x: &Latent<'c, 'a>,
        t: f64,
        t_next: f64,
        eps: &Latent<'c, 'a>,
    ) -> SampleResult<'c, 'a> {
        let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
        let h = t_next - t;
        let (s1, s2) = (t + r1 * h, t + r2 * h);
        let u1 = x.mix(1.0, eps, -sigma(s1) * (r1 * h).exp_m1());
        let eps_r1 = self.eps(&u1, s1)?;
        let c = sigma(s2) * (r2 / r1) * ((r2 * h).exp_m1() / (r2 * h) - 1.0);
        let u2 = Latent::combine(
            self.context,
            &[
                (1.0, x),
                (-sigma(s2) * (r2 * h).exp_m1() + c, eps),
                (-c, &eps_r1),
            ],
        );
        let eps_r2 = self.eps(&u2, s2)?;
        let a = sigma(t_next) * h.exp_m1();
        let b = sigma(t_next) / r2 * (h.exp_m1() / h - 1.0);
        Ok(Latent::combine(
            self.context,
            &[(1.0, x), (-a + b, eps), (-b, &eps_r2)],
        ))
    }

    /// The target of a step with ancestral noise: (t_next', σ_up) (k-diffusion's eta branch).
    fn ancestral(&self, s: f64, t: f64, t_end: f64, eta: f64) -> (f64, f64) {
        if eta == 0.0 {
            return (t, 0.0);
        }
        let (down, _) = ancestral_step(sigma(s), sigma(t), eta);
        let t_ = t_end.min(time(down));
        let up = (sigma(t).powi(2) - sigma(t_).powi(2)).sqrt();
        (t_, up)
    }
}

/// σ_min (last non-zero), σ_max (first) and the number of steps, as A1111 passes them.
fn range(context: &Context<'_>) -> Result<(f64, f64, usize), SampleError> {
    let sigmas = context.sigmas();
    if sigmas.len() < 2 || sigmas[sigmas.len() - 2] <= 0.0 {
        return Err(SampleError::BadInput(
            "DPM fast/adaptive need a schedule ending in one non-zero σ and 0".into(),
        ));
    }
    Ok((sigmas[sigmas.len() - 2], sigmas[0], sigmas.len() - 1))
}

/// t = −ln σ as k-diffusion computes it, from a float32 σ.
fn time32(sigma: f64) -> f64 {
    f64::from(-(sigma as f32).ln())
}

/// How A1111 presents "DPM fast" (its row of the sampler table).
pub fn dpm_fast_spec() -> SamplerSpec {
    SamplerSpec::new("DPM fast")
        .alias("k_dpm_fast")
        .uses_ensd()
        .with(ancestral_options)
}

/// DPM fast: ⌊n/3⌋+1 intervals evenly spaced in t, orders 3…3 then 2, 1 (or n mod 3).
pub fn dpm_fast<'c, 'a>(context: &'c Context<'a>, mut x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let (sigma_min, sigma_max, nfe) = range(context)?;
    let eta = context.number("eta")?;
    let s_noise = context.number("s_noise")?;
    let solver = Solver { context };
    let (t_start, t_end) = (time32(sigma_max), time32(sigma_min));
    let m = nfe / 3 + 1;
    let ts: Vec<f64> = (0..=m)
        .map(|i| f64::from((t_start + (t_end - t_start) * i as f64 / m as f64) as f32))
        .collect();
    let orders: Vec<usize> = if nfe % 3 == 0 {
        std::iter::repeat_n(3, m.saturating_sub(2))
            .chain([2, 1])
            .collect()
    } else {
        std::iter::repeat_n(3, m - 1).chain([nfe % 3]).collect()
    };
    context.set_total_steps(orders.len() as u32);
    for (i, &order) in orders.iter().enumerate() {
        let (t, t_next) = (ts[i], ts[i + 1]);
        let (t_next_, su) = solver.ancestral(t, t_next, t_end, eta);
        let eps = solver.eps(&x, t)?;
        let denoised = x.mix(1.0, &eps, -sigma(t));
        context.callback(i, sigma(t), sigma(t), &x, &denoised)?;
        x = match order {
            1 => solver.step_1(&x, t_next_, t_next_ - t, &eps),
            2 => solver.step_2(&x, t, t_next_, 0.5, &eps)?,
            _ => solver.step_3(&x, t, t_next_, &eps)?,
        };
        // k-diffusion draws this noise every step, also when σ_up is 0.
        let noise = context.noise()?;
        x = x.mix(1.0, &noise, su * s_noise);
    }
    Ok(x)
}

/// PID step-size control of DPM adaptive (k-diffusion `PIDStepSizeController`).
struct StepSize {
    h: f64,
    b: [f64; 3],
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl StepSize {
    fn new(h: f64, (p, i, d): (f64, f64, f64), order: f64, accept_safety: f64) -> Self {
        StepSize {
            h,
            b: [(p + i + d) / order, -(p + 2.0 * d) / order, d / order],
            accept_safety,
            errs: None,
        }
    }

    /// Scales h by the error and says whether the step is accepted.
    fn propose(&mut self, error: f64) -> bool {
        let inv = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv, inv, inv]);
        errs[0] = inv;
        let factor = errs[0].powf(self.b[0]) * errs[1].powf(self.b[1]) * errs[2].powf(self.b[2]);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// How A1111 presents "DPM adaptive" (its row of the sampler table).
pub fn dpm_adaptive_spec() -> SamplerSpec {
    SamplerSpec::new("DPM adaptive")
        .alias("k_dpm_ad")
        .uses_ensd()
        .with(ancestral_options)
}

/// DPM adaptive: embedded 2nd/3rd-order pairs with PID-controlled steps (A1111 defaults:
/// order 3, rtol 0.05, atol 0.0078, h_init 0.05, I-controller, η = 1).
pub fn dpm_adaptive<'c, 'a>(
    context: &'c Context<'a>,
    mut x: Latent<'c, 'a>,
) -> SampleResult<'c, 'a> {
    let (sigma_min, sigma_max, _) = range(context)?;
    let eta = context.number("eta")?;
    let s_noise = context.number("s_noise")?;
    let (rtol, atol) = (0.05, 0.0078);
    let solver = Solver { context };
    let (t_start, t_end) = (time32(sigma_max), time32(sigma_min));
    let order = if eta != 0.0 { 1.5 } else { 3.0 };
    let mut pid = StepSize::new(0.05, (0.0, 1.0, 0.0), order, 0.81);
    let mut s = t_start;
    let mut x_prev = x.clone();
    let mut step = 0;
    while s < t_end - 1e-5 {
        let t = f64::from(t_end.min(s + pid.h) as f32);
        let (t_, su) = solver.ancestral(s, t, t_end, eta);
        let eps = solver.eps(&x, s)?;
        let denoised = x.mix(1.0, &eps, -sigma(s));
        let x_low = solver.step_2(&x, s, t_, 1.0 / 3.0, &eps)?;
        let x_high = solver.step_3(&x, s, t_, &eps)?;
        let delta = (&x_low.abs().maximum(&x_prev.abs()) * rtol).max_scalar(atol);
        // k-diffusion's error is a float32 tensor; a NaN after a failed host operation only
        // rejects the step, and the next model call reports the failure.
        let error =
            f64::from(((&x_low - &x_high).div(&delta).norm() / (x.numel() as f64).sqrt()) as f32);
        if pid.propose(error) {
            x_prev = x_low;
            let noise = context.noise()?;
            x = x_high.mix(1.0, &noise, su * s_noise);
            s = t;
        }
        context.callback(step, sigma(s), sigma(s), &x, &denoised)?;
        step += 1;
    }
    Ok(x)
}
