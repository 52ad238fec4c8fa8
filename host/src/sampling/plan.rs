//! From the user's sampler settings to what the sampler walks: the sampler and schedule A1111
//! would pick for the names given, the noise levels for img2img at a denoising strength, and
//! the noised starting latent.

use schemars::JsonSchema;
use sdhost_plugin_api::{OptionValue, ScheduleInput};
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;
use tch::Tensor;

use super::noise_levels::{LcmNoiseLevels, NoiseLevels, NoiseLevelsError, NoiseModel};
use super::plugins::{FoundSampler, SampleRequest, SamplerRegistry, SamplingError};
use super::schedule::{
    ddim_timesteps, img2img_sigma_sched, img2img_steps, Schedule, ScheduleError, ScheduleOptions,
};

/// The default schedule name a sampler gives when it samples with LCM's own noise levels.
pub const LCM_SCHEDULE: &str = "lcm";

/// The sampler settings of an img2img job (A1111's img2img tab and options); serde names are
/// A1111's API fields and option names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, SmartDefault)]
#[serde(default)]
pub struct SamplerSettings {
    /// Sampler by A1111 name or alias; a legacy name with a schedule ("DPM++ 2M Karras") works.
    #[serde(rename = "sampler_name", alias = "sampler_index")]
    #[default("DPM++ 2M".to_string())]
    pub sampler: String,
    /// Schedule type; Automatic picks the sampler's default.
    #[serde(rename = "scheduler")]
    #[schemars(with = "String")]
    #[default(Schedule::Automatic)]
    pub schedule: Schedule,
    /// Sampling steps.
    #[default(20)]
    pub steps: usize,
    /// How much of the init image is replaced, 0-1.
    #[default(0.75)]
    pub denoising_strength: f64,
    /// A1111 option `img2img_fix_steps`: run exactly `steps` steps whatever the strength.
    #[serde(rename = "img2img_fix_steps")]
    pub fix_steps: bool,
    /// σ range, ρ, Beta parameters, `always_discard_next_to_last_sigma`.
    #[serde(flatten)]
    pub schedule_options: ScheduleOptions,
    /// Sampler options, e.g. {"eta": 0.5, "s_churn": 1} (`sdhost samplers --options`).
    #[serde(rename = "sampler_options", with = "crate::request::sampler_options")]
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub options: Vec<(String, OptionValue)>,
}

/// Why the settings cannot be sampled.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No such sampler.
    #[error(transparent)]
    Sampler(#[from] SamplingError),
    /// The schedule cannot be made.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// LCM's noise levels need the model's 1000 levels.
    #[error(transparent)]
    NoiseLevels(#[from] NoiseLevelsError),
    /// A plugin names a default schedule this host does not know.
    #[error("sampler {sampler} asks for unknown default schedule \"{schedule}\"")]
    UnknownDefaultSchedule { sampler: String, schedule: String },
    /// A setting out of range.
    #[error("{0}")]
    Invalid(String),
}

/// What one img2img sampling run walks, decided before any model call.
pub struct SamplingPlan<'r> {
    /// The sampler and its plugin.
    pub sampler: FoundSampler<'r>,
    /// The schedule used (None for the DDIM family, which uses timesteps).
    pub schedule: Option<Schedule>,
    /// What the infotext says as `Schedule type` (Automatic stays Automatic without a default).
    pub schedule_label: String,
    /// Whether the penultimate σ was discarded (infotext `Discard penultimate sigma`).
    pub discard_penultimate: bool,
    /// The full schedule (its range bounds the Brownian-tree noise).
    pub full_sigmas: Vec<f64>,
    /// The part walked: first = noise level of the starting latent.
    pub sigmas: Vec<f64>,
    /// Model timesteps of `sigmas`, for DDIM-family samplers.
    pub timesteps: Vec<f64>,
    /// A1111's t_enc: how deep into the schedule img2img starts.
    pub t_enc: usize,
    /// Steps the progress bar counts (A1111 `t_enc + 1`).
    pub steps_run: usize,
    /// The model's ᾱ, for samplers working in the model's own time.
    pub alphas_cumprod: Vec<f64>,
    /// The sampler options of the job.
    pub options: Vec<(String, OptionValue)>,
}

