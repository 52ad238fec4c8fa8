//! The types that cross the library boundary, all `#[repr(C)]` and checked by abi_stable.
//!
//! Changing anything in this file changes the ABI: bump this crate's minor version (0.x) so
//! that plugins built against the old one are refused with a version message instead of
//! being checked field by field.

// The code #[sabi_trait] generates defines impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec, Tuple2};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};

/// An opaque handle to a latent-shaped tensor owned by the host.
///
/// Valid only within the sample call that produced it; the safe [`crate::Latent`] releases it
/// when dropped.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(pub u64);

/// One term `coefficient · tensor` of a linear combination.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug)]
pub struct Term {
    /// The scalar factor.
    pub coefficient: f64,
    /// The tensor it multiplies.
    pub tensor: TensorId,
}

/// Elementwise operations on one tensor.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// |x|
    Abs,
    /// √x
    Sqrt,
    /// x²
    Square,
}

/// Elementwise operations on two tensors of the same shape.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a·b
    Mul,
    /// a/b
    Div,
    /// max(a, b)
    Maximum,
    /// min(a, b)
    Minimum,
}

/// Elementwise operations between a tensor and a scalar.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ScalarOp {
    /// x + s
    Add,
    /// max(x, s)
    Max,
    /// min(x, s)
    Min,
}

/// Functions of one number (see [`Host::scalar_fn`]).
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ScalarFn {
    /// ln x
    Ln,
    /// eˣ
    Exp,
}

/// Reductions of a whole tensor (all images of the batch) to one number.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Euclidean norm over all elements.
    Norm,
    /// Largest absolute value.
    MaxAbs,
    /// Number of elements.
    Numel,
}

/// What the host reports to a step callback, and what the callback answers.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug)]
pub struct StepInfo {
    /// Index of the step, from 0.
    pub step: u32,
    /// Number of steps the sampler will report.
    pub total: u32,
    /// Noise level at the start of the step.
    pub sigma: f64,
    /// Noise level after churn (equals `sigma` for samplers without churn).
    pub sigma_hat: f64,
    /// The current latent.
    pub x: TensorId,
    /// The model's denoised prediction at this step.
    pub denoised: TensorId,
}

/// The answer of the step callback.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on sampling.
    Continue,
    /// The user cancelled the job: return as soon as possible.
    Cancel,
}

/// Why a host operation failed.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum HostErrorKind {
    /// The job was cancelled by the user.
    Cancelled,
    /// The device ran out of memory.
    OutOfMemory,
    /// A handle that the host does not know (released, or from another call).
    InvalidHandle,
    /// The model or a tensor operation failed.
    Failed,
}

/// A failure of a host operation.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct HostError {
    /// What kind of failure.
    pub kind: HostErrorKind,
    /// A message for the user.
    pub message: RString,
}

/// The operations the host offers a sampler during one sample call.
///
/// Tensor arithmetic never fails from the plugin's point of view: when an operation fails (out
/// of memory, a released handle) the host remembers the first error and returns an invalid
/// handle; the next call that can fail (`denoise`, `noise`, `brownian_noise`, `step`) reports
/// it, so samplers only check errors where they would have to stop anyway.
#[sabi_trait]
pub trait Host {
    /// Σ coefficient·tensor, one fused operation.
    fn lincomb(&mut self, terms: RSlice<'_, Term>) -> TensorId;
    /// An elementwise operation on one tensor.
    fn unary(&mut self, op: UnaryOp, x: TensorId) -> TensorId;
    /// An elementwise operation on two tensors.
    fn binary(&mut self, op: BinaryOp, a: TensorId, b: TensorId) -> TensorId;
    /// An elementwise operation between a tensor and a scalar.
    fn scalar(&mut self, op: ScalarOp, x: TensorId, s: f64) -> TensorId;
    /// A reduction to one number (NaN after a failure).
    fn reduce(&mut self, op: Reduction, x: TensorId) -> f64;
    /// A new handle to the same values (the host copies nothing).
    fn share(&mut self, x: TensorId) -> TensorId;
    /// Gives a handle back; the host frees the tensor when nothing else refers to it.
    fn release(&mut self, x: TensorId);
    /// The model's denoised prediction D(x, σ) with classifier-free guidance applied.
    ///
    /// `timestep` overrides the σ→t mapping for samplers that choose the model's timestep
    /// themselves (DDIM family, LCM); the host still scales the input by σ.
    fn denoise(
        &mut self,
        x: TensorId,
        sigma: f64,
        timestep: ROption<f64>,
    ) -> RResult<TensorId, HostError>;
    /// Standard normal noise shaped like the latent: the next draw of each image's generator.
    fn noise(&mut self) -> RResult<TensorId, HostError>;
    /// Brownian-tree noise for the interval (σ, σ_next), normalised to unit variance.
    fn brownian_noise(&mut self, sigma: f64, sigma_next: f64) -> RResult<TensorId, HostError>;
    /// `function(x)` of a float32 number as libtorch rounds it on the sampler's device (NaN
    /// after a failure). k-diffusion computes some noise levels on 0-d float32 tensors, and the
    /// Brownian tree tells levels one float32 step apart from each other, so a sampler that
    /// queries it at computed levels needs libtorch's last bit, which Rust's `ln`/`exp` may
    /// not share.
    fn scalar_fn(&mut self, function: ScalarFn, x: f32) -> f32;
    /// Reports a finished step; answers whether to go on.
    #[sabi(last_prefix_field)]
    fn step(&mut self, info: StepInfo) -> RResult<Flow, HostError>;
}

/// The host's side of one sample call, as the plugin sees it.
pub type HostRef<'a> = Host_TO<'a, abi_stable::RMut<'a, ()>>;

/// A value of a sampler option.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// A number (flags are 0 and 1).
    Number(f64),
    /// A word, such as a solver variant.
    Text(RString),
}

