//! The one generation request: every parameter of A1111's img2img tab, named as A1111's HTTP
//! API names it (`modules/api/models.py: StableDiffusionImg2ImgProcessingAPI`), with its
//! defaults and its validation. Every front end goes through it: the CLI's flags
//! (`cli/request_flags.rs`, made from its schema), the daemon's `params` object, infotext both
//! ways (`infotext.rs`) and the Python client (which reads the schema from the daemon).
//!
//! A request is complete (every field has a value); a front end's partial input is laid over a
//! base with [`GenerationRequest::overlay`], which knows A1111's shorthands (`mask_blur`,
//! `override_settings`) and names the field of any bad value.

mod hires;
mod infotext;
mod overlay;
mod wire_forms;

pub use hires::{HiresSettings, DEFAULT_LATENT_MODE};
pub use infotext::{option_value, ui_number, HiresFacts, ImageFacts, JOB_SHAPE_FIELDS};
pub use overlay::{schema, FieldInfo, InvalidRequest};
pub(crate) use wire_forms::{flag, sampler_options, size_pair, IndexOrName};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use crate::models::vae::VaeTiling;
use crate::prepare::inpaint::InpaintSettings;
use crate::prepare::resize::ResizeMode;
use crate::sampling::plan::SamplerSettings;

/// Largest accepted side in pixels (A1111's sliders stop at 2048; its API takes more).
pub const MAX_SIDE: u32 = 8192;

/// Largest mask blur accepted (A1111's slider stops at 64).
pub const MAX_MASK_BLUR: u32 = 256;

/// Most sampling steps, of a pass or of Hires. fix's second pass (A1111's slider stops at 150;
/// the models are trained on 1000 timesteps, so more steps only repeat levels).
pub const MAX_STEPS: usize = 1000;

/// Most images in one batch (A1111's slider stops at 8; a batch runs as one UNet call).
pub const MAX_BATCH_SIZE: usize = 64;

/// Most batches in one job (A1111's slider stops at 100).
pub const MAX_BATCH_COUNT: usize = 10_000;

/// Where the per-image noise comes from (A1111's option `randn_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngChoice {
    /// libtorch's CPU generator: the same numbers on every machine (infotext `RNG: CPU`).
    Cpu,
    /// A1111's "NV": CUDA's Philox stream computed on the CPU (infotext `RNG: NV`).
    Nv,
    /// The CUDA generator of the model's device (A1111's default; no `RNG` key).
    Gpu,
}

impl RngChoice {
    /// A1111's name of the source (`randn_source` values, infotext `RNG`).
    pub fn label(self) -> &'static str {
        match self {
            RngChoice::Cpu => "CPU",
            RngChoice::Nv => "NV",
            RngChoice::Gpu => "GPU",
        }
    }

    /// The source named `text` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        [RngChoice::Cpu, RngChoice::Nv, RngChoice::Gpu]
            .into_iter()
            .find(|c| c.label().eq_ignore_ascii_case(text.trim()))
    }

    /// The infotext `RNG` value (none for GPU, A1111's default).
    pub fn infotext_value(self) -> Option<&'static str> {
        (self != RngChoice::Gpu).then(|| self.label())
    }

    /// The choice an infotext `RNG` value names (absent: GPU).
    pub fn from_infotext(value: Option<&str>) -> Option<Self> {
        value.map_or(Some(RngChoice::Gpu), Self::parse)
    }
}

/// How the init image's latent is taken from the VAE encoder's distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitLatentMode {
    /// A sample, as A1111 takes it; its noise is the first draw of a CPU generator seeded with
    /// the image's seed (what A1111's global generator holds when a one-image job is repeated).
    Sample,
    /// The distribution's mean: no noise at all.
    Mean,
}

impl InitLatentMode {
    /// The mode's name (`sample`, `mean`).
    pub fn label(self) -> &'static str {
        match self {
            InitLatentMode::Sample => "sample",
            InitLatentMode::Mean => "mean",
        }
    }

    /// The mode named `text` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        [InitLatentMode::Sample, InitLatentMode::Mean]
            .into_iter()
            .find(|m| m.label().eq_ignore_ascii_case(text.trim()))
    }
}

