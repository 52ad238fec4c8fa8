//! A job's sampler noise: the per-image generators for `randn_like` draws and, for SDE
//! samplers, Brownian-tree noise.

use tch::{Device, Kind, Tensor};

use super::session::{Noise, StepFailure};
use crate::rng::ImageRng;

/// Brownian-tree increments for the interval (σ, σ_next), unit variance, batch-shaped.
pub trait BrownianNoise {
    /// The normalised increment W(σ_next) − W(σ) over sqrt(|σ_next − σ|).
    fn increment(&mut self, sigma: f64, sigma_next: f64) -> Result<Tensor, StepFailure>;
}

/// The noise of one batch of a job, on the sampler's device and dtype.
pub struct JobNoise {
    rng: ImageRng,
    brownian: Option<Box<dyn BrownianNoise>>,
    device: Device,
    kind: Kind,
}

impl JobNoise {
    /// Noise from `rng` (after its `first()` draw was used for the start latent), delivered on
    /// `device` as `kind`.
    pub fn new(rng: ImageRng, device: Device, kind: Kind) -> Self {
        JobNoise {
            rng,
            brownian: None,
            device,
            kind,
        }
    }

    /// Adds the Brownian tree that SDE samplers draw from.
    pub fn with_brownian(mut self, brownian: Box<dyn BrownianNoise>) -> Self {
        self.brownian = Some(brownian);
        self
    }
}

impl Noise for JobNoise {
    fn noise(&mut self) -> Result<Tensor, StepFailure> {
        let draw = self
            .rng
            .next()
            .map_err(|e| StepFailure::failed(format!("sampler noise: {e}")))?;
        draw.f_to_device(self.device)
            .and_then(|t| t.f_to_kind(self.kind))
            .map_err(|e| StepFailure::from_torch("sampler noise", &e))
    }

    fn brownian_noise(&mut self, sigma: f64, sigma_next: f64) -> Result<Tensor, StepFailure> {
        let brownian = self.brownian.as_mut().ok_or_else(|| {
            StepFailure::failed("this job has no Brownian-tree noise (the sampler is not flagged as an SDE sampler)")
        })?;
        let increment = brownian.increment(sigma, sigma_next)?;
        increment
            .f_to_device(self.device)
            .and_then(|t| t.f_to_kind(self.kind))
            .map_err(|e| StepFailure::from_torch("Brownian noise", &e))
    }
}
