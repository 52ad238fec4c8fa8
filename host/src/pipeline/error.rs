//! Why a job stops early, and the guard that turns libtorch panics into that answer: shared by
//! every stage of the job ([`super::init`], [`super::img2img`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::prepare::inpaint::MaskError;
use crate::request::InvalidRequest;
use crate::rng::RngError;
use crate::sampling::plan::PlanError;
use crate::sampling::plugins::SamplingError;

/// Why a job could not run (nothing of it is kept except the images already reported).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A parameter out of range.
    #[error(transparent)]
    InvalidParams(#[from] InvalidRequest),
    /// Settings that cannot work together on this model or device.
    #[error("{0}")]
    Unsupported(String),
    /// Sampler or schedule settings that cannot be sampled.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The noise source failed (for example the GPU RNG without CUDA).
    #[error("noise: {0}")]
    Rng(#[from] RngError),
    /// The sampler failed.
    #[error(transparent)]
    Sampling(SamplingError),
    /// The mask cannot be used.
    #[error("mask: {0}")]
    Mask(#[from] MaskError),
    /// A libtorch operation outside sampling failed (out of memory, device error).
    #[error("{stage}: {message}")]
    Torch {
        stage: &'static str,
        message: String,
    },
}

/// Runs `f`, turning a libtorch panic into a [`JobError::Torch`] (the daemon must survive
/// out-of-memory and device errors).
pub(crate) fn guarded<T>(stage: &'static str, f: impl FnOnce() -> T) -> Result<T, JobError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| JobError::Torch {
        stage,
        message: crate::error::panic_message(&*payload),
    })
}
