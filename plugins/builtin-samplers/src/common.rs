//! Pieces several samplers share.

use sdhost_plugin_api::{Context, Latent, SampleError, SampleResult, SamplerSpec};

/// The option of every sampler that adds noise: its scale (A1111's `s_noise` setting).
pub fn s_noise_option(spec: SamplerSpec) -> SamplerSpec {
    spec.option("s_noise", 1.0, "scale of the added noise")
}

/// Options of the ancestral and SDE samplers (A1111's `eta_ancestral` and `s_noise`
/// settings): `eta` sizes the fresh noise of each step ([`ancestral_step`]), `s_noise` scales
/// it ([`add_ancestral_noise`]).
pub fn ancestral_options(spec: SamplerSpec) -> SamplerSpec {
    spec.option(
        "eta",
        1.0,
        "share of fresh noise per step (0 = deterministic)",
    )
    .with(s_noise_option)
}

/// The ancestral split of a step σ → σ_next into a deterministic part σ_down and fresh noise
/// σ_up, with σ_down² + σ_up² = σ_next² (k-diffusion `get_ancestral_step`).
pub fn ancestral_step(sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_next, 0.0);
    }
    let up = (eta
        * (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma))
            .sqrt())
    .min(sigma_next);
    let down = (sigma_next * sigma_next - up * up).sqrt();
    (down, up)
}

/// The ODE derivative (x − D)/σ (A1111's `to_d` with a scalar σ).
pub fn to_d<'c, 'a>(x: &Latent<'c, 'a>, denoised: &Latent<'c, 'a>, sigma: f64) -> Latent<'c, 'a> {
    x.mix(1.0 / sigma, denoised, -1.0 / sigma)
}

/// Karras churn options of Euler, Heun and DPM2 (A1111's `s_churn`, `s_tmin`, `s_tmax` and
/// `s_noise` settings), read by [`churn_gamma`] and `churn`.
pub fn churn_options(spec: SamplerSpec) -> SamplerSpec {
    spec.option(
        "s_churn",
        0.0,
        "stochasticity: noise added back per step (0 = none)",
    )
    .option("s_tmin", 0.0, "lowest σ at which churn applies")
    .option("s_tmax", f64::INFINITY, "highest σ at which churn applies")
    .with(s_noise_option)
}

/// Churn γ of Euler/Heun/DPM2 for step `i` (zero outside [s_tmin, s_tmax]).
pub fn churn_gamma(context: &Context<'_>, sigma: f64) -> Result<f64, SampleError> {
    let s_churn = context.number("s_churn")?;
    let s_tmin = context.number("s_tmin")?;
    let s_tmax = context.number("s_tmax")?;
    let intervals = (context.sigmas().len() - 1) as f64;
    Ok(if s_tmin <= sigma && sigma <= s_tmax {
        (s_churn / intervals).min(2f64.sqrt() - 1.0)
    } else {
        0.0
    })
}

/// Refuses schedules a sampler cannot walk.
pub fn require_steps(context: &Context<'_>) -> Result<usize, SampleError> {
    let n = context.sigmas().len();
    if n < 2 {
        return Err(SampleError::BadInput(format!(
            "needs at least two noise levels, got {n}"
        )));
    }
    Ok(n - 1)
}

/// DPM-Solver's time λ = −ln σ.
pub fn lambda(sigma: f64) -> f64 {
    -sigma.ln()
}

/// σ = e^(−λ), the inverse of [`lambda`].
pub fn sigma_of(lambda: f64) -> f64 {
    (-lambda).exp()
}

/// The model's prediction at step `i` (σ_i), reported to the host's progress callback.
pub fn denoise_step<'c, 'a>(
    context: &'c Context<'a>,
    i: usize,
    x: &Latent<'c, 'a>,
) -> SampleResult<'c, 'a> {
    let sigma = context.sigmas()[i];
    let denoised = context.denoise(x, sigma)?;
    context.callback(i, sigma, sigma, x, &denoised)?;
    Ok(denoised)
}

/// Ancestral samplers' fresh noise of σ_up, drawn only when σ_next > 0 (A1111's draw count).
pub fn add_ancestral_noise<'c, 'a>(
    context: &'c Context<'a>,
    x: Latent<'c, 'a>,
    sigma_next: f64,
    sigma_up: f64,
) -> SampleResult<'c, 'a> {
    if sigma_next <= 0.0 {
        return Ok(x);
    }
    let noise = context.noise()?;
    Ok(x.mix(1.0, &noise, context.number("s_noise")? * sigma_up))
}

/// Churn before a step: draws ε (always, as A1111 counts it) and returns (x, σ̂).
fn churn<'c, 'a>(
    context: &'c Context<'a>,
    x: Latent<'c, 'a>,
    sigma: f64,
) -> Result<(Latent<'c, 'a>, f64), SampleError> {
    let gamma = churn_gamma(context, sigma)?;
    let eps = context.noise()?;
    let sigma_hat = sigma * (gamma + 1.0);
    if gamma > 0.0 {
        let scale = context.number("s_noise")? * (sigma_hat * sigma_hat - sigma * sigma).sqrt();
        return Ok((x.mix(1.0, &eps, scale), sigma_hat));
    }
    Ok((x, sigma_hat))
}

/// The first half of an Euler/Heun/DPM2 step at step `i`: churn, the model call at σ̂
/// (reported to the host), and the slope there. Returns (x after churn, σ̂, slope).
pub fn churned_slope<'c, 'a>(
    context: &'c Context<'a>,
    i: usize,
    x: Latent<'c, 'a>,
) -> Result<(Latent<'c, 'a>, f64, Latent<'c, 'a>), SampleError> {
    let sigma = context.sigmas()[i];
    let (x, sigma_hat) = churn(context, x, sigma)?;
    let denoised = context.denoise(&x, sigma_hat)?;
    let d = to_d(&x, &denoised, sigma_hat);
    context.callback(i, sigma, sigma_hat, &x, &denoised)?;
    Ok((x, sigma_hat, d))
}
