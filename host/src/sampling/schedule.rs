//! A1111's sigma schedules (`modules/sd_schedulers.py`, `KDiffusionSampler.get_sigmas`), the
//! LCM sampler's own schedule, the DDIM-family timesteps and the img2img step arithmetic.
//!
//! Every list is what A1111 hands the sampler: float32 values (returned as f64), computed
//! with the same float32/float64 split as A1111 and k-diffusion (see [`super::noise_levels`]).

use super::noise_levels::{
    append_zero, exp32, linspace32, LcmNoiseLevels, NoiseLevels, NoiseLevelsError, NoiseModel,
    TIMESTEPS,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;
use std::fmt;
use std::str::FromStr;

/// Align Your Steps' 11 published SD1.5 noise levels.
pub const AYS_SD1: [f64; 11] = [
    14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
];
/// Align Your Steps' 11 published SDXL noise levels.
pub const AYS_SDXL: [f64; 11] = [
    14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029,
];
/// σ range of option `use_old_karras_scheduler_sigmas`.
pub const OLD_KARRAS_SIGMAS: (f64, f64) = (0.1, 10.0);

/// Why a schedule could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The name is no schedule's label, name or alias.
    #[error("unknown schedule type `{name}`; valid: {valid}")]
    UnknownSchedule { name: String, valid: String },
    /// Zero steps were asked for.
    #[error("a schedule needs at least one step")]
    ZeroSteps,
    /// More DDIM-family steps than the model has timesteps (A1111 fails with a zero stride).
    #[error("{steps} steps: DDIM, PLMS and UniPC allow at most {TIMESTEPS}")]
    TooManyTimesteps { steps: usize },
    /// An option value the formula cannot use.
    #[error("schedule option {option} = {value}: {reason}")]
    InvalidOption {
        option: &'static str,
        value: f64,
        reason: &'static str,
    },
    /// The model's noise levels do not support the schedule.
    #[error(transparent)]
    NoiseLevels(#[from] NoiseLevelsError),
}

/// A1111's schedule types ("Schedule type" in the UI and infotext), in A1111's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// The sampler's default schedule, else the model's own (Uniform).
    Automatic,
    /// The model's own: t = linspace(999, 0, n) through `t_to_sigma`.
    Uniform,
    /// Karras et al. (2022), ρ = 7.
    Karras,
    /// Evenly spaced in log σ.
    Exponential,
    /// Polynomial in log σ, ρ = 1.
    Polyexponential,
    /// t evenly spaced from t(σmax) to t(σmin), n + 1 points without the last.
    SgmUniform,
    /// tan of evenly spaced atan σ; ends at σmin with no appended 0.
    KlOptimal,
    /// NVIDIA's published 11 levels, log-linearly resampled.
    AlignYourSteps,
    /// Every (1000/n)-th model level from the top.
    Simple,
    /// t evenly spaced from t(σmax) to t(σmin), n points.
    Normal,
    /// Model levels 1, 1 + 1000//n, … in reverse.
    Ddim,
    /// Beta(α, β) quantiles, linear in σ.
    Beta,
}

impl Schedule {
    /// Every schedule, in A1111's order.
    pub const ALL: [Schedule; 12] = [
        Schedule::Automatic,
        Schedule::Uniform,
        Schedule::Karras,
        Schedule::Exponential,
        Schedule::Polyexponential,
        Schedule::SgmUniform,
        Schedule::KlOptimal,
        Schedule::AlignYourSteps,
        Schedule::Simple,
        Schedule::Normal,
        Schedule::Ddim,
        Schedule::Beta,
    ];