impl SamplerRegistry {
    /// The sampler for a name, accepting A1111's legacy "Sampler Schedule" names; returns the
    /// schedule named by the suffix, if any (`sd_samplers.get_sampler_and_scheduler`).
    pub fn find_with_schedule(
        &self,
        name: &str,
    ) -> Result<(FoundSampler<'_>, Option<Schedule>), SamplingError> {
        match self.find(name) {
            Ok(found) => Ok((found, None)),
            Err(error) => {
                let name = name.trim();
                for schedule in Schedule::ALL {
                    let names = [schedule.label(), schedule.name()]
                        .into_iter()
                        .chain(schedule.aliases().iter().copied());
                    for suffix in names {
                        // Byte offsets of the original name: schedule names are ASCII, and
                        // a lowercased copy of a non-ASCII name could have other offsets.
                        let Some(split) = name.len().checked_sub(suffix.len() + 1) else {
                            continue;
                        };
                        if !name.is_char_boundary(split)
                            || !name[split..].eq_ignore_ascii_case(&format!(" {suffix}"))
                        {
                            continue;
                        }
                        if let Ok(found) = self.find(&name[..split]) {
                            return Ok((found, Some(schedule)));
                        }
                    }
                }
                Err(error)
            }
        }
    }
}

impl<'r> SamplingPlan<'r> {
    /// Resolves sampler and schedule and computes the noise levels img2img walks.
    pub fn new(
        registry: &'r SamplerRegistry,
        settings: &SamplerSettings,
        levels: &NoiseLevels,
    ) -> Result<Self, PlanError> {
        Self::build(registry, settings, levels, false)
    }

    /// The plan of a txt2img pass: the whole schedule from pure noise, `steps` steps
    /// (A1111 `KDiffusionSampler.sample`, `CompVisSampler.sample`); the denoising strength
    /// plays no part.
    pub fn txt2img(
        registry: &'r SamplerRegistry,
        settings: &SamplerSettings,
        levels: &NoiseLevels,
    ) -> Result<Self, PlanError> {
        Self::build(registry, settings, levels, true)
    }

    fn build(
        registry: &'r SamplerRegistry,
        settings: &SamplerSettings,
        levels: &NoiseLevels,
        txt2img: bool,
    ) -> Result<Self, PlanError> {
        if settings.steps == 0 {
            return Err(PlanError::Invalid("steps must be at least 1".into()));
        }
        let strength = settings.denoising_strength;
        if !txt2img && !(0.0..=1.0).contains(&strength) {
            return Err(PlanError::Invalid(format!(
                "denoising strength must be between 0 and 1, got {strength}"
            )));
        }
        let (sampler, suffix_schedule) = registry.find_with_schedule(&settings.sampler)?;
        let info = sampler.info;
        let requested = match (settings.schedule, suffix_schedule) {
            (Schedule::Automatic, Some(from_name)) => from_name,
            (schedule, _) => schedule,
        };
        let discard =
            info.discard_penultimate_sigma || settings.schedule_options.discard_penultimate;
        // txt2img walks the whole schedule: A1111's img2img levels with t_enc = steps − 1.
        let (steps, t_enc) = if txt2img {
            (settings.steps, settings.steps - 1)
        } else {
            img2img_steps(settings.steps, strength, settings.fix_steps)
        };
        let alphas_cumprod: Vec<f64> = levels
            .alphas_cumprod()
            .iter()
            .map(|&a| f64::from(a))
            .collect();
        let options = settings.options.clone();

        if info.input == ScheduleInput::Timesteps {
            let DdimLevels {
                full_sigmas,
                sigmas,
                timesteps,
            } = if txt2img {
                ddim_txt2img_levels(levels, steps, discard)?
            } else {
                ddim_levels(levels, steps, t_enc, discard)?
            };
            return Ok(SamplingPlan {
                sampler,
                schedule: None,
                schedule_label: requested.label().to_string(),
                discard_penultimate: discard,
                full_sigmas,
                sigmas,
                timesteps,
                t_enc,
                steps_run: if txt2img {
                    steps.saturating_sub(1)
                } else {
                    t_enc.saturating_sub(1)
                },
                alphas_cumprod,
                options,
            });
        }

        let default = match info.default_schedule.as_ref().into_option() {
            None => None,
            Some(name) if name.as_str() == LCM_SCHEDULE => None,
            Some(name) => Some(Schedule::from_name(name.as_str()).map_err(|_| {
                PlanError::UnknownDefaultSchedule {
                    sampler: info.name.to_string(),
                    schedule: name.to_string(),
                }
            })?),
        };
        let schedule = requested.resolve(default);
        let schedule_options = ScheduleOptions {
            discard_penultimate: discard,
            ..settings.schedule_options.clone()
        };
        let lcm = info
            .default_schedule
            .as_ref()
            .into_option()
            .is_some_and(|name| name.as_str() == LCM_SCHEDULE);
        let full_sigmas = if lcm {
            schedule.sigmas(steps, &LcmNoiseLevels::new(levels)?, &schedule_options)?
        } else {
            schedule.sigmas(steps, levels, &schedule_options)?
        };
        let sigmas = img2img_sigma_sched(&full_sigmas, steps, t_enc).to_vec();
        // A1111 writes the resolved schedule, except "Automatic" for samplers without one.
        let schedule_label = if requested == Schedule::Automatic && default.is_none() {
            Schedule::Automatic.label().to_string()
        } else {
            schedule.label().to_string()
        };
        Ok(SamplingPlan {
            sampler,
            schedule: Some(schedule),
            schedule_label,
            discard_penultimate: discard,
            full_sigmas,
            sigmas,
            timesteps: Vec::new(),
            t_enc,
            steps_run: t_enc + 1,
            alphas_cumprod,
            options,
        })
    }

