//! Why a job stops early, and the guard that turns libtorch panics into that answer: shared by
//! every stage of the job ([`super::init`], [`super::img2img`]). Out of memory is one variant
//! wherever libtorch reports it (a stage's panic, a noise draw, the sampler), classified by
//! [`crate::error::torch_failure`], so front ends map it without reading messages.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{panic_message, torch_failure, TorchFailure};
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
    /// A prompt the model's text encoders cannot encode.
    #[error("prompt: {0}")]
    Prompt(#[from] crate::prompt::conditioning::ConditioningError),
    /// Settings that cannot work together on this model or device.
    #[error("{0}")]
    Unsupported(String),
    /// Sampler or schedule settings that cannot be sampled.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The noise source failed (for example the GPU RNG without CUDA).
    #[error("noise: {0}")]
    Rng(RngError),
    /// The sampler failed (out of memory while sampling is [`JobError::OutOfMemory`]).
    #[error(transparent)]
    Sampling(SamplingError),
    /// The mask cannot be used.
    #[error("mask: {0}")]
    Mask(#[from] MaskError),
    /// The device ran out of memory in `stage` (sampling included).
    #[error("out of memory in {stage}: {message}")]
    OutOfMemory {
        stage: &'static str,
        message: String,
    },
    /// A libtorch operation outside sampling failed (device error, …).
    #[error("{stage}: {message}")]
    Torch {
        stage: &'static str,
        message: String,
    },
}

impl JobError {
    /// A libtorch failure in `stage`, classified by [`torch_failure`]: out of memory or not.
    pub fn torch(stage: &'static str, message: String) -> Self {
        let message = crate::error::torch_message(&message);
        match torch_failure(&message) {
            TorchFailure::OutOfMemory => JobError::OutOfMemory { stage, message },
            TorchFailure::Other => JobError::Torch { stage, message },
        }
    }
}

impl From<RngError> for JobError {
    /// Noise draws allocate: libtorch running out of memory there is out of memory too.
    fn from(error: RngError) -> Self {
        let message = match &error {
            RngError::Torch(message) => message.clone(),
            RngError::Tch(error) => error.to_string(),
            _ => return JobError::Rng(error),
        };
        match torch_failure(&message) {
            TorchFailure::OutOfMemory => JobError::OutOfMemory {
                stage: "noise",
                message,
            },
            TorchFailure::Other => JobError::Rng(error),
        }
    }
}

impl From<SamplingError> for JobError {
    /// The sampler's out-of-memory becomes the job's one out-of-memory error.
    fn from(error: SamplingError) -> Self {
        match error {
            SamplingError::OutOfMemory { sampler, message } => JobError::OutOfMemory {
                stage: "sampling",
                message: format!("{sampler}: {message}"),
            },
            other => JobError::Sampling(other),
        }
    }
}

/// Runs `f`, turning a libtorch panic into a [`JobError::OutOfMemory`] or
/// [`JobError::Torch`] (the daemon must survive out-of-memory and device errors).
pub(crate) fn guarded<T>(stage: &'static str, f: impl FnOnce() -> T) -> Result<T, JobError> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|payload| JobError::torch(stage, panic_message(&*payload)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn out_of_memory_is_one_variant_wherever_libtorch_reports_it() {
        // 64 PiB: the CPU allocator refuses, and tch panics with its message.
        let error = guarded("VAE decode", || {
            Tensor::empty([1i64 << 54], (Kind::Float, Device::Cpu))
        })
        .expect_err("cannot allocate");
        assert!(
            matches!(
                error,
                JobError::OutOfMemory {
                    stage: "VAE decode",
                    ..
                }
            ),
            "{error}"
        );
        let sampling = JobError::from(SamplingError::OutOfMemory {
            sampler: "Euler".into(),
            message: "model call: CUDA out of memory".into(),
        });
        assert!(matches!(
            sampling,
            JobError::OutOfMemory {
                stage: "sampling",
                ..
            }
        ));
        let noise = JobError::from(RngError::Torch("CUDA out of memory.".into()));
        assert!(matches!(
            noise,
            JobError::OutOfMemory { stage: "noise", .. }
        ));
    }

    #[test]
    fn other_libtorch_failures_stay_torch_errors() {
        let error = guarded("prompt encoding", || {
            let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
            a.matmul(&a)
        })
        .expect_err("shapes do not match");
        assert!(
            matches!(
                error,
                JobError::Torch {
                    stage: "prompt encoding",
                    ..
                }
            ),
            "{error}"
        );
        let failed = JobError::from(SamplingError::Cancelled);
        assert!(matches!(
            failed,
            JobError::Sampling(SamplingError::Cancelled)
        ));
    }
}
