//! The model's discrete noise levels: k-diffusion's `DiscreteSchedule` for SD1-style
//! eps/v-prediction models (`DiscreteEpsDDPMDenoiser`), and the LCM sampler's 50-level subset.
//!
//! k-diffusion keeps σ, log σ and the σ↔t arithmetic in float32 tensors. The API here speaks
//! f64, but every step that is float32 in k-diffusion is rounded to f32 here too, in the same
//! order. sqrt, ln, exp, atan, tan and pow are correctly rounded (f64 then one rounding); the
//! libtorch CPU build's are not (sqrt differs in the last bit for about one value in six), and
//! A1111 runs some of these on the GPU, so agreement is to about one f32 ulp, not bit for bit.

use crate::checkpoint::Checkpoint;
use crate::weights::LoadError;

/// Number of diffusion timesteps of SD1/SD2 (ldm's `timesteps`).
pub const TIMESTEPS: usize = 1000;
/// ldm's `linear_start` for SD1/SD2 (first β of the scaled-linear schedule).
pub const SD_LINEAR_START: f64 = 0.00085;
/// ldm's `linear_end` for SD1/SD2 (last β of the scaled-linear schedule).
pub const SD_LINEAR_END: f64 = 0.012;
/// Checkpoint key of the ᾱ buffer in LDM checkpoints.
pub const ALPHAS_CUMPROD_KEY: &str = "alphas_cumprod";
/// LCM's number of "original" timesteps (A1111 `LCMCompVisDenoiser`).
pub const LCM_ORIGINAL_TIMESTEPS: usize = 50;

/// Why a table of noise levels was refused.
#[derive(Debug, thiserror::Error)]
pub enum NoiseLevelsError {
    /// The checkpoint could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The ᾱ values cannot describe a diffusion schedule.
    #[error("invalid alphas_cumprod: {0}")]
    Invalid(String),
}

/// What a sigma schedule needs from the model's noise levels (k-diffusion's `DiscreteSchedule`
/// interface as A1111's schedulers call it on the sampler's `inner_model`).
pub trait NoiseModel {
    /// The discrete σ values in ascending order (each an f32 value).
    fn sigmas(&self) -> &[f64];
    /// σ → continuous timestep t on the model's scale.
    fn sigma_to_t(&self, sigma: f64) -> f64;
    /// Continuous timestep t → σ.
    fn t_to_sigma(&self, t: f64) -> f64;
    /// The model's own schedule (`get_sigmas(n)`): `n` descending σ values, then 0.
    fn default_sigmas(&self, n: usize) -> Vec<f64>;

    /// The smallest σ (`sigmas[0]`).
    fn sigma_min(&self) -> f64 {
        self.sigmas()[0]
    }

    /// The largest σ (`sigmas[-1]`).
    fn sigma_max(&self) -> f64 {
        self.sigmas()[self.sigmas().len() - 1]
    }
}