/// Every parameter of a generation job, under A1111's API names.
///
/// Each field carries its doc (the CLI's help, the protocol doc, clients' descriptions) and its
/// A1111 UI default (`#[default]`, none: the type's zero); a new parameter is one field here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, SmartDefault)]
#[serde(default)]
pub struct GenerationRequest {
    /// Prompt (A1111 syntax: (emphasis:1.2), [edit:at:0.5], AND, BREAK, embeddings).
    pub prompt: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// How the init image is fitted to width x height: 0 just resize, 1 crop and resize,
    /// 2 resize and fill, 3 just resize (latent upscale); names work too.
    #[schemars(with = "wire_forms::IndexOrName")]
    #[default(ResizeMode::JustResize)]
    pub resize_mode: ResizeMode,
    /// Output width in pixels (sides need not be multiples of 8: the image is 8·⌊side/8⌋).
    #[default(512)]
    pub width: u32,
    /// Output height in pixels.
    #[default(512)]
    pub height: u32,
    /// Sampler, schedule, steps, denoising strength and sampler options.
    #[serde(flatten)]
    pub sampler: SamplerSettings,
    /// Classifier-free guidance scale.
    #[default(7.0)]
    pub cfg_scale: f64,
    /// Seed; -1 picks a random one.
    #[default(-1)]
    pub seed: i64,
    /// Variation seed; -1 picks a random one.
    #[default(-1)]
    pub subseed: i64,
    /// Variation strength, 0-1 (0: off).
    pub subseed_strength: f64,
    /// "Resize seed from" width (-1 or 0: off).
    #[default(-1)]
    pub seed_resize_from_w: i64,
    /// "Resize seed from" height (-1 or 0: off).
    #[default(-1)]
    pub seed_resize_from_h: i64,
    /// Batch count: batches run one after another.
    #[default(1)]
    pub n_iter: usize,
    /// Images sampled together per batch.
    #[default(1)]
    pub batch_size: usize,
    /// Clip skip (1: the last CLIP layer; A1111's option `CLIP_stop_at_last_layers`).
    #[default(1)]
    pub clip_skip: usize,
    /// Noise source: CPU (the same images on every machine), NV (A1111's NV), GPU (CUDA).
    #[serde(alias = "rng")]
    #[schemars(with = "String")]
    #[default(RngChoice::Cpu)]
    pub randn_source: RngChoice,
    /// Init latent: sample (as A1111) or the mean of the VAE's distribution (sdhost's).
    #[schemars(with = "String")]
    #[default(InitLatentMode::Sample)]
    pub init_latent: InitLatentMode,
    /// Factor on the initial noise (A1111 `initial_noise_multiplier`).
    #[default(1.0)]
    pub initial_noise_multiplier: f64,
    /// Noise added to the starting latent on top of the schedule's (A1111's option
    /// `img2img_extra_noise`, 0-1; img2img and Hires. fix's second pass).
    pub img2img_extra_noise: f64,
    /// Eta noise seed delta (ENSD).
    pub eta_noise_seed_delta: i64,
    /// Token merging ratio, 0-1 (A1111's option `token_merging_ratio`; 0: off): the share of
    /// the first UNet level's tokens merged in self-attention (tomesd), faster and less exact.
    pub token_merging_ratio: f64,
    /// Token merging ratio of img2img jobs when non-zero (A1111's option
    /// `token_merging_ratio_img2img`); a `token_merging_ratio` set with it in the same
    /// request or `override_settings` wins, as in A1111.
    pub token_merging_ratio_img2img: f64,
    /// Token merging ratio of Hires. fix's second pass when non-zero (A1111's option
    /// `token_merging_ratio_hr`; 0: the first pass's).
    pub token_merging_ratio_hr: f64,
    /// Mask handling, used when the job has a mask.
    #[serde(flatten)]
    pub inpaint: InpaintSettings,
    /// Inpaint sketch's mask transparency, 0-100.
    pub mask_alpha: f64,
    /// Colour correction: match each result's colours to the init image.
    #[serde(alias = "color_correction")]
    pub img2img_color_correction: bool,
    /// VAE (A1111's option `sd_vae`, also read from `override_settings`): Automatic (a VAE
    /// named like the checkpoint, else its own), None (the checkpoint's own), a file name in
    /// models/VAE with its extension (kl-f8-anime2.safetensors), or a VAE file's path.
    #[default(crate::sd_vae::AUTOMATIC.to_string())]
    pub sd_vae: String,
    /// VAE tiling: encode and decode images wider or taller than 512 px in overlapping 512²
    /// tiles (diffusers' `enable_tiling`): one tile's memory whatever the size, pixels
    /// slightly different.
    pub vae_tiling: bool,
    /// Refiner: a checkpoint (name, title or file) that takes over sampling at
    /// `refiner_switch_at`, with its own conditioning (SDXL's refiner; empty: none).
    pub refiner_checkpoint: String,
    /// When the refiner takes over: the fraction of the noise schedule done (A1111's
    /// "Switch at"), 0-1.
    #[default(0.8)]
    pub refiner_switch_at: f64,
    /// Hires. fix (txt2img only): upscale, steps, sampler, schedule and prompts of the
    /// second pass; its strength is `denoising_strength`.
    #[serde(flatten)]
    pub hires: HiresSettings,
}

