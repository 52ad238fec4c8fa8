//! The safe view of one sample call that sampler code works with.

use std::cell::{Cell, RefCell};
use std::fmt;

use abi_stable::std_types::{RNone, ROption, RSome, RVec, Tuple2};

use crate::abi::{
    Flow, HostError, HostErrorKind, HostRef, OptionValue, PluginError, PluginErrorKind, SampleJob,
    SamplerOption, ScalarFn, StepInfo, TensorId,
};
use crate::latent::Latent;

/// Why a sampler stopped early.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleError {
    /// A host operation failed or the user cancelled.
    Host(HostErrorKind, String),
    /// An option is missing a value of the right type.
    BadOption(String),
    /// The inputs do not suit the sampler.
    BadInput(String),
}

impl SampleError {
    /// Whether the job was cancelled (not a failure for the user).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, SampleError::Host(HostErrorKind::Cancelled, _))
    }
}

impl fmt::Display for SampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleError::Host(_, message) => f.write_str(message),
            SampleError::BadOption(message) | SampleError::BadInput(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for SampleError {}

impl From<HostError> for SampleError {
    fn from(error: HostError) -> Self {
        SampleError::Host(error.kind, error.message.into_string())
    }
}

impl From<SampleError> for PluginError {
    fn from(error: SampleError) -> Self {
        let (kind, host_kind, message) = match error {
            SampleError::Host(kind, message) => (PluginErrorKind::Host, RSome(kind), message),
            SampleError::BadOption(message) => (PluginErrorKind::BadOption, RNone, message),
            SampleError::BadInput(message) => (PluginErrorKind::BadInput, RNone, message),
        };
        PluginError {
            kind,
            host_kind,
            message: message.into(),
        }
    }
}

/// One sample call: noise levels, options and the host's operations.
pub struct Context<'a> {
    host: RefCell<HostRef<'a>>,
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    options: Vec<(String, OptionValue)>,
    defaults: Vec<SamplerOption>,
    total_steps: Cell<u32>,
}

impl<'a> Context<'a> {
    /// Takes the job apart; `defaults` are the sampler's declared options.
    pub(crate) fn new(job: SampleJob<'a>, defaults: Vec<SamplerOption>) -> (Self, TensorId) {
        let SampleJob {
            host,
            x,
            sigmas,
            timesteps,
            alphas_cumprod,
            options,
        } = job;
        let options = options
            .into_iter()
            .map(|Tuple2(name, value)| (name.into_string(), value))
            .collect();
        let total_steps = sigmas.len().saturating_sub(1) as u32;
        let context = Context {
            host: RefCell::new(host),
            sigmas: sigmas.into_vec(),
            timesteps: RVec::into_vec(timesteps),
            alphas_cumprod: alphas_cumprod.into_vec(),
            options,
            defaults,
            total_steps: Cell::new(total_steps),
        };
        (context, x)
    }

    /// The decreasing noise levels to walk, first = the level of the starting latent.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The model timesteps matching [`Self::sigmas`], for timestep samplers; empty otherwise.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The model's ᾱ_t, indexed by integer timestep.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// Sets the step count reported to the host's progress callback (default: one per σ gap).
    pub fn set_total_steps(&self, total: u32) {
        self.total_steps.set(total);
    }

    /// The number of steps reported to the progress callback.
    pub fn total_steps(&self) -> u32 {
        self.total_steps.get()
    }

    fn option(&self, name: &str) -> Option<&OptionValue> {
        self.options
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .or_else(|| {
                self.defaults
                    .iter()
                    .find(|option| option.name.as_str() == name)
                    .map(|option| &option.default)
            })
    }

    /// A numeric option: the job's value, else the sampler's declared default.
    pub fn number(&self, name: &str) -> Result<f64, SampleError> {
        match self.option(name) {
            Some(OptionValue::Number(value)) => Ok(*value),
            Some(OptionValue::Text(text)) => Err(SampleError::BadOption(format!(
                "option {name} must be a number, got \"{text}\""
            ))),
            None => Err(SampleError::BadOption(format!(
                "option {name} is not declared by this sampler"
            ))),
        }
    }

    /// A text option: the job's value, else the sampler's declared default.
    pub fn text(&self, name: &str) -> Result<String, SampleError> {
        match self.option(name) {
            Some(OptionValue::Text(text)) => Ok(text.to_string()),
            Some(OptionValue::Number(value)) => Err(SampleError::BadOption(format!(
                "option {name} must be a word, got {value}"
            ))),
            None => Err(SampleError::BadOption(format!(
                "option {name} is not declared by this sampler"
            ))),
        }
    }

    pub(crate) fn host(&self) -> std::cell::RefMut<'_, HostRef<'a>> {
        self.host.borrow_mut()
    }

    pub(crate) fn wrap(&self, id: TensorId) -> Latent<'_, 'a> {
        Latent::from_id(self, id)
    }

    /// The model's denoised prediction D(x, σ), guidance applied.
    pub fn denoise(&self, x: &Latent<'_, 'a>, sigma: f64) -> Result<Latent<'_, 'a>, SampleError> {
        let id = self.host().denoise(x.id(), sigma, RNone).into_result()?;
        Ok(self.wrap(id))
    }

    /// Like [`Self::denoise`], with the model timestep chosen by the sampler.
    pub fn denoise_at(
        &self,
        x: &Latent<'_, 'a>,
        sigma: f64,
        timestep: f64,
    ) -> Result<Latent<'_, 'a>, SampleError> {
        let id = self
            .host()
            .denoise(x.id(), sigma, ROption::RSome(timestep))
            .into_result()?;
        Ok(self.wrap(id))
    }

    /// Unit normal noise: the next draw of each image's generator (A1111's `randn_like`).
    pub fn noise(&self) -> Result<Latent<'_, 'a>, SampleError> {
        let id = self.host().noise().into_result()?;
        Ok(self.wrap(id))
    }

    /// Brownian-tree noise for the interval (σ, σ_next), unit variance.
    pub fn brownian_noise(
        &self,
        sigma: f64,
        sigma_next: f64,
    ) -> Result<Latent<'_, 'a>, SampleError> {
        let id = self
            .host()
            .brownian_noise(sigma, sigma_next)
            .into_result()?;
        Ok(self.wrap(id))
    }

    /// ln x rounded as libtorch rounds it in float32 on the job's device: for noise levels that
    /// must equal k-diffusion's to the last bit (Brownian-tree queries). NaN after a failure,
    /// which the next fallible call reports.
    pub fn ln_f32(&self, x: f32) -> f32 {
        self.host().scalar_fn(ScalarFn::Ln, x)
    }

    /// eˣ rounded as libtorch rounds it in float32 on the job's device (see [`Self::ln_f32`]).
    pub fn exp_f32(&self, x: f32) -> f32 {
        self.host().scalar_fn(ScalarFn::Exp, x)
    }

    /// Reports step `step` to the host; an error when the user cancelled.
    pub fn callback(
        &self,
        step: usize,
        sigma: f64,
        sigma_hat: f64,
        x: &Latent<'_, 'a>,
        denoised: &Latent<'_, 'a>,
    ) -> Result<(), SampleError> {
        let info = StepInfo {
            step: step as u32,
            total: self.total_steps.get(),
            sigma,
            sigma_hat,
            x: x.id(),
            denoised: denoised.id(),
        };
        match self.host().step(info).into_result()? {
            Flow::Continue => Ok(()),
            Flow::Cancel => Err(SampleError::Host(
                HostErrorKind::Cancelled,
                "cancelled".to_string(),
            )),
        }
    }
}
