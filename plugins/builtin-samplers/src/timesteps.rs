//! A1111's DDIM-family samplers (DDIM, PLMS), which walk the model's own discrete timesteps.
//!
//! Input layout ([`ScheduleInput::Timesteps`](sdhost_plugin_api::ScheduleInput)):
//! `timesteps()` is the descent from the level the init latent was noised to down to the
//! last timestep, `[ts[t_enc], ts[t_enc−1], …, ts[0]]` of A1111's DDIM timesteps, and x is
//! that noised latent in the k-diffusion form x_vp/√ᾱ. As in A1111, the first model call is
//! made one timestep lower than the noising level, `t_enc − 1` calls in all, and the result
//! is the VP latent at `ts[0]` (t = 1, not quite clean), which is what A1111 decodes.

use sdhost_plugin_api::{Context, Latent, SampleError, SampleResult, SamplerSpec};

/// ᾱ and the VE noise level of a timestep.
struct Level {
    t: f64,
    alpha: f64,
}

impl Level {
    fn new(context: &Context<'_>, t: f64) -> Result<Self, SampleError> {
        let alpha = context
            .alphas_cumprod()
            .get(t as usize)
            .copied()
            .ok_or_else(|| SampleError::BadInput(format!("timestep {t} is outside the model")))?;
        Ok(Level { t, alpha })
    }

    fn sigma(&self) -> f64 {
        ((1.0 - self.alpha) / self.alpha).sqrt()
    }
}

/// The timestep descent and the starting VP latent.
fn start<'c, 'a>(
    context: &'c Context<'a>,
    x: Latent<'c, 'a>,
) -> Result<(Vec<Level>, Latent<'c, 'a>), SampleError> {
    let levels = context
        .timesteps()
        .iter()
        .map(|&t| Level::new(context, t))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = levels.first() else {
        return Err(SampleError::BadInput(
            "timestep samplers need the model's timesteps".into(),
        ));
    };
    let x_vp = &x * first.alpha.sqrt();
    context.set_total_steps(levels.len().saturating_sub(2) as u32);
    Ok((levels, x_vp))
}

/// ε predicted at `level` for the VP latent `x_vp`, through the host's k-diffusion denoiser.
fn eps<'c, 'a>(
    context: &'c Context<'a>,
    x_vp: &Latent<'c, 'a>,
    level: &Level,
) -> SampleResult<'c, 'a> {
    let sigma = level.sigma();
    let x_ve = x_vp / level.alpha.sqrt();
    let denoised = context.denoise_at(&x_ve, sigma, level.t)?;
    Ok(x_ve.mix(1.0 / sigma, &denoised, -1.0 / sigma))
}

/// How A1111 presents "DDIM" (its row of the sampler table).
pub fn ddim_spec() -> SamplerSpec {
    SamplerSpec::new("DDIM")
        .alias("ddim")
        .timestep_input()
        // A1111's `eta_ddim` setting.
        .option(
            "eta",
            0.0,
            "share of fresh noise per step (0 = deterministic)",
        )
}

/// DDIM (η from option `eta`, A1111's `eta_ddim`); draws noise every step even at η = 0.
pub fn ddim<'c, 'a>(context: &'c Context<'a>, x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let eta = context.number("eta")?;
    let (levels, mut x) = start(context, x)?;
    for (i, pair) in levels.windows(2).skip(1).enumerate() {
        let (now, prev) = (&pair[0], &pair[1]);
        let e_t = eps(context, &x, now)?;
        let (a_t, a_prev) = (now.alpha, prev.alpha);
        let sigma_t = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt();
        let pred_x0 = x.mix(1.0 / a_t.sqrt(), &e_t, -(1.0 - a_t).sqrt() / a_t.sqrt());
        let noise = context.noise()?;
        x = Latent::combine(
            context,
            &[
                (a_prev.sqrt(), &pred_x0),
                ((1.0 - a_prev - sigma_t * sigma_t).sqrt(), &e_t),
                (sigma_t, &noise),
            ],
        );
        context.callback(i, now.sigma(), now.sigma(), &x, &pred_x0)?;
    }
    Ok(x)
}

/// How A1111 presents "PLMS" (its row of the sampler table).
pub fn plms_spec() -> SamplerSpec {
    SamplerSpec::new("PLMS").alias("plms").timestep_input()
}

/// PLMS: a pseudo improved Euler first step, then Adams–Bashforth of order 2–4 on ε.
pub fn plms<'c, 'a>(context: &'c Context<'a>, x: Latent<'c, 'a>) -> SampleResult<'c, 'a> {
    let (levels, mut x) = start(context, x)?;
    let mut old_eps: Vec<Latent<'c, 'a>> = Vec::new();
    let step = |x: &Latent<'c, 'a>, e: &Latent<'c, 'a>, now: &Level, prev: &Level| {
        let (a_t, a_prev) = (now.alpha, prev.alpha);
        let pred_x0 = x.mix(1.0 / a_t.sqrt(), e, -(1.0 - a_t).sqrt() / a_t.sqrt());
        let x_prev = pred_x0.mix(a_prev.sqrt(), e, (1.0 - a_prev).sqrt());
        (x_prev, pred_x0)
    };
    for (i, pair) in levels.windows(2).skip(1).enumerate() {
        let (now, prev) = (&pair[0], &pair[1]);
        let e_t = eps(context, &x, now)?;
        let e_prime = match old_eps.len() {
            0 => {
                let (x_prev, _) = step(&x, &e_t, now, prev);
                let e_next = eps(context, &x_prev, prev)?;
                e_t.mix(0.5, &e_next, 0.5)
            }
            1 => e_t.mix(1.5, &old_eps[0], -0.5),
            2 => Latent::combine(
                context,
                &[
                    (23.0 / 12.0, &e_t),
                    (-16.0 / 12.0, &old_eps[1]),
                    (5.0 / 12.0, &old_eps[0]),
                ],
            ),
            _ => Latent::combine(
                context,
                &[
                    (55.0 / 24.0, &e_t),
                    (-59.0 / 24.0, &old_eps[2]),
                    (37.0 / 24.0, &old_eps[1]),
                    (-9.0 / 24.0, &old_eps[0]),
                ],
            ),
        };
        let (x_prev, pred_x0) = step(&x, &e_prime, now, prev);
        old_eps.push(e_t);
        if old_eps.len() >= 4 {
            old_eps.remove(0);
        }
        x = x_prev;
        context.callback(i, now.sigma(), now.sigma(), &x, &pred_x0)?;
    }
    Ok(x)
}