    /// The UI and infotext label ("SGM Uniform").
    pub fn label(self) -> &'static str {
        match self {
            Schedule::Automatic => "Automatic",
            Schedule::Uniform => "Uniform",
            Schedule::Karras => "Karras",
            Schedule::Exponential => "Exponential",
            Schedule::Polyexponential => "Polyexponential",
            Schedule::SgmUniform => "SGM Uniform",
            Schedule::KlOptimal => "KL Optimal",
            Schedule::AlignYourSteps => "Align Your Steps",
            Schedule::Simple => "Simple",
            Schedule::Normal => "Normal",
            Schedule::Ddim => "DDIM",
            Schedule::Beta => "Beta",
        }
    }

    /// The API name ("sgm_uniform").
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Automatic => "automatic",
            Schedule::Uniform => "uniform",
            Schedule::Karras => "karras",
            Schedule::Exponential => "exponential",
            Schedule::Polyexponential => "polyexponential",
            Schedule::SgmUniform => "sgm_uniform",
            Schedule::KlOptimal => "kl_optimal",
            Schedule::AlignYourSteps => "align_your_steps",
            Schedule::Simple => "simple",
            Schedule::Normal => "normal",
            Schedule::Ddim => "ddim",
            Schedule::Beta => "beta",
        }
    }

    /// Other accepted spellings.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Schedule::SgmUniform => &["SGMUniform"],
            _ => &[],
        }
    }

    /// The schedule whose label, name or alias is `name`, ignoring case.
    pub fn from_name(name: &str) -> Result<Self, ScheduleError> {
        Self::ALL
            .into_iter()
            .find(|s| {
                std::iter::once(s.label())
                    .chain([s.name()])
                    .chain(s.aliases().iter().copied())
                    .any(|n| n.eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| ScheduleError::UnknownSchedule {
                name: name.to_string(),
                valid: Self::ALL
                    .iter()
                    .map(|s| format!("{} ({})", s.label(), s.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Automatic → the sampler's default schedule, or Uniform (the model's own) without one.
    pub fn resolve(self, sampler_default: Option<Schedule>) -> Schedule {
        match (self, sampler_default) {
            (Schedule::Automatic, Some(default)) if default != Schedule::Automatic => default,
            (Schedule::Automatic, _) => Schedule::Uniform,
            (schedule, _) => schedule,
        }
    }

    /// ρ of the schedules that take one (A1111's `default_rho`).
    pub fn default_rho(self) -> Option<f64> {
        match self {
            Schedule::Karras => Some(7.0),
            Schedule::Polyexponential => Some(1.0),
            _ => None,
        }
    }

    /// The σ list the sampler gets for `steps` steps: `steps` values then 0 for most schedules;
    /// KL Optimal ends at σmin without 0; DDIM takes every (len // steps)-th model level from
    /// level 1, so its length need not be steps + 1 (168 entries for 150 steps on SD).
    /// With `discard_penultimate` the list is made for `steps + 1` and its second-to-last entry
    /// dropped. Automatic here is the model's own schedule: [`Schedule::resolve`] it first to
    /// get a sampler's default.
    pub fn sigmas<M: NoiseModel + ?Sized>(
        self,
        steps: usize,
        model: &M,
        options: &ScheduleOptions,
    ) -> Result<Vec<f64>, ScheduleError> {
        if steps == 0 {
            return Err(ScheduleError::ZeroSteps);
        }
        let n = steps + usize::from(options.discard_penultimate);
        let range = options.sigma_range(model)?;
        let mut sigmas = match self {
            Schedule::Automatic | Schedule::Uniform => model.default_sigmas(n),
            Schedule::Karras => karras(n, range, options.rho_for(self)?),
            Schedule::Exponential => exponential(n, range),
            Schedule::Polyexponential => polyexponential(n, range, options.rho_for(self)?),
            Schedule::SgmUniform => timestep_spaced(n, model, range, true),
            Schedule::KlOptimal => kl_optimal(n, range),
            Schedule::AlignYourSteps => align_your_steps(n, options.sdxl),
            Schedule::Simple => simple(n, model.sigmas()),
            Schedule::Normal => timestep_spaced(n, model, range, false),
            Schedule::Ddim => ddim(n, model.sigmas()),
            Schedule::Beta => beta(n, range, options.beta_alpha, options.beta_beta)?,
        };
        if options.discard_penultimate {
            sigmas.remove(sigmas.len() - 2);
        }
        Ok(sigmas)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s)
    }
}

/// A1111's schedule options (settings `sigma_min`, `sigma_max`, `rho`, `beta_dist_alpha`,
/// `beta_dist_beta`, `always_discard_next_to_last_sigma`, `use_old_karras_scheduler_sigmas`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, SmartDefault)]
#[serde(default)]
pub struct ScheduleOptions {
    /// Smallest σ of the schedule instead of the model's (null or 0: the model's).
    pub sigma_min: Option<f64>,
    /// Largest σ instead of the model's (null or 0: the model's).
    pub sigma_max: Option<f64>,
    /// ρ for Karras and Polyexponential (null or 0: their default).
    pub rho: Option<f64>,
    /// α of the Beta schedule.
    #[serde(rename = "beta_dist_alpha")]
    #[default(0.6)]
    pub beta_alpha: f64,
    /// β of the Beta schedule.
    #[serde(rename = "beta_dist_beta")]
    #[default(0.6)]
    pub beta_beta: f64,
    /// Make the list for one more step and drop the second-to-last σ.
    #[serde(rename = "always_discard_next_to_last_sigma")]
    pub discard_penultimate: bool,
    /// Align Your Steps: use its SDXL noise levels (set from the model, not by requests).
    #[serde(skip)]
    #[schemars(skip)]
    pub sdxl: bool,
    /// Karras: base range 0.1…10 instead of the model's σmin…σmax.
    #[serde(rename = "use_old_karras_scheduler_sigmas")]
    pub old_karras_sigmas: bool,
}

impl ScheduleOptions {
    /// (σmin, σmax) as A1111 passes them: the model's (or 0.1/10), overridden by options that
    /// are non-zero and differ from the model's.
    fn sigma_range<M: NoiseModel + ?Sized>(&self, model: &M) -> Result<(f64, f64), ScheduleError> {
        let (model_min, model_max) = (model.sigma_min(), model.sigma_max());
        let (base_min, base_max) = if self.old_karras_sigmas {
            OLD_KARRAS_SIGMAS
        } else {
            (model_min, model_max)
        };
        let pick = |option: &'static str, value: Option<f64>, model: f64, base: f64| match value {
            Some(v) if !(v.is_finite() && v >= 0.0) => Err(ScheduleError::InvalidOption {
                option,
                value: v,
                reason: "must be a positive number, or 0 for the model's",
            }),
            Some(v) if v != 0.0 && v != model => Ok(v),
            _ => Ok(base),
        };
        Ok((
            pick("sigma_min", self.sigma_min, model_min, base_min)?,
            pick("sigma_max", self.sigma_max, model_max, base_max)?,
        ))
    }

    fn rho_for(&self, schedule: Schedule) -> Result<f64, ScheduleError> {
        let default = schedule.default_rho().unwrap_or(1.0);
        match self.rho {
            Some(r) if !(r.is_finite() && r >= 0.0) => Err(ScheduleError::InvalidOption {
                option: "rho",
                value: r,
                reason: "must be a positive number, or 0 for the schedule's default",
            }),
            Some(r) if r != 0.0 => Ok(r),
            _ => Ok(default),
        }
    }
}

fn karras(n: usize, (sigma_min, sigma_max): (f64, f64), rho: f64) -> Vec<f64> {
    // The ρ-th roots are Python floats; the ramp and everything after it are float32 tensors.
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let span = (min_inv_rho - max_inv_rho) as f32;
    let top = max_inv_rho as f32;
    let sigmas: Vec<f32> = linspace32(0.0, 1.0, n)
        .into_iter()
        .map(|r| pow32(top + r * span, rho))
        .collect();
    append_zero(&sigmas)
}

fn exponential(n: usize, (sigma_min, sigma_max): (f64, f64)) -> Vec<f64> {
    let sigmas: Vec<f32> = linspace32(sigma_max.ln() as f32, sigma_min.ln() as f32, n)
        .into_iter()
        .map(exp32)
        .collect();
    append_zero(&sigmas)
}

fn polyexponential(n: usize, (sigma_min, sigma_max): (f64, f64), rho: f64) -> Vec<f64> {
    let span = (sigma_max.ln() - sigma_min.ln()) as f32;
    let bottom = sigma_min.ln() as f32;
    let sigmas: Vec<f32> = linspace32(1.0, 0.0, n)
        .into_iter()
        .map(|r| exp32(pow32(r, rho) * span + bottom))
        .collect();
    append_zero(&sigmas)
}

/// SGM Uniform (`sgm`: n + 1 points without the last) and Normal (n points): timesteps evenly
/// spaced between t(σmax) and t(σmin), mapped back through the model.
fn timestep_spaced<M: NoiseModel + ?Sized>(
    n: usize,
    model: &M,
    (sigma_min, sigma_max): (f64, f64),
    sgm: bool,
) -> Vec<f64> {
    let start = model.sigma_to_t(sigma_max) as f32;
    let end = model.sigma_to_t(sigma_min) as f32;
    let mut ts = linspace32(start, end, if sgm { n + 1 } else { n });
    if sgm {
        ts.pop();
    }
    ts.into_iter()
        .map(|t| model.t_to_sigma(f64::from(t)))
        .chain(std::iter::once(0.0))
        .collect()
}

fn kl_optimal(n: usize, (sigma_min, sigma_max): (f64, f64)) -> Vec<f64> {
    let alpha_min = atan32(sigma_min as f32);
    let alpha_max = atan32(sigma_max as f32);
    (0..=n)
        .map(|i| {
            let r = i as f32 / n as f32;
            f64::from(tan32(r * alpha_min + (1.0 - r) * alpha_max))
        })
        .collect()
}

fn align_your_steps(n: usize, sdxl: bool) -> Vec<f64> {
    let table = if sdxl { &AYS_SDXL } else { &AYS_SD1 };
    let sigmas: Vec<f32> = if n == table.len() {
        table.iter().map(|&s| s as f32).collect()
    } else {
        // Interpolate log σ (ascending) linearly over [0, 1], as np.interp does, then reverse.
        let xs = numpy_linspace01(table.len());
        let ys: Vec<f64> = table.iter().rev().map(|s| s.ln()).collect();
        let mut out: Vec<f32> = numpy_linspace01(n)
            .into_iter()
            .map(|x| numpy_interp(x, &xs, &ys).exp() as f32)
            .collect();
        out.reverse();
        out
    };
    append_zero(&sigmas)
}

fn simple(n: usize, model_sigmas: &[f64]) -> Vec<f64> {
    let stride = model_sigmas.len() as f64 / n as f64;
    (0..n)
        .map(|x| model_sigmas[model_sigmas.len() - 1 - (x as f64 * stride) as usize])
        .chain(std::iter::once(0.0))
        .collect()
}

fn ddim(n: usize, model_sigmas: &[f64]) -> Vec<f64> {
    let stride = (model_sigmas.len() / n).max(1);
    let mut sigmas: Vec<f64> = (1..model_sigmas.len())
        .step_by(stride)
        .map(|t| model_sigmas[t])
        .collect();
    sigmas.reverse();
    sigmas.push(0.0);
    sigmas
}

fn beta(
    n: usize,
    (sigma_min, sigma_max): (f64, f64),
    alpha: f64,
    beta: f64,
) -> Result<Vec<f64>, ScheduleError> {
    for (option, value) in [("beta_dist_alpha", alpha), ("beta_dist_beta", beta)] {
        if !(value.is_finite() && value > 0.0) {
            return Err(ScheduleError::InvalidOption {
                option,
                value,
                reason: "must be a positive number",
            });
        }
    }
    // Python floats throughout; only the final tensor is float32.
    Ok(numpy_linspace01(n)
        .into_iter()
        .map(|x| {
            let q = beta_ppf(1.0 - x, alpha, beta);
            f64::from((sigma_min + q * (sigma_max - sigma_min)) as f32)
        })
        .chain(std::iter::once(0.0))
        .collect())
}

/// The LCM sampler's own schedule for `steps` (A1111 `LCMCompVisDenoiser.get_sigmas`):
/// `linspace(999, 19, steps)` interpolated between LCM's 50 levels, then 0.
pub fn lcm_sigmas(steps: usize, model: &NoiseLevels) -> Result<Vec<f64>, ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    Ok(LcmNoiseLevels::new(model)?.default_sigmas(steps))
}

/// The model timestep LCM feeds the UNet for σ: the nearest of 19, 39, …, 999 in log σ.
pub fn lcm_timestep_for_sigma(sigma: f64, model: &NoiseLevels) -> Result<i64, ScheduleError> {
    Ok(LcmNoiseLevels::new(model)?.timestep_for_sigma(sigma))
}

/// DDIM/PLMS/UniPC timesteps (`CompVisSampler.get_timesteps`): 1, 1+k, 1+2k, … (< 1001,
/// clipped to 999) with k = 1000 // steps, made for `steps + 1` when discarding the penultimate.
pub fn ddim_timesteps(steps: usize, discard_penultimate: bool) -> Result<Vec<i64>, ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    let steps = steps + usize::from(discard_penultimate);
    let stride = TIMESTEPS / steps;
    if stride == 0 {
        return Err(ScheduleError::TooManyTimesteps { steps });
    }
    let last = TIMESTEPS as i64 - 1;
    Ok((0..TIMESTEPS as i64)
        .step_by(stride)
        .map(|t| (t + 1).min(last))
        .collect())
}

/// img2img's (full schedule length, t_enc) for `steps` UI steps (`setup_img2img_steps`):
/// by default (steps, int(min(ds, 0.999)·steps)); with `fix_steps`
/// (int(steps / min(ds, 0.999)) or 0 at ds = 0, steps − 1). A negative ds counts as 0.
pub fn img2img_steps(steps: usize, denoising_strength: f64, fix_steps: bool) -> (usize, usize) {
    let strength = denoising_strength.min(0.999);
    if fix_steps {
        let full = if denoising_strength > 0.0 {
            (steps as f64 / strength) as usize
        } else {
            0
        };
        (full, steps.saturating_sub(1))
    } else {
        (steps, (strength.max(0.0) * steps as f64) as usize)
    }
}

/// The part of a full σ list that k-diffusion img2img samples (`sigmas[steps − t_enc − 1:]`):
/// `t_enc + 2` values for the usual lists, so `t_enc + 1` sampler steps.
pub fn img2img_sigma_sched(sigmas: &[f64], steps: usize, t_enc: usize) -> &[f64] {
    let start = steps.saturating_sub(t_enc + 1).min(sigmas.len());
    &sigmas[start..]
}

/// DDIM-family img2img: the timesteps sampled (`timesteps[:t_enc]`) and the timestep the init
/// latent is noised to (`timesteps[t_enc]`); None where A1111 would index past the end.
pub fn ddim_img2img_timesteps(timesteps: &[i64], t_enc: usize) -> Option<(&[i64], i64)> {
    let start = *timesteps.get(t_enc)?;
    Some((&timesteps[..t_enc], start))
}

/// Quantile of the Beta(α, β) distribution (scipy's `stats.beta.ppf`), by bisection on the
/// regularized incomplete beta function to the last representable x.
pub fn beta_ppf(p: f64, alpha: f64, beta: f64) -> f64 {
    if p.is_nan() || alpha.is_nan() || beta.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    // Near p = 1 the upper tail 1 − p (exact in f64 for p > 0.5) pins x down far better than
    // p itself: solve the mirrored distribution there.
    if p > 0.5 {
        return 1.0 - lower_quantile(1.0 - p, beta, alpha);
    }
    lower_quantile(p, alpha, beta)
}

/// The x with I_x(a, b) = p, by bisection down to adjacent floats.
fn lower_quantile(p: f64, a: f64, b: f64) -> f64 {
    let ln_beta = ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    loop {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            return mid;
        }
        if regularized_incomplete_beta(mid, a, b, ln_beta) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
}

/// I_x(a, b) for 0 < x < 1, with ln B(a, b) given.
fn regularized_incomplete_beta(x: f64, a: f64, b: f64, ln_beta: f64) -> f64 {
    // The continued fraction converges fast only left of the mean; the symmetry
    // I_x(a, b) = 1 − I_{1−x}(b, a) covers the right side.
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a, ln_beta);
    }
    let front = (a * x.ln() + b * (1.0 - x).ln() - ln_beta).exp() / a;
    front * incomplete_beta_fraction(x, a, b)
}