impl GenerationRequest {
    /// A1111's img2img tab defaults (DPM++ 2M, 20 steps, original content, whole picture,
    /// padding 32), with the CPU RNG so that images are the same on every machine.
    pub fn ui_defaults() -> Self {
        Self::default()
    }

    /// A1111's txt2img tab defaults where they differ from the img2img tab's: Hires. fix
    /// denoising strength 0.7 and upscaler "Latent" (`modules/ui.py`,
    /// `latent_upscale_default_mode`).
    pub fn txt2img_ui_defaults() -> Self {
        let mut request = Self::ui_defaults();
        request.sampler.denoising_strength = 0.7;
        request.hires.hr_upscaler = Some(DEFAULT_LATENT_MODE.into());
        request
    }

    /// The defaults of A1111's `/sdapi/v1/img2img` where they differ from the tab's: Euler,
    /// 50 steps, masked content fill, only masked with padding 0, and A1111's default RNG.
    pub fn api_defaults() -> Self {
        let mut request = Self::ui_defaults();
        request.sampler.sampler = "Euler".into();
        request.sampler.steps = 50;
        request.inpaint.masked_content = crate::prepare::inpaint::MaskedContent::Fill;
        request.inpaint.only_masked = true;
        request.inpaint.only_masked_padding = 0;
        request.randn_source = RngChoice::Gpu;
        request
    }

    /// The token merging ratio of a job's first pass (A1111's `get_token_merging_ratio`:
    /// img2img takes `token_merging_ratio_img2img` when it is non-zero).
    pub fn token_merging_ratio(&self, txt2img: bool) -> f64 {
        if !txt2img && self.token_merging_ratio_img2img != 0.0 {
            self.token_merging_ratio_img2img
        } else {
            self.token_merging_ratio
        }
    }

    /// The token merging ratio of Hires. fix's second pass (`get_token_merging_ratio(for_hr=True)`:
    /// `token_merging_ratio_hr`, else the first pass's).
    pub fn token_merging_ratio_hr(&self) -> f64 {
        if self.token_merging_ratio_hr != 0.0 {
            self.token_merging_ratio_hr
        } else {
            self.token_merging_ratio(true)
        }
    }

    /// "Resize seed from" as a size, when set.
    pub fn seed_resize_from(&self) -> Option<(u32, u32)> {
        let (w, h) = (self.seed_resize_from_w, self.seed_resize_from_h);
        // Out-of-range sides stay out of range (validate refuses them), never wrap.
        let clamp = |side: i64| side.min(i64::from(u32::MAX)) as u32;
        (w > 0 && h > 0).then(|| (clamp(w), clamp(h)))
    }

    /// The job's VAE tiling, when on.
    pub fn vae_tiling(&self) -> Option<VaeTiling> {
        self.vae_tiling.then(VaeTiling::default)
    }

