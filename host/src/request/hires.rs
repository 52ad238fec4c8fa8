//! Hires. fix's request fields (A1111 `StableDiffusionProcessingTxt2Img`), flattened into
//! `GenerationRequest`; the pass itself is `pipeline/hires.rs` and `pipeline/txt2img.rs`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

/// A1111's `latent_upscale_default_mode`: what a request without `hr_upscaler` gets.
pub const DEFAULT_LATENT_MODE: &str = "Latent";

/// A1111's Hires. fix parameters of txt2img, under its API names and defaults
/// (`StableDiffusionProcessingTxt2Img` fields; v1.10.1 has no hires CFG scale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, SmartDefault)]
#[serde(default)]
pub struct HiresSettings {
    /// Hires. fix: sample again at a larger size from the upscaled first pass (txt2img).
    #[serde(deserialize_with = "crate::request::flag")]
    pub enable_hr: bool,
    /// Hires. fix "Upscale by" (used when hr_resize_x and hr_resize_y are 0).
    #[default(2.0)]
    pub hr_scale: f64,
    /// Hires. fix upscaler: a latent mode (Latent, Latent (antialiased), Latent (bicubic),
    /// Latent (bicubic antialiased), Latent (nearest), Latent (nearest-exact)) or a pixel
    /// upscaler (None, Lanczos, Nearest); null: Latent.
    pub hr_upscaler: Option<String>,
    /// Hires. fix steps (0: as many as the first pass).
    pub hr_second_pass_steps: usize,
    /// Hires. fix "Resize width to" (0: from the height and the aspect ratio).
    pub hr_resize_x: u32,
    /// Hires. fix "Resize height to" (0: from the width and the aspect ratio).
    pub hr_resize_y: u32,
    /// Hires. fix sampler (null or "Use same sampler": the first pass's).
    pub hr_sampler_name: Option<String>,
    /// Hires. fix schedule type (null or "Use same scheduler": the first pass's).
    pub hr_scheduler: Option<String>,
    /// Hires. fix prompt (empty: the prompt).
    pub hr_prompt: String,
    /// Hires. fix negative prompt (empty: the negative prompt).
    pub hr_negative_prompt: String,
}

/// What A1111's UI sends for "the first pass's sampler/schedule".
const SAME_SAMPLER: &str = "Use same sampler";
const SAME_SCHEDULER: &str = "Use same scheduler";

impl HiresSettings {
    /// The hires sampler when it is another than the first pass's (infotext `Hires sampler`).
    pub fn sampler(&self) -> Option<&str> {
        self.hr_sampler_name
            .as_deref()
            .filter(|name| !name.is_empty() && *name != SAME_SAMPLER)
    }

    /// The hires schedule when one is named.
    pub fn scheduler(&self) -> Option<&str> {
        self.hr_scheduler
            .as_deref()
            .filter(|name| !name.is_empty() && *name != SAME_SCHEDULER)
    }

    /// The hires pass's prompts (empty: the job's).
    pub fn prompts<'p>(&'p self, prompt: &'p str, negative: &'p str) -> (&'p str, &'p str) {
        let pick = |hr: &'p str, own: &'p str| if hr.is_empty() { own } else { hr };
        (
            pick(&self.hr_prompt, prompt),
            pick(&self.hr_negative_prompt, negative),
        )
    }
}