/// The noise levels of a discrete DDPM model: σ_t = sqrt((1−ᾱ_t)/ᾱ_t) for t = 0…len−1.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseLevels {
    alphas_cumprod: Vec<f32>,
    sigmas32: Vec<f32>,
    log_sigmas32: Vec<f32>,
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl NoiseLevels {
    /// Builds the levels from ᾱ as stored (float32), computing σ and log σ in f32 like k-diffusion.
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f32>) -> Result<Self, NoiseLevelsError> {
        if alphas_cumprod.len() < 2 {
            return Err(NoiseLevelsError::Invalid(format!(
                "{} values, at least 2 are needed",
                alphas_cumprod.len()
            )));
        }
        if let Some((t, a)) = alphas_cumprod
            .iter()
            .enumerate()
            .find(|(_, &a)| !(a > 0.0 && a < 1.0))
        {
            return Err(NoiseLevelsError::Invalid(format!(
                "alphas_cumprod[{t}] = {a} is not in (0, 1)"
            )));
        }
        // k-diffusion: ((1 - ᾱ) / ᾱ) ** 0.5, three correctly rounded f32 operations.
        let sigmas32: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        // sigma_to_t's search assumes ascending σ, which every DDPM schedule (decreasing ᾱ) has.
        if let Some(t) = (1..sigmas32.len()).find(|&t| sigmas32[t] < sigmas32[t - 1]) {
            return Err(NoiseLevelsError::Invalid(format!(
                "alphas_cumprod increases at timestep {t}"
            )));
        }
        let log_sigmas32: Vec<f32> = sigmas32.iter().map(|&s| ln32(s)).collect();
        Ok(Self {
            sigmas: sigmas32.iter().map(|&s| f64::from(s)).collect(),
            log_sigmas: log_sigmas32.iter().map(|&s| f64::from(s)).collect(),
            alphas_cumprod,
            sigmas32,
            log_sigmas32,
        })
    }

    /// SD1/SD2's levels, ᾱ computed as ldm's `register_schedule` does for checkpoints without it.
    pub fn sd_scaled_linear() -> Self {
        let alphas = scaled_linear_alphas_cumprod(TIMESTEPS, SD_LINEAR_START, SD_LINEAR_END);
        Self::from_alphas_cumprod(alphas).expect("the SD schedule is valid")
    }

    /// The checkpoint's `alphas_cumprod` buffer (any float dtype, widened or rounded to f32 as
    /// loading it into ldm's float32 buffer does), or SD's computed one when it has none.
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Result<Self, NoiseLevelsError> {
        if checkpoint.shape(ALPHAS_CUMPROD_KEY).is_none() {
            return Ok(Self::sd_scaled_linear());
        }
        let tensor = checkpoint
            .raw(ALPHAS_CUMPROD_KEY)?
            .to_kind(tch::Kind::Float)
            .flatten(0, -1);
        let values = Vec::<f32>::try_from(&tensor).map_err(LoadError::from)?;
        Self::from_alphas_cumprod(values)
    }

    /// The index of the level nearest to `sigma`, compared in f32 as A1111 compares its σ
    /// table on the device (`sd_samplers_common.apply_refiner`).
    pub fn nearest_level(&self, sigma: f64) -> usize {
        let sigma = sigma as f32;
        let mut best = 0;
        for (i, &s) in self.sigmas32.iter().enumerate() {
            if (s - sigma).abs() < (self.sigmas32[best] - sigma).abs() {
                best = i;
            }
        }
        best
    }

    /// Number of discrete levels (1000 for SD).
    pub fn len(&self) -> usize {
        self.sigmas.len()
    }

    /// Always false: a table has at least two levels.
    pub fn is_empty(&self) -> bool {
        self.sigmas.is_empty()
    }

    /// ᾱ_t as given (float32).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ln σ_t (float32 values, as k-diffusion's `log_sigmas`).
    pub fn log_sigmas(&self) -> &[f64] {
        &self.log_sigmas
    }

    /// The index whose log σ is nearest to ln σ (k-diffusion's `sigma_to_t` with `quantize`;
    /// the first of equally near ones, as `argmin` picks).
    pub fn nearest_index(&self, sigma: f64) -> usize {
        let log_sigma = ln32(sigma as f32);
        let mut best = 0;
        let mut best_dist = f32::INFINITY;
        for (i, &ls) in self.log_sigmas32.iter().enumerate() {
            let dist = (log_sigma - ls).abs();
            if dist < best_dist {
                best = i;
                best_dist = dist;
            }
        }
        best
    }

    /// The t = len−1 … 0 uniform schedule through `t_to_sigma`, as the f32 values k-diffusion
    /// makes (`DiscreteSchedule.get_sigmas`), without the appended 0.
    fn uniform_f32(&self, n: usize) -> Vec<f32> {
        let t_max = (self.len() - 1) as f32;
        linspace32(t_max, 0.0, n)
            .into_iter()
            .map(|t| self.t_to_sigma32(t))
            .collect()
    }

    fn t_to_sigma32(&self, t: f32) -> f32 {
        // k-diffusion indexes with floor/ceil of t; out-of-range t would raise there.
        let t = t.clamp(0.0, (self.len() - 1) as f32);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t.fract();
        let log_sigma = (1.0 - w) * self.log_sigmas32[low] + w * self.log_sigmas32[high];
        exp32(log_sigma)
    }

    fn sigma_to_t32(&self, sigma: f32) -> f32 {
        let log_sigma = ln32(sigma);
        // The last index whose log σ is ≤ ln σ (0 when there is none), kept below the top so
        // that an interpolation partner exists; `dists.ge(0).cumsum().argmax()` in k-diffusion.
        let last = self.log_sigmas32.len() - 1;
        let low_idx = self
            .log_sigmas32
            .iter()
            .rposition(|&ls| log_sigma - ls >= 0.0)
            .unwrap_or(0)
            .min(last - 1);
        let high_idx = low_idx + 1;
        let (low, high) = (self.log_sigmas32[low_idx], self.log_sigmas32[high_idx]);
        let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
        (1.0 - w) * low_idx as f32 + w * high_idx as f32
    }
}

