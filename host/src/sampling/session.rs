//! The host's side of one plugin sample call: the operation table over libtorch tensors.
//!
//! The plugin sees only handles; this module owns the tensors behind them. Tensor arithmetic
//! cannot fail from the plugin's side: the first failure is remembered (the session is
//! "poisoned"), later arithmetic returns an invalid handle, and the next fallible call reports
//! the failure, so a sampler stops at its next model call or step. A set cancel flag is
//! reported the same way, so a sampler that never reports a step still stops at its next model
//! call or noise draw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sdhost_plugin_api::abi::{
    BinaryOp, Host, HostError, HostErrorKind, Reduction, ScalarFn, ScalarOp, StepInfo, TensorId,
    Term, UnaryOp,
};
use sdhost_plugin_api::abi_stable::std_types::{ROption, RResult, RSlice};
use sdhost_plugin_api::Flow;
use tch::{Device, Kind, Tensor};

/// The handle the session hands out after a failure; never a live tensor.
const INVALID: TensorId = TensorId(0);

/// A failure of the model, a noise source or the step callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// Cancelled, out of memory, or another failure.
    pub kind: HostErrorKind,
    /// A message for the user.
    pub message: String,
}

impl StepFailure {
    /// A generic failure with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        StepFailure {
            kind: HostErrorKind::Failed,
            message: message.into(),
        }
    }

    /// The job was cancelled.
    pub fn cancelled() -> Self {
        StepFailure {
            kind: HostErrorKind::Cancelled,
            message: "cancelled".into(),
        }
    }

    /// Classifies a libtorch error (out-of-memory gets its own kind, so users see it).
    pub fn from_torch(context: &str, error: &tch::TchError) -> Self {
        let text = error.to_string();
        let first_line = text.lines().next().unwrap_or_default();
        let kind = match crate::error::torch_failure(&text) {
            crate::error::TorchFailure::OutOfMemory => HostErrorKind::OutOfMemory,
            crate::error::TorchFailure::Other => HostErrorKind::Failed,
        };
        StepFailure {
            kind,
            message: format!("{context}: {first_line}"),
        }
    }
}

/// The model as the sampler sees it: D(x, σ) with guidance applied.
pub trait Denoise {
    /// The denoised prediction for `x` at noise level `sigma` (`timestep` overrides σ→t).
    fn denoise(
        &mut self,
        x: &Tensor,
        sigma: f64,
        timestep: Option<f64>,
    ) -> Result<Tensor, StepFailure>;
}

/// Where a job's sampler noise comes from.
pub trait Noise {
    /// Unit normal noise shaped like the latent batch: the next draw of each image's generator.
    fn noise(&mut self) -> Result<Tensor, StepFailure>;
    /// Brownian-tree noise for (σ, σ_next), unit variance.
    fn brownian_noise(&mut self, sigma: f64, sigma_next: f64) -> Result<Tensor, StepFailure>;
}

/// What a step callback receives.
pub struct StepReport<'t> {
    /// Step index from 0.
    pub step: u32,
    /// Number of steps the sampler reports.
    pub total: u32,
    /// The noise level of the step.
    pub sigma: f64,
    /// The current latent.
    pub x: &'t Tensor,
    /// The model's denoised prediction.
    pub denoised: &'t Tensor,
}

/// The tensors and services of one sample call.
pub struct Session<'s> {
    tensors: HashMap<u64, Tensor>,
    next_id: u64,
    failure: Option<StepFailure>,
    /// Where the sampler's latents live: scalar functions are rounded as there.
    device: Device,
    /// The job's cancel flag, polled by every fallible call.
    cancel: Option<Arc<AtomicBool>>,
    denoiser: &'s mut dyn Denoise,
    noise: &'s mut dyn Noise,
    on_step: &'s mut dyn FnMut(StepReport<'_>) -> Flow,
}