/// 1 / (1 + d1 / (1 + d2 / (1 + …))) with the coefficients of the incomplete beta function's
/// continued fraction (Abramowitz & Stegun 26.5.8), by the modified Lentz method.
fn incomplete_beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let coefficient = |j: usize| -> f64 {
        let m = (j / 2) as f64;
        if j % 2 == 1 {
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
        } else {
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
        }
    };
    let (mut f, mut c, mut d) = (1.0f64, 1.0f64, 0.0f64);
    for j in 1..10_000 {
        let dj = coefficient(j);
        d = 1.0 + dj * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + dj / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    1.0 / f
}

/// ln Γ(x) for x > 0: the Stirling series after shifting x up past 15, where its truncation
/// error is below 1e-19.
fn ln_gamma(x: f64) -> f64 {
    let (mut z, mut shift) = (x, 0.0f64);
    while z < 15.0 {
        shift += z.ln();
        z += 1.0;
    }
    let inv = 1.0 / z;
    let inv2 = inv * inv;
    // Bernoulli terms B_2k / (2k (2k − 1) z^(2k−1)), k = 1…7.
    let series = inv
        * (1.0 / 12.0
            + inv2
                * (-1.0 / 360.0
                    + inv2
                        * (1.0 / 1260.0
                            + inv2
                                * (-1.0 / 1680.0
                                    + inv2
                                        * (1.0 / 1188.0
                                            + inv2 * (-691.0 / 360360.0 + inv2 / 156.0))))));
    (z - 0.5) * z.ln() - z + 0.5 * (2.0 * std::f64::consts::PI).ln() + series - shift
}