    /// The starting latent: `init + σ₀·noise` (k-diffusion's variance-exploding form; for the
    /// DDIM family this is √ᾱ·init + √(1−ᾱ)·noise divided by √ᾱ, the same state), plus
    /// `extra_noise·noise` when A1111's `img2img_extra_noise` is set (the DDIM family's
    /// `+ noise·extra·√ᾱ` is the same term in this form).
    pub fn start_latent(&self, init_latent: &Tensor, noise: &Tensor, extra_noise: f64) -> Tensor {
        let start = init_latent + noise * self.sigmas[0];
        if extra_noise > 0.0 {
            start + noise * extra_noise
        } else {
            start
        }
    }

    /// The starting latent of a txt2img pass from unit noise: `noise·σmax` for k-diffusion
    /// samplers; the DDIM family starts from the noise itself as the VP latent, which is
    /// `noise·√(1+σ²)` in the k-diffusion form their input takes.
    pub fn txt2img_start(&self, noise: &Tensor) -> Tensor {
        let sigma = self.sigmas[0];
        if self.sampler.info.input == ScheduleInput::Timesteps {
            noise * (1.0 + sigma * sigma).sqrt()
        } else {
            noise * sigma
        }
    }

    /// The σ range of the Brownian-tree noise: the smallest positive and the largest σ of the
    /// full schedule (A1111 builds the tree over the whole schedule, not the img2img part).
    pub fn brownian_range(&self) -> (f64, f64) {
        let positive = self.full_sigmas.iter().copied().filter(|&s| s > 0.0);
        let min = positive.clone().fold(f64::INFINITY, f64::min);
        let max = positive.fold(0.0, f64::max);
        (min, max)
    }

    /// The request for the sampler, starting from `x`.
    pub fn request(&self, x: Tensor) -> SampleRequest {
        SampleRequest {
            x,
            sigmas: self.sigmas.clone(),
            timesteps: self.timesteps.clone(),
            alphas_cumprod: self.alphas_cumprod.clone(),
            options: self.options.clone(),
            cancel: None,
        }
    }
}

/// The noise levels of a DDIM-family run.
struct DdimLevels {
    full_sigmas: Vec<f64>,
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
}

/// DDIM-family img2img levels: the latent is noised to `timesteps[t_enc]` and the sampler
/// walks down through `timesteps[t_enc-1] … timesteps[0]` (A1111 `CompVisSampler`); the list
/// passed is that descent, noising level first, with the σ of each timestep.
fn ddim_levels(
    levels: &NoiseLevels,
    steps: usize,
    t_enc: usize,
    discard: bool,
) -> Result<DdimLevels, PlanError> {
    let all = ddim_timesteps(steps, discard)?;
    let start = t_enc.min(all.len() - 1);
    let sigma = |t: i64| levels.sigmas()[t as usize];
    let descent: Vec<i64> = all[..=start].iter().rev().copied().collect();
    let full = all.iter().rev().map(|&t| sigma(t)).collect();
    Ok(DdimLevels {
        full_sigmas: full,
        sigmas: descent.iter().map(|&t| sigma(t)).collect(),
        timesteps: descent.iter().map(|&t| t as f64).collect(),
    })
}

/// DDIM-family txt2img levels: x is pure noise at the last timestep and A1111's sampler calls
/// the model at `timesteps[steps−1] … timesteps[1]`, ending at `timesteps[0]`
/// (`sd_samplers_timesteps_impl.ddim`); the list passed repeats the start level first, as the
/// noising level the samplers skip.
fn ddim_txt2img_levels(
    levels: &NoiseLevels,
    steps: usize,
    discard: bool,
) -> Result<DdimLevels, PlanError> {
    let all = ddim_timesteps(steps, discard)?;
    let sigma = |t: i64| levels.sigmas()[t as usize];
    let last = *all.last().expect("at least one timestep");
    let descent: Vec<i64> = std::iter::once(last)
        .chain(all.iter().rev().copied())
        .collect();
    Ok(DdimLevels {
        full_sigmas: all.iter().rev().map(|&t| sigma(t)).collect(),
        sigmas: descent.iter().map(|&t| sigma(t)).collect(),
        timesteps: descent.iter().map(|&t| t as f64).collect(),
    })
}