impl NoiseModel for NoiseLevels {
    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Log-σ interpolation between the two neighbouring levels, clamped to [0, len−1]; σ is
    /// rounded to f32 first (`torch.tensor(sigma)`) and all arithmetic is f32.
    fn sigma_to_t(&self, sigma: f64) -> f64 {
        f64::from(self.sigma_to_t32(sigma as f32))
    }

    /// exp of the linear interpolation of log σ at ⌊t⌋ and ⌈t⌉ in f32 (t rounded to f32, as
    /// `t.float()`); t outside [0, len−1] is clamped where k-diffusion would fail to index.
    fn t_to_sigma(&self, t: f64) -> f64 {
        f64::from(self.t_to_sigma32(t as f32))
    }

    fn default_sigmas(&self, n: usize) -> Vec<f64> {
        append_zero(&self.uniform_f32(n))
    }
}

/// The LCM sampler's noise levels: the model's ᾱ at timesteps 19, 39, …, 999, with LCM's own
/// σ↔t mapping (nearest level; timesteps on the 1000 scale).
#[derive(Debug, Clone, PartialEq)]
pub struct LcmNoiseLevels {
    levels: NoiseLevels,
    skip_steps: usize,
}

impl LcmNoiseLevels {
    /// Picks LCM's 50 original timesteps out of the model's 1000 levels.
    pub fn new(model: &NoiseLevels) -> Result<Self, NoiseLevelsError> {
        // A1111 hard-codes the 1000-step scale; any other table has no LCM timesteps.
        if model.len() != TIMESTEPS {
            return Err(NoiseLevelsError::Invalid(format!(
                "LCM needs {TIMESTEPS} levels, the model has {}",
                model.len()
            )));
        }
        let skip_steps = TIMESTEPS / LCM_ORIGINAL_TIMESTEPS;
        let alphas = (0..LCM_ORIGINAL_TIMESTEPS)
            .map(|k| model.alphas_cumprod()[skip_steps - 1 + k * skip_steps])
            .collect();
        Ok(Self {
            levels: NoiseLevels::from_alphas_cumprod(alphas)?,
            skip_steps,
        })
    }

    /// The model timestep (19, 39, …, 999) of the original level nearest to σ in log space.
    pub fn timestep_for_sigma(&self, sigma: f64) -> i64 {
        (self.levels.nearest_index(sigma) * self.skip_steps + self.skip_steps - 1) as i64
    }

    /// The 50-entry table underneath (index k is model timestep 20k+19).
    pub fn levels(&self) -> &NoiseLevels {
        &self.levels
    }

    fn t_to_sigma32(&self, timestep: f32) -> f32 {
        let skip = self.skip_steps as f32;
        let index = ((timestep - (skip - 1.0)) / skip).clamp(0.0, (self.levels.len() - 1) as f32);
        self.levels.t_to_sigma32(index)
    }
}

impl NoiseModel for LcmNoiseLevels {
    fn sigmas(&self) -> &[f64] {
        self.levels.sigmas()
    }

    fn sigma_to_t(&self, sigma: f64) -> f64 {
        self.timestep_for_sigma(sigma) as f64
    }

    /// Interpolates between the original levels for a 1000-scale timestep, clamped to 19…999.
    fn t_to_sigma(&self, t: f64) -> f64 {
        f64::from(self.t_to_sigma32(t as f32))
    }

    /// `linspace(999, 19, n)` on the 1000 scale through LCM's `t_to_sigma`, then 0.
    fn default_sigmas(&self, n: usize) -> Vec<f64> {
        let start = self.sigma_to_t(self.sigma_max()) as f32;
        let end = self.sigma_to_t(self.sigma_min()) as f32;
        let sigmas: Vec<f32> = linspace32(start, end, n)
            .into_iter()
            .map(|t| self.t_to_sigma32(t))
            .collect();
        append_zero(&sigmas)
    }
}

/// ᾱ of ldm's "linear" (scaled-linear) β schedule: β = linspace(√start, √end, n)² in f64,
/// ᾱ = cumprod(1 − β) in f64, then stored as f32 (`register_schedule`).
pub fn scaled_linear_alphas_cumprod(
    timesteps: usize,
    linear_start: f64,
    linear_end: f64,
) -> Vec<f32> {
    let mut product = 1.0f64;
    linspace64(linear_start.sqrt(), linear_end.sqrt(), timesteps)
        .into_iter()
        .map(|root| {
            product *= 1.0 - root * root;
            product as f32
        })
        .collect()
}