/// An option a sampler accepts, with its default.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct SamplerOption {
    /// The name the host and users pass it by, e.g. `eta` or `s_churn`.
    pub name: RString,
    /// The value used when the job does not set it.
    pub default: OptionValue,
    /// One line for `sdhost samplers` and for users.
    pub help: RString,
}

/// Which noise levels a sampler expects.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ScheduleInput {
    /// A σ schedule from the chosen scheduler (k-diffusion samplers).
    Sigmas,
    /// A1111's DDIM timesteps, with the σ of each (DDIM, PLMS, UniPC).
    Timesteps,
}

/// What a plugin says about one of its samplers.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct SamplerInfo {
    /// The name users select it by, as A1111 shows it (e.g. "DPM++ 2M").
    pub name: RString,
    /// Other accepted names (e.g. "k_dpmpp_2m").
    pub aliases: RVec<RString>,
    /// The schedule "Automatic" resolves to, by name; none means the model's default.
    pub default_schedule: ROption<RString>,
    /// Which noise levels the sampler takes.
    pub input: ScheduleInput,
    /// The schedule is computed one step longer and its second-to-last σ dropped.
    pub discard_penultimate_sigma: bool,
    /// Makes two model calls per step (prompt-editing steps count double).
    pub second_order: bool,
    /// Draws its noise after an eta-noise-seed-delta switch (ENSD appears in the infotext).
    pub uses_ensd: bool,
    /// Uses Brownian-tree noise.
    pub brownian: bool,
    /// The options it reads, with defaults.
    pub options: RVec<SamplerOption>,
}

/// One sample call: the starting latent, its noise levels, options, and the host's operations.
#[repr(C)]
#[derive(StableAbi)]
pub struct SampleJob<'a> {
    /// The host's operations for this call.
    pub host: HostRef<'a>,
    /// The starting latent: the noised image at `sigmas[0]` (k-diffusion convention, x0 + σ·ε).
    pub x: TensorId,
    /// Decreasing noise levels; the sampler walks from the first to the last.
    pub sigmas: RVec<f64>,
    /// For [`ScheduleInput::Timesteps`]: the model timestep of each σ; otherwise empty.
    pub timesteps: RVec<f64>,
    /// The model's ᾱ_t for t = 0..len, for samplers that work in the model's own time.
    pub alphas_cumprod: RVec<f64>,
    /// The options the job sets (others take their defaults).
    pub options: RVec<Tuple2<RString, OptionValue>>,
}

/// Why a sample call failed, as the plugin reports it.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum PluginErrorKind {
    /// The host reported an error (cancelled, out of memory ...); see the message.
    Host,
    /// The plugin does not have the sampler asked for.
    UnknownSampler,
    /// An option has a wrong type or value.
    BadOption,
    /// The sampler cannot run on these inputs (e.g. too few sigmas).
    BadInput,
    /// The sampler panicked; the panic was caught at the boundary.
    Panic,
}

/// A failed sample call.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginError {
    /// What kind of failure.
    pub kind: PluginErrorKind,
    /// The host's error kind when `kind` is [`PluginErrorKind::Host`].
    pub host_kind: ROption<HostErrorKind>,
    /// A message for the user.
    pub message: RString,
}

/// The root module every sampler plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = SamplerPluginRef)))]
#[sabi(missing_field(panic))]
pub struct SamplerPluginModule {
    /// The plugin's name, for listings and error messages.
    pub name: extern "C" fn() -> RString,
    /// The plugin's own version.
    pub version: extern "C" fn() -> RString,
    /// The samplers it offers.
    pub samplers: extern "C" fn() -> RVec<SamplerInfo>,
    /// Runs the named sampler; returns the final latent.
    #[sabi(last_prefix_field)]
    pub sample:
        extern "C" fn(sampler: RStr<'_>, job: SampleJob<'_>) -> RResult<TensorId, PluginError>,
}

impl RootModule for SamplerPluginRef {
    declare_root_module_statics! {SamplerPluginRef}
    const BASE_NAME: &'static str = "sdhost_sampler_plugin";
    const NAME: &'static str = "sdhost sampler plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