/// torch's `pow(tensor, exponent)` on a float32 tensor: exact special cases, else std::pow in
/// double rounded to float.
fn pow32(base: f32, exponent: f64) -> f32 {
    match exponent {
        0.0 => 1.0,
        1.0 => base,
        0.5 => base.sqrt(),
        -0.5 => 1.0 / base.sqrt(),
        -1.0 => 1.0 / base,
        2.0 => base * base,
        3.0 => base * base * base,
        -2.0 => 1.0 / (base * base),
        e => f64::from(base).powf(e) as f32,
    }
}

fn atan32(x: f32) -> f32 {
    f64::from(x).atan() as f32
}

fn tan32(x: f32) -> f32 {
    f64::from(x).tan() as f32
}

/// `np.linspace(0, 1, n)`: i · (1/(n−1)), the last exactly 1.
fn numpy_linspace01(n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![0.0; n];
    }
    let step = 1.0 / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { 1.0 } else { i as f64 * step })
        .collect()
}

/// `np.interp(x, xs, ys)` for ascending `xs`: clamped at the ends, exact at the knots.
fn numpy_interp(x: f64, xs: &[f64], ys: &[f64]) -> f64 {
    let last = xs.len() - 1;
    if x >= xs[last] {
        return ys[last];
    }
    if x <= xs[0] {
        return ys[0];
    }
    let j = xs.partition_point(|&k| k <= x) - 1;
    if xs[j] == x {
        return ys[j];
    }
    let slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]);
    slope * (x - xs[j]) + ys[j]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A1111's SD 1.x σ lists for 20 steps (`modules/sd_schedulers.py` on the model's noise
    /// levels), written to four decimals, must agree to rounding.
    fn assert_rounded(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?}");
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 5.1e-5, "index {i}: {a} vs {e}");
        }
    }

    #[test]
    fn karras_and_uniform_match_the_spec_for_20_steps() {
        let model = NoiseLevels::sd_scaled_linear();
        let options = ScheduleOptions::default();
        let karras = Schedule::Karras.sigmas(20, &model, &options).unwrap();
        assert_rounded(
            &karras,
            &[
                14.6146, 11.7254, 9.3402, 7.3836, 5.7894, 4.4998, 3.4648, 2.6408, 1.9909, 1.4832,
                1.0908, 0.7909, 0.5647, 0.3964, 0.2730, 0.1842, 0.1213, 0.0779, 0.0485, 0.0292,
                0.0,
            ],
        );
        let uniform = Schedule::Uniform.sigmas(20, &model, &options).unwrap();
        assert_rounded(
            &uniform,
            &[
                14.6146, 10.7468, 8.0815, 6.2049, 4.8557, 3.8654, 3.1238, 2.5572, 2.1157, 1.7648,
                1.4806, 1.2458, 1.0481, 0.8784, 0.7297, 0.5964, 0.4736, 0.3555, 0.2322, 0.0292,
                0.0,
            ],
        );
        assert_eq!(
            Schedule::Automatic.sigmas(20, &model, &options).unwrap(),
            uniform
        );
    }

    #[test]
    fn img2img_karras_starts_at_index_4_for_ds_075() {
        let model = NoiseLevels::sd_scaled_linear();
        let (steps, t_enc) = img2img_steps(20, 0.75, false);
        assert_eq!((steps, t_enc), (20, 15));
        let sigmas = Schedule::Karras
            .sigmas(steps, &model, &ScheduleOptions::default())
            .unwrap();
        let sched = img2img_sigma_sched(&sigmas, steps, t_enc);
        assert_eq!(sched.len(), 17, "16 sampler steps");
        assert!((sched[0] - 5.7894).abs() < 5e-5);
    }

    #[test]
    fn img2img_step_arithmetic_matches_the_spec() {
        assert_eq!(img2img_steps(20, 0.0, false), (20, 0));
        assert_eq!(img2img_steps(20, 1.0, false), (20, 19));
        assert_eq!(img2img_steps(20, 0.5, true), (40, 19));
        assert_eq!(img2img_steps(20, 0.3, true), (66, 19));
        assert_eq!(img2img_steps(20, 1.0, true), (20, 19));
        assert_eq!(img2img_steps(20, 0.0, true), (0, 19));
        // int(0.999 * 1000) = 999 = N − 1; 0.7 · 10 = 7.000000000000001 truncates to 7.
        assert_eq!(img2img_steps(1000, 1.0, false), (1000, 999));
        assert_eq!(img2img_steps(10, 0.7, false), (10, 7));
        // ds = 0: one step from the smallest non-zero σ.
        let sigmas = [3.0, 2.0, 1.0, 0.0];
        assert_eq!(img2img_sigma_sched(&sigmas, 3, 0), &[1.0, 0.0]);
        assert_eq!(img2img_sigma_sched(&sigmas, 3, 2), &sigmas);
    }

    #[test]
    fn ddim_timesteps_match_the_spec() {
        let ts = ddim_timesteps(20, false).unwrap();
        assert_eq!(ts.len(), 20);
        assert_eq!((ts[0], ts[1], ts[19]), (1, 51, 951));
        let ts = ddim_timesteps(30, false).unwrap();
        assert_eq!((ts.len(), ts[1], ts[30]), (31, 34, 991));
        let ts = ddim_timesteps(1000, false).unwrap();
        assert_eq!((ts.len(), ts[998], ts[999]), (1000, 999, 999));
        assert_eq!(
            ddim_timesteps(19, true).unwrap(),
            ddim_timesteps(20, false).unwrap()
        );
        assert!(ddim_timesteps(1001, false).is_err());
        assert!(ddim_timesteps(0, false).is_err());
        let ts = ddim_timesteps(20, false).unwrap();
        assert_eq!(ddim_img2img_timesteps(&ts, 15), Some((&ts[..15], 751)));
        assert_eq!(ddim_img2img_timesteps(&ts, 20), None);
    }

    #[test]
    fn names_labels_and_aliases_resolve() {
        for schedule in Schedule::ALL {
            assert_eq!(Schedule::from_name(schedule.label()).unwrap(), schedule);
            assert_eq!(Schedule::from_name(schedule.name()).unwrap(), schedule);
            assert_eq!(
                Schedule::from_name(&schedule.label().to_uppercase()).unwrap(),
                schedule
            );
        }
        assert_eq!(
            "sgmuniform".parse::<Schedule>().unwrap(),
            Schedule::SgmUniform
        );
        let err = Schedule::from_name("Karras Exponential")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SGM Uniform (sgm_uniform)") && err.contains("Beta"),
            "{err}"
        );
        assert_eq!(
            Schedule::Automatic.resolve(Some(Schedule::Karras)),
            Schedule::Karras
        );
        assert_eq!(Schedule::Automatic.resolve(None), Schedule::Uniform);
        assert_eq!(
            Schedule::Beta.resolve(Some(Schedule::Karras)),
            Schedule::Beta
        );
    }

    #[test]
    fn list_shapes_follow_a1111() {
        let model = NoiseLevels::sd_scaled_linear();
        let options = ScheduleOptions::default();
        for schedule in Schedule::ALL {
            let sigmas = schedule.sigmas(10, &model, &options).unwrap();
            assert_eq!(sigmas.len(), 11, "{schedule}");
            if schedule == Schedule::Ddim {
                // Its stride 1000 // n makes lists of n = 10 and n = 11 unrelated.
                continue;
            }
            let discard = ScheduleOptions {
                discard_penultimate: true,
                ..ScheduleOptions::default()
            };
            let longer = schedule.sigmas(10, &model, &discard).unwrap();
            let full = schedule.sigmas(11, &model, &options).unwrap();
            assert_eq!(longer[..10], full[..10], "{schedule}");
            assert_eq!(longer[10], full[11], "{schedule}");
        }
        let kl = Schedule::KlOptimal.sigmas(10, &model, &options).unwrap();
        assert!((kl[10] - model.sigma_min()).abs() < 1e-6);
        assert_eq!(
            Schedule::Ddim.sigmas(150, &model, &options).unwrap().len(),
            168
        );
        assert!(matches!(
            Schedule::Karras.sigmas(0, &model, &options),
            Err(ScheduleError::ZeroSteps)
        ));
    }

    #[test]
    fn beta_ppf_inverts_known_quantiles() {
        // Beta(1, 1) is uniform; Beta(2, 1) has CDF x²; Beta(0.5, 0.5) is the arcsine law.
        assert!((beta_ppf(0.3, 1.0, 1.0) - 0.3).abs() < 1e-13);
        assert!((beta_ppf(0.25, 2.0, 1.0) - 0.5).abs() < 1e-13);
        let arcsine = (std::f64::consts::PI * 0.2 / 2.0).sin().powi(2);
        assert!((beta_ppf(0.2, 0.5, 0.5) - arcsine).abs() < 1e-13);
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-13);
        assert_eq!(
            (beta_ppf(0.0, 0.6, 0.6), beta_ppf(1.0, 0.6, 0.6)),
            (0.0, 1.0)
        );
    }
}
