//! Brownian-tree noise for the SDE samplers (DPM++ SDE, 2M SDE, 2M SDE Heun, 3M SDE), draw
//! for draw as A1111 makes it.
//!
//! A1111 (`modules/sd_samplers_common.py: create_noise_sampler`) gives these samplers
//! k-diffusion's `BrownianTreeNoiseSampler` (`k_diffusion/sampling.py:
//! BrownianTreeNoiseSampler`, `BatchedBrownianTree`) over [smallest positive σ, largest σ] of
//! the full schedule, with one `torchsde.BrownianTree` per image seeded with the image's seed,
//! and replaces torchsde's draws with its own `randn_local` (`modules/sd_samplers_common.py:
//! replace_torchsde_browinan`), so the job's RNG source (CPU, GPU or NV) makes them.
//!
//! A Brownian path is not smooth: the same law with other draws gives other pictures. So this
//! is a port, not a substitute: numpy's seed mixing ([`crate::rng::seed_sequence`]) and torchsde's tree
//! ([`interval`]) are reproduced exactly, and so is the float32 arithmetic around them: σ's are
//! float32 tensors in k-diffusion, torchsde reads them as `float(σ)`, and the normalisation
//! divides by a float32 √|σ_next − σ|.

pub mod interval;

use tch::{Device, Kind, Tensor};

use super::noise::BrownianNoise;
use super::session::StepFailure;
use crate::rng::seed_sequence::PoolSizeError;
use crate::rng::{RngError, RngSource};
use interval::BrownianInterval;

/// What can go wrong building or querying a Brownian tree.
#[derive(Debug, thiserror::Error)]
pub enum BrownianError {
    /// The tree's σ range is empty, reversed or not finite.
    #[error("Brownian tree needs 0 < σ_min ≤ σ_max, got {0} and {1}")]
    InvalidRange(f64, f64),
    /// A query interval with its ends the wrong way round or not finite.
    #[error("Brownian tree query from {0} to {1} is not an ordered pair of finite times")]
    InvalidQuery(f64, f64),
    /// An empty query interval: its normalisation would divide by zero.
    #[error("Brownian increment over an empty interval at σ = {0}")]
    EmptyInterval(f64),
    /// A σ range so wide that the tree would need more levels than its seeds can name.
    #[error("Brownian tree over [{0}, {1}] needs too many levels")]
    TooDeep(f64, f64),
    /// numpy's `SeedSequence` refused its pool size.
    #[error(transparent)]
    PoolSize(#[from] PoolSizeError),
    /// A noise draw failed.
    #[error("Brownian tree noise: {0}")]
    Rng(#[from] RngError),
    /// A tensor operation failed.
    #[error("Brownian tree noise: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<BrownianError> for StepFailure {
    fn from(error: BrownianError) -> Self {
        match error {
            // Out of memory keeps its own kind.
            BrownianError::Torch(e) | BrownianError::Rng(RngError::Tch(e)) => {
                StepFailure::from_torch("Brownian tree noise", &e)
            }
            other => StepFailure::failed(other.to_string()),
        }
    }
}

/// k-diffusion's `sort`: the interval's ends in order, and −1 when they were swapped.
fn sort(a: f32, b: f32) -> (f32, f32, f64) {
    if a < b {
        (a, b, 1.0)
    } else {
        (b, a, -1.0)
    }
}

/// The per-image Brownian trees of one batch over a schedule's σ range.
pub struct BrownianTreeNoise {
    trees: Vec<BrownianInterval>,
    /// k-diffusion's sign of the range: −1 only when σ_min = σ_max (its `sort`), else 1.
    sign: f64,
    device: Device,
}

impl BrownianTreeNoise {
    /// Trees for `seeds` with latents of `shape` ([C, H, W]) over [σ_min, σ_max], drawing from
    /// `source` like A1111's `randn_local`. `device` is the sampler's: A1111 keeps the trees
    /// and the σ's there, and libtorch's float32 `sqrt` of the normalisation may round
    /// differently on the CPU and on CUDA.
    pub fn new(
        seeds: &[u64],
        shape: [i64; 3],
        source: RngSource,
        device: Device,
        sigma_min: f64,
        sigma_max: f64,
    ) -> Result<Self, BrownianError> {
        if !(sigma_min > 0.0 && sigma_min <= sigma_max && sigma_max.is_finite()) {
            return Err(BrownianError::InvalidRange(sigma_min, sigma_max));
        }
        // k-diffusion holds the range as float32 tensors; torchsde reads them with float().
        let (t0, t1, sign) = sort(sigma_min as f32, sigma_max as f32);
        let trees = seeds
            .iter()
            .map(|&seed| {
                BrownianInterval::new(seed, f64::from(t0), f64::from(t1), &shape, source, device)
            })
            .collect::<Result<_, _>>()?;
        Ok(BrownianTreeNoise {
            trees,
            sign,
            device,
        })
    }

    /// W(σ_next) − W(σ) of every image over √|σ_next − σ|, `[B, C, H, W]`
    /// (`BrownianTreeNoiseSampler.__call__`).
    pub fn normalised_increment(
        &mut self,
        sigma: f64,
        sigma_next: f64,
    ) -> Result<Tensor, BrownianError> {
        // The sampler's σ's are float32 tensors in k-diffusion: the tree sees them rounded.
        let (sigma, sigma_next) = (sigma as f32, sigma_next as f32);
        let (ta, tb, sign) = sort(sigma, sigma_next);
        let per_image = self
            .trees
            .iter_mut()
            .map(|tree| tree.increment(f64::from(ta), f64::from(tb)))
            .collect::<Result<Vec<_>, _>>()?;
        let w = Tensor::f_stack(&per_image, 0)?.f_mul_scalar(self.sign * sign)?;
        // √|σ_next − σ| on 0-d float32 tensors, as k-diffusion computes it: libtorch's CPU
        // sqrt is not always correctly rounded, so Rust's f32::sqrt could be one step off.
        let level =
            |value: f32| Tensor::f_scalar_tensor(f64::from(value), (Kind::Float, self.device));
        let scale = level(sigma_next)?
            .f_sub(&level(sigma)?)?
            .f_abs()?
            .f_sqrt()?;
        if scale.f_double_value(&[])? == 0.0 {
            return Err(BrownianError::EmptyInterval(f64::from(sigma)));
        }
        Ok(w.f_div(&scale)?)
    }
}

impl BrownianNoise for BrownianTreeNoise {
    fn increment(&mut self, sigma: f64, sigma_next: f64) -> Result<Tensor, StepFailure> {
        Ok(self.normalised_increment(sigma, sigma_next)?)
    }
}