/// Defines `torch.linspace` for one float type as its kernel computes it: the first half
/// counts up from `start`, the second half down from `end`, with step `(end − start)/(n − 1)`
/// in that type.
macro_rules! torch_linspace {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($float:ty)) => {
        $(#[$doc])*
        $vis fn $name(start: $float, end: $float, n: usize) -> Vec<$float> {
            match n {
                0 => Vec::new(),
                1 => vec![start],
                _ => {
                    let step = (end - start) / (n - 1) as $float;
                    let halfway = n / 2;
                    (0..n)
                        .map(|i| {
                            if i < halfway {
                                start + step * i as $float
                            } else {
                                end - step * (n - i - 1) as $float
                            }
                        })
                        .collect()
                }
            }
        }
    };
}

torch_linspace!(
    /// `torch.linspace` in float32.
    pub(crate) fn linspace32(f32)
);
torch_linspace!(
    /// `torch.linspace` in float64.
    fn linspace64(f64)
);

/// f32 values as f64 with k-diffusion's `append_zero`.
pub(crate) fn append_zero(values: &[f32]) -> Vec<f64> {
    values
        .iter()
        .map(|&v| f64::from(v))
        .chain(std::iter::once(0.0))
        .collect()
}

/// Natural log of an f32, rounded once from f64.
pub(crate) fn ln32(x: f32) -> f32 {
    f64::from(x).ln() as f32
}

/// exp of an f32, rounded once from f64.
pub(crate) fn exp32(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn sd_levels_match_the_spec() {
        let levels = NoiseLevels::sd_scaled_linear();
        assert_eq!(levels.len(), 1000);
        let a = levels.alphas_cumprod();
        assert!(close(f64::from(a[0]), 0.99915, 1e-7), "{}", a[0]);
        assert!(close(f64::from(a[999]), 0.0046601, 1e-7), "{}", a[999]);
        assert!(close(levels.sigma_min(), 0.0291675, 1e-7));
        assert!(close(levels.sigma_max(), 14.614642, 1e-6));
    }

    #[test]
    fn sigma_and_t_round_trip_and_clamp() {
        let levels = NoiseLevels::sd_scaled_linear();
        for t in [0usize, 1, 250, 500, 998, 999] {
            let sigma = levels.sigmas()[t];
            assert!(close(levels.sigma_to_t(sigma), t as f64, 1e-3), "t={t}");
            // exp(ln σ) in f32 need not give σ back: k-diffusion's does not either.
            assert!(
                close(levels.t_to_sigma(t as f64), sigma, 4e-7 * sigma),
                "t={t}"
            );
        }
        assert_eq!(levels.sigma_to_t(1e-4), 0.0);
        assert_eq!(levels.sigma_to_t(100.0), 999.0);
        let mid = levels.t_to_sigma(500.5);
        assert!(mid > levels.sigmas()[500] && mid < levels.sigmas()[501]);
        assert!(close(levels.sigma_to_t(mid), 500.5, 1e-3));
    }

    #[test]
    fn invalid_alphas_are_refused() {
        assert!(NoiseLevels::from_alphas_cumprod(vec![0.5]).is_err());
        assert!(NoiseLevels::from_alphas_cumprod(vec![0.9, 0.0]).is_err());
        assert!(NoiseLevels::from_alphas_cumprod(vec![0.5, 0.9]).is_err());
        assert!(NoiseLevels::from_alphas_cumprod(vec![0.9, f32::NAN]).is_err());
    }

    #[test]
    fn lcm_levels_are_every_twentieth_timestep() {
        let model = NoiseLevels::sd_scaled_linear();
        let lcm = LcmNoiseLevels::new(&model).unwrap();
        assert_eq!(lcm.sigmas().len(), 50);
        assert_eq!(lcm.sigmas()[0], model.sigmas()[19]);
        assert_eq!(lcm.sigma_max(), model.sigma_max());
        assert_eq!(lcm.timestep_for_sigma(model.sigma_max()), 999);
        assert_eq!(lcm.timestep_for_sigma(1e-3), 19);
        assert_eq!(lcm.timestep_for_sigma(model.sigmas()[500]), 499);
        assert_eq!(lcm.t_to_sigma(499.0), model.t_to_sigma(499.0));
    }

    #[test]
    fn linspace_matches_torch_layout() {
        assert_eq!(linspace32(999.0, 0.0, 1), vec![999.0]);
        assert_eq!(linspace32(0.0, 1.0, 3), vec![0.0, 0.5, 1.0]);
        let v = linspace32(999.0, 0.0, 20);
        assert_eq!((v[0], v[19]), (999.0, 0.0));
    }
}