    /// Checks sizes, counts and scales before any work (`downscale`: the VAE's, 8).
    pub fn validate(&self, downscale: u32) -> Result<(), InvalidRequest> {
        let invalid = |field: &'static str, message: String| {
            Err(InvalidRequest::Value {
                field: field.into(),
                message,
            })
        };
        // Sides need not be multiples of 8: as in A1111, the latent is side/8 rounded down and
        // so is the decoded image (the VAE encoder floors each halving the same way).
        for (name, side) in [("width", self.width), ("height", self.height)] {
            if !(downscale..=MAX_SIDE).contains(&side) {
                return invalid(
                    name,
                    format!("{side} must be between {downscale} and {MAX_SIDE} pixels"),
                );
            }
        }
        if !(1..=MAX_BATCH_COUNT).contains(&self.n_iter) {
            return invalid(
                "n_iter",
                format!(
                    "the batch count must be between 1 and {MAX_BATCH_COUNT}, got {}",
                    self.n_iter
                ),
            );
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return invalid(
                "batch_size",
                format!(
                    "the batch size must be between 1 and {MAX_BATCH_SIZE}, got {}",
                    self.batch_size
                ),
            );
        }
        if self.sampler.steps == 0 {
            return invalid("steps", "steps must be at least 1".into());
        }
        if self.sampler.steps > MAX_STEPS {
            return invalid(
                "steps",
                format!(
                    "steps must be at most {MAX_STEPS}, got {}",
                    self.sampler.steps
                ),
            );
        }
        // 0 means "as many as the first pass" (A1111's hires steps slider).
        if self.hires.hr_second_pass_steps > MAX_STEPS {
            return invalid(
                "hr_second_pass_steps",
                format!(
                    "the Hires. fix step count must be at most {MAX_STEPS}, got {}",
                    self.hires.hr_second_pass_steps
                ),
            );
        }
        if self.clip_skip == 0 {
            return invalid("clip_skip", "clip skip must be at least 1".into());
        }
        for (name, value) in [
            ("cfg_scale", self.cfg_scale),
            ("subseed_strength", self.subseed_strength),
            ("initial_noise_multiplier", self.initial_noise_multiplier),
            ("img2img_extra_noise", self.img2img_extra_noise),
            ("denoising_strength", self.sampler.denoising_strength),
            ("mask_alpha", self.mask_alpha),
            ("refiner_switch_at", self.refiner_switch_at),
            ("hr_scale", self.hires.hr_scale),
            ("token_merging_ratio", self.token_merging_ratio),
            (
                "token_merging_ratio_img2img",
                self.token_merging_ratio_img2img,
            ),
            ("token_merging_ratio_hr", self.token_merging_ratio_hr),
        ] {
            if !value.is_finite() {
                return invalid(name, format!("must be a finite number, got {value}"));
            }
        }
        for (name, ratio) in [
            ("token_merging_ratio", self.token_merging_ratio),
            (
                "token_merging_ratio_img2img",
                self.token_merging_ratio_img2img,
            ),
            ("token_merging_ratio_hr", self.token_merging_ratio_hr),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return invalid(
                    name,
                    format!("the token merging ratio must be between 0 and 1, got {ratio}"),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.subseed_strength) {
            return invalid(
                "subseed_strength",
                format!(
                    "the variation strength must be between 0 and 1, got {}",
                    self.subseed_strength
                ),
            );
        }
        let inpaint = &self.inpaint;
        if !(0.0..=1.0).contains(&inpaint.mask_weight) {
            return invalid(
                "inpainting_mask_weight",
                format!("must be between 0 and 1, got {}", inpaint.mask_weight),
            );
        }
        if inpaint.mask_blur_x > MAX_MASK_BLUR || inpaint.mask_blur_y > MAX_MASK_BLUR {
            return invalid(
                "mask_blur",
                format!("the mask blur must be at most {MAX_MASK_BLUR} pixels"),
            );
        }
        if !(0.0..=100.0).contains(&self.mask_alpha) {
            return invalid(
                "mask_alpha",
                format!("must be between 0 and 100, got {}", self.mask_alpha),
            );
        }
        if !(0.0..=1.0).contains(&self.refiner_switch_at) {
            return invalid(
                "refiner_switch_at",
                format!("must be between 0 and 1, got {}", self.refiner_switch_at),
            );
        }
        if let Some((w, h)) = self.seed_resize_from() {
            if w > MAX_SIDE || h > MAX_SIDE {
                return invalid(
                    "seed_resize_from_w",
                    format!("the seed resize size {w}x{h} is larger than {MAX_SIDE}"),
                );
            }
        }
        Ok(())
    }
}