impl<'s> Session<'s> {
    /// A session for latents on `device` over the given model, noise and progress callback.
    pub fn new(
        device: Device,
        denoiser: &'s mut dyn Denoise,
        noise: &'s mut dyn Noise,
        on_step: &'s mut dyn FnMut(StepReport<'_>) -> Flow,
    ) -> Self {
        Session {
            tensors: HashMap::new(),
            next_id: 1,
            failure: None,
            device,
            cancel: None,
            denoiser,
            noise,
            on_step,
        }
    }

    /// Fails the next model call, noise draw or step as cancelled once `flag` is set.
    ///
    /// The step callback can cancel too, but only samplers that report steps reach it; the
    /// flag also stops those that do not.
    pub fn cancel_when_set(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// Registers a tensor and returns its handle.
    pub fn insert(&mut self, tensor: Tensor) -> TensorId {
        let id = self.next_id;
        self.next_id += 1;
        self.tensors.insert(id, tensor);
        TensorId(id)
    }

    /// Takes the tensor behind a handle out of the session.
    pub fn take(&mut self, id: TensorId) -> Option<Tensor> {
        self.tensors.remove(&id.0)
    }

    fn get(&mut self, id: TensorId) -> Option<&Tensor> {
        if !self.tensors.contains_key(&id.0) {
            self.fail(StepFailure {
                kind: HostErrorKind::InvalidHandle,
                message: format!("sampler used an unknown tensor handle {}", id.0),
            });
        }
        self.tensors.get(&id.0)
    }

    fn fail(&mut self, failure: StepFailure) {
        if self.failure.is_none() {
            self.failure = Some(failure);
        }
    }

    /// Runs a tensor computation, registering its result or remembering its failure.
    fn compute(
        &mut self,
        what: &str,
        f: impl FnOnce(&Self) -> Option<Result<Tensor, tch::TchError>>,
    ) -> TensorId {
        if self.failure.is_some() {
            return INVALID;
        }
        match f(self) {
            Some(Ok(tensor)) => self.insert(tensor),
            Some(Err(error)) => {
                self.fail(StepFailure::from_torch(what, &error));
                INVALID
            }
            None => INVALID,
        }
    }

    fn check(&mut self, ids: &[TensorId]) -> bool {
        ids.iter().all(|id| self.get(*id).is_some()) && self.failure.is_none()
    }

    /// The failure the next fallible call reports: the first one remembered, or cancellation
    /// once the job's flag is set.
    fn pending(&mut self) -> Option<HostError> {
        let cancelled = self
            .cancel
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::SeqCst));
        if cancelled {
            self.fail(StepFailure::cancelled());
        }
        self.failure.as_ref().map(host_error)
    }

    fn fallible(&mut self, result: Result<Tensor, StepFailure>) -> RResult<TensorId, HostError> {
        match result {
            Ok(tensor) => RResult::ROk(self.insert(tensor)),
            Err(failure) => {
                self.fail(failure.clone());
                RResult::RErr(host_error(&failure))
            }
        }
    }
}

fn host_error(failure: &StepFailure) -> HostError {
    HostError {
        kind: failure.kind,
        message: failure.message.clone().into(),
    }
}

