//! [`SamplerSpec`]: how a plugin describes a sampler, without abi_stable types.
//!
//! A1111 describes each sampler by a row of `samplers_k_diffusion` in
//! `modules/sd_samplers_kdiffusion.py`: a label, aliases and a dict of flags (`scheduler`,
//! `second_order`, `uses_ensd`, `brownian_noise`, `discard_next_to_last_sigma`), with the
//! options each sampler function reads listed in `sampler_extra_params`. The builder mirrors
//! that row; flags are off unless a method turns them on. It converts into [`SamplerInfo`], the
//! row that crosses the ABI, so plugins never build abi_stable types themselves.

use crate::abi::{OptionValue, SamplerInfo, SamplerOption, ScheduleInput};
use crate::context::Context;
use crate::latent::Latent;
use crate::SampleError;

/// What a sampler returns: the final latent, or why it stopped.
pub type SampleResult<'c, 'a> = Result<Latent<'c, 'a>, SampleError>;

/// A sampler as a plain function of the sample call and the starting latent.
pub type SamplerFn = for<'c, 'a> fn(&'c Context<'a>, Latent<'c, 'a>) -> SampleResult<'c, 'a>;

/// One sampler as A1111 presents it; every flag is off until its method is called.
///
/// ```
/// use sdhost_plugin_api::{SamplerInfo, SamplerSpec};
///
/// let info: SamplerInfo = SamplerSpec::new("Euler")
///     .alias("k_euler")
///     .option("s_churn", 0.0, "stochasticity: noise added back per step (0 = none)")
///     .into();
/// assert_eq!(info.aliases[0].as_str(), "k_euler");
/// assert!(!info.second_order && !info.uses_ensd);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct SamplerSpec {
    name: String,
    aliases: Vec<String>,
    default_schedule: Option<String>,
    input: ScheduleInput,
    discard_penultimate_sigma: bool,
    second_order: bool,
    uses_ensd: bool,
    brownian: bool,
    options: Vec<SamplerOption>,
}

impl SamplerSpec {
    /// A sampler users select by `name` (A1111's label, e.g. "DPM++ 2M"), taking σ's, no flags.
    pub fn new(name: impl Into<String>) -> Self {
        SamplerSpec {
            name: name.into(),
            aliases: Vec::new(),
            default_schedule: None,
            input: ScheduleInput::Sigmas,
            discard_penultimate_sigma: false,
            second_order: false,
            uses_ensd: false,
            brownian: false,
            options: Vec::new(),
        }
    }

    /// The name users select the sampler by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another accepted name (A1111's API aliases, e.g. "k_dpmpp_2m").
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.aliases.push(alias.into());
        self
    }

    /// The schedule "Automatic" resolves to, by the host's name for it ("karras",
    /// "exponential", "uniform" ...; `sdhost samplers` shows what each resolves to).
    pub fn default_schedule(mut self, schedule: impl Into<String>) -> Self {
        self.default_schedule = Some(schedule.into());
        self
    }

    /// Takes A1111's DDIM timesteps with their σ's instead of a σ schedule (DDIM, PLMS, UniPC).
    pub fn timestep_input(mut self) -> Self {
        self.input = ScheduleInput::Timesteps;
        self
    }

    /// The schedule is computed one step longer and its second-to-last σ dropped (A1111's
    /// `discard_next_to_last_sigma`, DPM2 and DPM++ 3M SDE).
    pub fn discard_penultimate_sigma(mut self) -> Self {
        self.discard_penultimate_sigma = true;
        self
    }

    /// Two model calls per step, so prompt-editing steps count double (A1111's `second_order`).
    pub fn second_order(mut self) -> Self {
        self.second_order = true;
        self
    }

    /// Draws noise after the eta-noise-seed-delta switch, so ENSD goes into the infotext
    /// (A1111's `uses_ensd`).
    pub fn uses_ensd(mut self) -> Self {
        self.uses_ensd = true;
        self
    }

    /// Uses Brownian-tree noise; the host then builds the tree for the job (A1111's
    /// `brownian_noise`).
    pub fn brownian(mut self) -> Self {
        self.brownian = true;
        self
    }

    /// A numeric option (flags are 0 and 1) with its default and a one-line help.
    pub fn option(self, name: impl Into<String>, default: f64, help: impl Into<String>) -> Self {
        self.push_option(name.into(), OptionValue::Number(default), help.into())
    }

    /// A word option, such as a solver variant, with its default and a one-line help.
    pub fn text_option(
        self,
        name: impl Into<String>,
        default: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        let default = OptionValue::Text(default.into().into());
        self.push_option(name.into(), default, help.into())
    }

    /// Applies `f`, for option sets several samplers share: `spec.with(churn_options)`.
    pub fn with(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }

    fn push_option(mut self, name: String, default: OptionValue, help: String) -> Self {
        self.options.push(SamplerOption {
            name: name.into(),
            default,
            help: help.into(),
        });
        self
    }
}

impl From<SamplerSpec> for SamplerInfo {
    fn from(spec: SamplerSpec) -> Self {
        SamplerInfo {
            name: spec.name.into(),
            aliases: spec.aliases.into_iter().map(Into::into).collect(),
            default_schedule: spec.default_schedule.map(Into::into).into(),
            input: spec.input,
            discard_penultimate_sigma: spec.discard_penultimate_sigma,
            second_order: spec.second_order,
            uses_ensd: spec.uses_ensd,
            brownian: spec.brownian,
            options: spec.options.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::{RNone, RSome};

    #[test]
    fn defaults_are_a_plain_sigma_sampler_without_flags() {
        let info = SamplerInfo::from(SamplerSpec::new("Plain"));
        let literal = SamplerInfo {
            name: "Plain".into(),
            aliases: Default::default(),
            default_schedule: RNone,
            input: ScheduleInput::Sigmas,
            discard_penultimate_sigma: false,
            second_order: false,
            uses_ensd: false,
            brownian: false,
            options: Default::default(),
        };
        assert_eq!(format!("{info:?}"), format!("{literal:?}"));
    }

    #[test]
    fn every_method_sets_its_field() {
        let info = SamplerInfo::from(
            SamplerSpec::new("All")
                .alias("a")
                .alias("b")
                .default_schedule("karras")
                .timestep_input()
                .discard_penultimate_sigma()
                .second_order()
                .uses_ensd()
                .brownian()
                .option("eta", 1.0, "share of fresh noise")
                .text_option("variant", "bh1", "B(h) variant"),
        );
        let literal = SamplerInfo {
            name: "All".into(),
            aliases: vec!["a".into(), "b".into()].into(),
            default_schedule: RSome("karras".into()),
            input: ScheduleInput::Timesteps,
            discard_penultimate_sigma: true,
            second_order: true,
            uses_ensd: true,
            brownian: true,
            options: vec![
                SamplerOption {
                    name: "eta".into(),
                    default: OptionValue::Number(1.0),
                    help: "share of fresh noise".into(),
                },
                SamplerOption {
                    name: "variant".into(),
                    default: OptionValue::Text("bh1".into()),
                    help: "B(h) variant".into(),
                },
            ]
            .into(),
        };
        assert_eq!(format!("{info:?}"), format!("{literal:?}"));
    }
}