impl Host for Session<'_> {
    fn lincomb(&mut self, terms: RSlice<'_, Term>) -> TensorId {
        let ids: Vec<TensorId> = terms.iter().map(|term| term.tensor).collect();
        if terms.is_empty() || !self.check(&ids) {
            return INVALID;
        }
        self.compute("linear combination", |session| {
            // The first product is a fresh tensor, so the rest can be added into it in place.
            let (first, rest) = terms.split_first()?;
            let first = session.tensors[&first.tensor.0].f_mul_scalar(first.coefficient);
            Some(first.and_then(|sum| {
                rest.iter().try_fold(sum, |mut sum, term| {
                    let scaled = session.tensors[&term.tensor.0].f_mul_scalar(term.coefficient)?;
                    sum.f_add_(&scaled)
                })
            }))
        })
    }

    fn unary(&mut self, op: UnaryOp, x: TensorId) -> TensorId {
        if !self.check(&[x]) {
            return INVALID;
        }
        self.compute("elementwise operation", |session| {
            let x = &session.tensors[&x.0];
            Some(match op {
                UnaryOp::Abs => x.f_abs(),
                UnaryOp::Sqrt => x.f_sqrt(),
                UnaryOp::Square => x.f_square(),
            })
        })
    }

    fn binary(&mut self, op: BinaryOp, a: TensorId, b: TensorId) -> TensorId {
        if !self.check(&[a, b]) {
            return INVALID;
        }
        self.compute("elementwise operation", |session| {
            let (a, b) = (&session.tensors[&a.0], &session.tensors[&b.0]);
            if a.size() != b.size() {
                return Some(Err(tch::TchError::Shape(format!(
                    "operands have shapes {:?} and {:?}",
                    a.size(),
                    b.size()
                ))));
            }
            Some(match op {
                BinaryOp::Mul => a.f_mul(b),
                BinaryOp::Div => a.f_div(b),
                BinaryOp::Maximum => a.f_maximum(b),
                BinaryOp::Minimum => a.f_minimum(b),
            })
        })
    }

    fn scalar(&mut self, op: ScalarOp, x: TensorId, s: f64) -> TensorId {
        if !self.check(&[x]) {
            return INVALID;
        }
        self.compute("elementwise operation", |session| {
            let x = &session.tensors[&x.0];
            Some(match op {
                ScalarOp::Add => x.f_add_scalar(s),
                ScalarOp::Max => x.f_clamp_min(s),
                ScalarOp::Min => x.f_clamp_max(s),
            })
        })
    }

    fn reduce(&mut self, op: Reduction, x: TensorId) -> f64 {
        if !self.check(&[x]) {
            return f64::NAN;
        }
        let tensor = &self.tensors[&x.0];
        let value = match op {
            Reduction::Numel => return tensor.numel() as f64,
            Reduction::Norm => tensor.f_norm().and_then(|n| n.f_double_value(&[])),
            Reduction::MaxAbs => tensor
                .f_abs()
                .and_then(|a| a.f_max())
                .and_then(|m| m.f_double_value(&[])),
        };
        value.unwrap_or_else(|error| {
            self.fail(StepFailure::from_torch("reduction", &error));
            f64::NAN
        })
    }

    fn scalar_fn(&mut self, function: ScalarFn, x: f32) -> f32 {
        // A 0-d float32 tensor on the latents' device, as k-diffusion's σ arithmetic runs.
        let value = Tensor::f_scalar_tensor(f64::from(x), (Kind::Float, self.device))
            .and_then(|x| match function {
                ScalarFn::Ln => x.f_log(),
                ScalarFn::Exp => x.f_exp(),
            })
            .and_then(|y| y.f_double_value(&[]));
        match value {
            Ok(value) => value as f32,
            Err(error) => {
                self.fail(StepFailure::from_torch("scalar function", &error));
                f32::NAN
            }
        }
    }

    fn share(&mut self, x: TensorId) -> TensorId {
        if !self.check(&[x]) {
            return INVALID;
        }
        let tensor = self.tensors[&x.0].shallow_clone();
        self.insert(tensor)
    }

    fn release(&mut self, x: TensorId) {
        // Releasing the invalid handle (from a poisoned operation) is normal.
        self.tensors.remove(&x.0);
    }

    fn denoise(
        &mut self,
        x: TensorId,
        sigma: f64,
        timestep: ROption<f64>,
    ) -> RResult<TensorId, HostError> {
        if let Some(error) = self.pending() {
            return RResult::RErr(error);
        }
        let Some(input) = self.get(x).map(Tensor::shallow_clone) else {
            return RResult::RErr(self.pending().expect("get recorded the failure"));
        };
        let result = self.denoiser.denoise(&input, sigma, timestep.into_option());
        self.fallible(result)
    }

    fn noise(&mut self) -> RResult<TensorId, HostError> {
        if let Some(error) = self.pending() {
            return RResult::RErr(error);
        }
        let result = self.noise.noise();
        self.fallible(result)
    }

    fn brownian_noise(&mut self, sigma: f64, sigma_next: f64) -> RResult<TensorId, HostError> {
        if let Some(error) = self.pending() {
            return RResult::RErr(error);
        }
        let result = self.noise.brownian_noise(sigma, sigma_next);
        self.fallible(result)
    }

    fn step(&mut self, info: StepInfo) -> RResult<Flow, HostError> {
        if let Some(error) = self.pending() {
            return RResult::RErr(error);
        }
        if !self.check(&[info.x, info.denoised]) {
            return RResult::RErr(self.pending().expect("check recorded the failure"));
        }
        let report = StepReport {
            step: info.step,
            total: info.total,
            sigma: info.sigma,
            x: &self.tensors[&info.x.0],
            denoised: &self.tensors[&info.denoised.0],
        };
        let flow = (self.on_step)(report);
        if flow == Flow::Cancel {
            self.fail(StepFailure::cancelled());
        }
        RResult::ROk(flow)
    }
}
