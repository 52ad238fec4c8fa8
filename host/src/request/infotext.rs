//! A request's infotext: written under every image in A1111's keys and order
//! (`modules/processing.py: create_infotext`) and read back to reproduce one
//! (`modules/infotext_utils.py: parse_generation_parameters`).
//!
//! Fields that A1111's infotext has no key for are written, when they differ from the default,
//! under their own API name (`mask_blur_x: 3`) and read back the same way, so a new request
//! field reaches the infotext without code here. The job's shape (`n_iter`, `batch_size`) is not
//! a property of one image and is not written.

use sdhost_plugin_api::{OptionValue, SamplerInfo};
use serde_json::{Map, Value};

use super::{GenerationRequest, InitLatentMode, RngChoice};
use crate::infotext::{py_float, Infotext};
use crate::prepare::inpaint::{InpaintSettings, MaskedContent};
use crate::prepare::resize::ResizeMode;
use crate::sampling::schedule::Schedule;

/// Infotext key for [`InitLatentMode::Mean`] (sdhost's own; A1111 ignores unknown keys).
pub const INIT_LATENT_KEY: &str = "Init latent";
/// Infotext key for a resize mode other than Just resize (sdhost's own).
pub const RESIZE_MODE_KEY: &str = "Resize mode";
/// Infotext key for colour correction when on (sdhost's own; A1111 keeps it as an option).
pub const COLOR_CORRECTION_KEY: &str = "Color correction";
/// Infotext key for tiled VAE encoding and decoding when on (sdhost's own).
pub const VAE_TILING_KEY: &str = "VAE tiling";

/// Request fields written under A1111's (or sdhost's named) keys by
/// [`GenerationRequest::infotext`]; every other field goes under its API name.
const KEYED_FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "steps",
    "sampler_name",
    "scheduler",
    "cfg_scale",
    "seed",
    "width",
    "height",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "denoising_strength",
    "inpainting_mask_weight",
    "clip_skip",
    "eta_noise_seed_delta",
    "token_merging_ratio",
    "token_merging_ratio_img2img",
    "token_merging_ratio_hr",
    "randn_source",
    "resize_mode",
    "init_latent",
    "inpainting_mask_invert",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_fill",
    "img2img_color_correction",
    "vae_tiling",
    "sd_vae",
    "refiner_checkpoint",
    "refiner_switch_at",
    "initial_noise_multiplier",
    "img2img_extra_noise",
    "always_discard_next_to_last_sigma",
    "sigma_min",
    "sigma_max",
    "rho",
    "sampler_options",
    "enable_hr",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
];

/// Fields that describe the job, not one image: never in an image's infotext.
pub const JOB_SHAPE_FIELDS: &[&str] = &["n_iter", "batch_size"];

/// A number as A1111's UI sends it: whole values without a decimal point (`7`, `0.75`).
pub fn ui_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        py_float(value)
    }
}

/// The infotext keys of sampler options (A1111's names where it has one).
fn option_key(option: &str, info: &SamplerInfo) -> String {
    let timesteps = info.input == sdhost_plugin_api::ScheduleInput::Timesteps;
    match option {
        "eta" if timesteps => "Eta DDIM".into(),
        "eta" => "Eta".into(),
        "s_churn" => "Sigma churn".into(),
        "s_tmin" => "Sigma tmin".into(),
        "s_tmax" => "Sigma tmax".into(),
        "s_noise" => "Sigma noise".into(),
        other => format!("{} {other}", info.name),
    }
}

fn option_text(value: &OptionValue) -> String {
    match value {
        OptionValue::Number(n) => ui_number(*n),
        OptionValue::Text(t) => t.to_string(),
    }
}

/// The value an option has in a job: set, or the sampler's default.
pub fn option_value<'a>(
    options: &'a [(String, OptionValue)],
    info: &'a SamplerInfo,
    name: &str,
) -> Option<&'a OptionValue> {
    options
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .or_else(|| {
            info.options
                .iter()
                .find(|o| o.name.as_str() == name)
                .map(|o| &o.default)
        })
}

/// What one image's infotext says besides the job parameters.
pub struct ImageFacts<'a> {
    /// The image's seed.
    pub seed: u64,
    /// The image's variation seed.
    pub subseed: u64,
    /// The sampler that ran.
    pub sampler: &'a SamplerInfo,
    /// The schedule label (`Schedule type`).
    pub schedule_label: &'a str,
    /// Whether the penultimate σ was dropped by the user's option.
    pub discard_penultimate: bool,
    /// Model name and short hash.
    pub model: (&'a str, &'a str),
    /// The external VAE's file name and short hash (none: the checkpoint's own VAE).
    pub vae: Option<(&'a str, &'a str)>,
    /// `TI hashes` of the embeddings the prompts used.
    pub ti_hashes: Option<String>,
    /// `Lora hashes` of the LoRAs the job ran with.
    pub lora_hashes: Option<String>,
    /// The refiner's short title (`name [hash]`), when it took over.
    pub refiner: Option<String>,
    /// The job had a mask.
    pub inpainting: bool,
    /// The model took inpainting conditioning (9-channel UNet).
    pub inpainting_conditioning: bool,
    /// A txt2img image: `Some`, with its Hires. fix facts when the job had one.
    pub txt2img: Option<Option<HiresFacts>>,
}

/// What a Hires. fix image's infotext says besides the request's hires fields.
pub struct HiresFacts {
    /// `Hires schedule type`: the hires pass's schedule when it is another than the first
    /// pass's (A1111 writes it in `KDiffusionSampler.get_sigmas`).
    pub schedule_label: Option<String>,
}

impl GenerationRequest {
    /// One image's infotext, keys in A1111's insertion order (ordered by [`Infotext::with_params`]).
    pub fn infotext(&self, facts: &ImageFacts<'_>) -> Infotext {
        let info = facts.sampler;
        let varied = self.subseed_strength != 0.0;
        let eta_used = option_value(&self.sampler.options, info, "eta")
            .is_some_and(|v| !matches!(v, OptionValue::Number(n) if *n == 0.0));
        let ensd = self.eta_noise_seed_delta != 0 && info.uses_ensd && eta_used;
        let size = |(w, h): (u32, u32)| format!("{w}x{h}");
        let schedule = &self.sampler.schedule_options;
        let inpaint = &self.inpaint;
        let masked = facts.inpainting;
        let txt2img = facts.txt2img.is_some();
        let hires = facts.txt2img.as_ref().and_then(Option::as_ref);
        let mut values: Vec<(&str, Option<String>)> = vec![
            ("Steps", Some(self.sampler.steps.to_string())),
            ("Sampler", Some(info.name.to_string())),
            ("Schedule type", Some(facts.schedule_label.to_string())),
            ("CFG scale", Some(ui_number(self.cfg_scale))),
            ("Seed", Some(facts.seed.to_string())),
            ("Size", Some(size((self.width, self.height)))),
            ("Model hash", Some(facts.model.1.to_string())),
            ("Model", Some(facts.model.0.to_string())),
            ("VAE hash", facts.vae.map(|(_, hash)| hash.to_string())),
            ("VAE", facts.vae.map(|(name, _)| name.to_string())),
            ("Variation seed", varied.then(|| facts.subseed.to_string())),
            (
                "Variation seed strength",
                varied.then(|| ui_number(self.subseed_strength)),
            ),
            ("Seed resize from", self.seed_resize_from().map(size)),
            // txt2img writes it only for Hires. fix (A1111 `StableDiffusionProcessingTxt2Img.init`).
            (
                "Denoising strength",
                (!txt2img || hires.is_some()).then(|| ui_number(self.sampler.denoising_strength)),
            ),
            (
                "Conditional mask weight",
                facts
                    .inpainting_conditioning
                    .then(|| py_float(inpaint.mask_weight)),
            ),
            (
                "Clip skip",
                (self.clip_skip > 1).then(|| self.clip_skip.to_string()),
            ),
            ("ENSD", ensd.then(|| self.eta_noise_seed_delta.to_string())),
            // A1111 writes the ratios it applied (`get_token_merging_ratio`), when non-zero;
            // the hires one only for Hires. fix jobs.
            (
                "Token merging ratio",
                Some(self.token_merging_ratio(txt2img))
                    .filter(|r| *r != 0.0)
                    .map(py_float),
            ),
            (
                "Token merging ratio hr",
                Some(self.token_merging_ratio_hr())
                    .filter(|r| hires.is_some() && *r != 0.0)
                    .map(py_float),
            ),
            ("RNG", self.randn_source.infotext_value().map(String::from)),
            (
                RESIZE_MODE_KEY,
                (self.resize_mode != ResizeMode::JustResize)
                    .then(|| self.resize_mode.label().to_string()),
            ),
            (
                INIT_LATENT_KEY,
                (self.init_latent == InitLatentMode::Mean).then(|| "mean".to_string()),
            ),
            (
                "Mask mode",
                (masked && inpaint.invert).then(|| "Inpaint not masked".to_string()),
            ),
            (
                "Mask blur",
                (masked && inpaint.mask_blur_x == inpaint.mask_blur_y && inpaint.mask_blur_x > 0)
                    .then(|| inpaint.mask_blur_x.to_string()),
            ),
            (
                "Inpaint area",
                (masked && inpaint.only_masked).then(|| "Only masked".to_string()),
            ),
            (
                "Masked area padding",
                (masked && inpaint.only_masked).then(|| inpaint.only_masked_padding.to_string()),
            ),
            (
                "Masked content",
                (masked && inpaint.masked_content != MaskedContent::Original)
                    .then(|| inpaint.masked_content.label().to_string()),
            ),
            (
                COLOR_CORRECTION_KEY,
                self.img2img_color_correction.then(|| "True".to_string()),
            ),
            (VAE_TILING_KEY, self.vae_tiling.then(|| "True".to_string())),
        ];
        if let Some(hires) = hires {
            values.extend(self.hires_values(hires));
        }
        values.extend([
            // A1111 adds it when the networks are activated, just before `TI hashes`.
            ("Lora hashes", facts.lora_hashes.clone()),
            ("TI hashes", facts.ti_hashes.clone()),
            // A1111 adds them when the refiner takes over, during sampling.
            ("Refiner", facts.refiner.clone()),
            (
                "Refiner switch at",
                facts
                    .refiner
                    .as_ref()
                    .map(|_| py_float(self.refiner_switch_at)),
            ),
            // An img2img field: txt2img has no initial noise multiplier.
            (
                "Noise multiplier",
                (!txt2img && self.initial_noise_multiplier != 1.0)
                    .then(|| ui_number(self.initial_noise_multiplier)),
            ),
            // Set where img2img sampling (Hires. fix's second pass included) adds it.
            (
                "Extra noise",
                ((!txt2img || hires.is_some()) && self.img2img_extra_noise > 0.0)
                    .then(|| ui_number(self.img2img_extra_noise)),
            ),
            (
                "Discard penultimate sigma",
                (facts.discard_penultimate && !info.discard_penultimate_sigma)
                    .then(|| "True".to_string()),
            ),
            ("Schedule min sigma", schedule.sigma_min.map(ui_number)),
            ("Schedule max sigma", schedule.sigma_max.map(ui_number)),
            ("Schedule rho", schedule.rho.map(ui_number)),
        ]);
        let mut option_values: Vec<(String, String)> = Vec::new();
        for (name, value) in &self.sampler.options {
            let default = info.options.iter().find(|o| o.name.as_str() == name);
            if default.is_some_and(|d| &d.default == value) {
                continue;
            }
            option_values.push((option_key(name, info), option_text(value)));
        }
        values.extend(
            option_values
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.clone()))),
        );
        let by_name = self.fields_by_api_name(inpaint, masked);
        values.extend(by_name.iter().map(|(k, v)| (k.as_str(), Some(v.clone()))));
        values.push((
            "Version",
            Some(format!("sdhost-{}", env!("CARGO_PKG_VERSION"))),
        ));
        Infotext::with_params(&self.prompt, &self.negative_prompt, values)
    }

    /// The Hires. fix keys in A1111's insertion order (`StableDiffusionProcessingTxt2Img.init`,
    /// `calculate_target_resolution`).
    fn hires_values(&self, facts: &HiresFacts) -> Vec<(&'static str, Option<String>)> {
        let hires = &self.hires;
        let (hr_prompt, hr_negative) = hires.prompts(&self.prompt, &self.negative_prompt);
        let resized = hires.hr_resize_x != 0 || hires.hr_resize_y != 0;
        vec![
            (
                "Hires sampler",
                hires
                    .sampler()
                    .filter(|name| *name != self.sampler.sampler)
                    .map(String::from),
            ),
            (
                "Hires prompt",
                (hr_prompt != self.prompt).then(|| hr_prompt.to_string()),
            ),
            (
                "Hires negative prompt",
                (hr_negative != self.negative_prompt).then(|| hr_negative.to_string()),
            ),
            ("Hires schedule type", facts.schedule_label.clone()),
            (
                "Hires upscale",
                (!resized).then(|| ui_number(hires.hr_scale)),
            ),
            (
                "Hires resize",
                resized.then(|| format!("{}x{}", hires.hr_resize_x, hires.hr_resize_y)),
            ),
            (
                "Hires steps",
                (hires.hr_second_pass_steps > 0).then(|| hires.hr_second_pass_steps.to_string()),
            ),
            ("Hires upscaler", hires.hr_upscaler.clone()),
        ]
    }

    /// Reads the Hires. fix keys; `enable_hr` as A1111's paste sets its checkbox (`Denoising
    /// strength` with `Hires upscale`, `Hires upscaler` or `Hires resize`).
    fn apply_hires_infotext(&mut self, infotext: &Infotext, problems: &mut Vec<String>) {
        let hires = &mut self.hires;
        let get = |key: &str| infotext.get(key).map(str::to_string);
        hires.enable_hr = infotext.get("Denoising strength").is_some()
            && ["Hires upscale", "Hires upscaler", "Hires resize"]
                .iter()
                .any(|key| infotext.get(key).is_some());
        hires.hr_scale = match infotext
            .get("Hires upscale")
            .map(|v| v.trim().parse::<f64>())
        {
            None => 2.0,
            Some(Ok(scale)) => scale,
            Some(Err(_)) => {
                problems.push("Hires upscale: not a number".into());
                2.0
            }
        };
        (hires.hr_resize_x, hires.hr_resize_y) = infotext.size("Hires resize").unwrap_or((0, 0));
        hires.hr_second_pass_steps = infotext
            .get("Hires steps")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        hires.hr_upscaler = get("Hires upscaler");
        hires.hr_sampler_name = get("Hires sampler");
        hires.hr_scheduler = get("Hires schedule type");
        hires.hr_prompt = get("Hires prompt").unwrap_or_default();
        hires.hr_negative_prompt = get("Hires negative prompt").unwrap_or_default();
    }

    /// Takes over what an infotext says (A1111's "PNG Info → Send to img2img"): prompts, steps,
    /// sampler, schedule, CFG, seeds, size, strength, clip skip, RNG and the sdhost keys; keys
    /// that are absent get A1111's defaults for pasted infotext. Returns what it could not use.
    pub fn apply_infotext(&mut self, infotext: &Infotext) -> Vec<String> {
        let mut problems = Vec::new();
        let mut number = |key: &str| -> Option<f64> {
            let text = infotext.get(key)?;
            match text.trim().parse::<f64>() {
                Ok(value) => Some(value),
                Err(_) => {
                    problems.push(format!("{key}: \"{text}\" is not a number"));
                    None
                }
            }
        };
        self.prompt = infotext.prompt.clone();
        self.negative_prompt = infotext.negative_prompt.clone();
        if let Some(steps) = number("Steps") {
            self.sampler.steps = steps as usize;
        }
        if let Some(cfg) = number("CFG scale") {
            self.cfg_scale = cfg;
        }
        if let Some(seed) = number("Seed") {
            self.seed = seed as i64;
        }
        if let Some(strength) = number("Denoising strength") {
            self.sampler.denoising_strength = strength;
        }
        self.clip_skip = number("Clip skip").map_or(1, |c| c as usize);
        self.subseed_strength = number("Variation seed strength").unwrap_or(0.0);
        if let Some(subseed) = number("Variation seed") {
            self.subseed = subseed as i64;
        }
        self.eta_noise_seed_delta = number("ENSD").map_or(0, |e| e as i64);
        self.initial_noise_multiplier = number("Noise multiplier").unwrap_or(1.0);
        self.img2img_extra_noise = number("Extra noise").unwrap_or(0.0);
        // The ratio an image was made with, whichever option gave it.
        self.token_merging_ratio = number("Token merging ratio").unwrap_or(0.0);
        self.token_merging_ratio_img2img = 0.0;
        self.token_merging_ratio_hr = number("Token merging ratio hr").unwrap_or(0.0);
        self.sampler.schedule_options.sigma_min = number("Schedule min sigma");
        self.sampler.schedule_options.sigma_max = number("Schedule max sigma");
        self.sampler.schedule_options.rho = number("Schedule rho");
        let defaults = InpaintSettings::default();
        if let Some(blur) = number("Mask blur") {
            self.inpaint.mask_blur_x = blur as u32;
            self.inpaint.mask_blur_y = blur as u32;
        }
        self.inpaint.invert = infotext.get("Mask mode") == Some("Inpaint not masked");
        self.inpaint.only_masked = infotext.get("Inpaint area") == Some("Only masked");
        self.inpaint.only_masked_padding =
            number("Masked area padding").map_or(defaults.only_masked_padding, |p| p as u32);
        self.inpaint.mask_weight = number("Conditional mask weight").unwrap_or(1.0);
        if let Some((width, height)) = infotext.size("Size") {
            self.width = width;
            self.height = height;
        }
        let (w, h) = infotext
            .size("Seed resize from")
            .map_or((-1, -1), |(w, h)| (i64::from(w), i64::from(h)));
        (self.seed_resize_from_w, self.seed_resize_from_h) = (w, h);
        // A1111's option `sd_vae` has infotext key `VAE`; without one the request keeps its
        // choice, as pasting into A1111 leaves the option alone.
        if let Some(vae) = infotext.get("VAE") {
            self.sd_vae = vae.to_string();
        }
        // A1111 pastes `Refiner` into the refiner dropdown (a checkpoint title).
        self.refiner_checkpoint = infotext.get("Refiner").unwrap_or_default().to_string();
        if let Some(at) = number("Refiner switch at") {
            self.refiner_switch_at = at;
        }
        if let Some(sampler) = infotext.get("Sampler") {
            self.sampler.sampler = sampler.to_string();
        }
        self.sampler.schedule = match infotext.get("Schedule type") {
            None => Schedule::Automatic,
            Some(label) => Schedule::from_name(label).unwrap_or_else(|_| {
                problems.push(format!("Schedule type: unknown schedule \"{label}\""));
                Schedule::Automatic
            }),
        };
        self.sampler.schedule_options.discard_penultimate =
            infotext.get("Discard penultimate sigma") == Some("True");
        match RngChoice::from_infotext(infotext.get("RNG")) {
            Some(rng) => self.randn_source = rng,
            None => problems.push(format!(
                "RNG: unknown source \"{}\"",
                infotext.get("RNG").unwrap_or_default()
            )),
        }
        self.resize_mode = match infotext.get(RESIZE_MODE_KEY) {
            None => ResizeMode::JustResize,
            Some(label) => ResizeMode::parse(label).unwrap_or_else(|| {
                problems.push(format!("{RESIZE_MODE_KEY}: unknown mode \"{label}\""));
                ResizeMode::JustResize
            }),
        };
        self.inpaint.masked_content = match infotext.get("Masked content") {
            None => MaskedContent::Original,
            Some(label) => MaskedContent::parse(label).unwrap_or_else(|| {
                problems.push(format!("Masked content: unknown \"{label}\""));
                MaskedContent::Original
            }),
        };
        self.img2img_color_correction = infotext.get(COLOR_CORRECTION_KEY) == Some("True");
        self.vae_tiling = infotext.get(VAE_TILING_KEY) == Some("True");
        self.init_latent = match infotext.get(INIT_LATENT_KEY) {
            Some(v) if v.eq_ignore_ascii_case("mean") => InitLatentMode::Mean,
            _ => InitLatentMode::Sample,
        };
        self.apply_hires_infotext(infotext, &mut problems);
        self.apply_fields_by_api_name(infotext, &mut problems);
        problems
    }

    /// `name: value` pairs for the fields A1111's keys do not carry, where they differ from
    /// the default; mask settings only for jobs with a mask, and the mask blurs only when
    /// they differ from each other (else `Mask blur` has them).
    fn fields_by_api_name(&self, inpaint: &InpaintSettings, masked: bool) -> Vec<(String, String)> {
        let defaults = GenerationRequest::ui_defaults().to_object();
        let mask_fields = match serde_json::to_value(InpaintSettings::default()) {
            Ok(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let blurs_apart = inpaint.mask_blur_x != inpaint.mask_blur_y;
        self.to_object()
            .into_iter()
            .filter(|(name, value)| {
                let keyed = KEYED_FIELDS.contains(&name.as_str())
                    || JOB_SHAPE_FIELDS.contains(&name.as_str());
                let blur = matches!(name.as_str(), "mask_blur_x" | "mask_blur_y");
                let mask_only = mask_fields.contains(name) || name == "mask_alpha";
                !keyed
                    && (masked || !mask_only)
                    && (!blur || blurs_apart)
                    && defaults.get(name) != Some(value)
            })
            .map(|(name, value)| {
                let text = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (name, text)
            })
            .collect()
    }

    /// Reads the keys that are API field names (see [`Self::fields_by_api_name`]).
    fn apply_fields_by_api_name(&mut self, infotext: &Infotext, problems: &mut Vec<String>) {
        let mut changes = Map::new();
        for field in GenerationRequest::fields() {
            let name = field.name.as_str();
            if KEYED_FIELDS.contains(&name) || JOB_SHAPE_FIELDS.contains(&name) {
                continue;
            }
            if let Some(text) = infotext.get(name) {
                let value = match (&field.default, serde_json::from_str::<Value>(text)) {
                    (Value::String(_), _) | (_, Err(_)) => Value::String(text.to_string()),
                    (_, Ok(value)) => value,
                };
                changes.insert(name.to_string(), value);
            }
        }
        for (name, value) in changes {
            let single = Map::from_iter([(name.clone(), value)]);
            match self.overlay(&single) {
                Ok(updated) => *self = updated,
                Err(error) => problems.push(error.to_string()),
            }
        }
    }

    /// Reads the sampler options an infotext sets for `info` (after [`Self::apply_infotext`]
    /// named the sampler): `Eta`, `Sigma churn` … and sdhost's `<Sampler> <option>` keys.
    pub fn apply_sampler_options(&mut self, infotext: &Infotext, info: &SamplerInfo) {
        let mut options = Vec::new();
        for declared in info.options.iter() {
            let key = option_key(declared.name.as_str(), info);
            let Some(text) = infotext.get(&key) else {
                continue;
            };
            let value = match &declared.default {
                OptionValue::Number(_) => match text.trim().parse::<f64>() {
                    Ok(n) => OptionValue::Number(n),
                    Err(_) => continue,
                },
                OptionValue::Text(_) => OptionValue::Text(text.into()),
            };
            options.push((declared.name.to_string(), value));
        }
        self.sampler.options = options;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_infotext_becomes_job_parameters() {
        let infotext = Infotext::parse(crate::infotext::tests::A1111_SAMPLE);
        let mut params = GenerationRequest::default();
        let problems = params.apply_infotext(&infotext);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(params.prompt.starts_with("masterpiece"));
        assert_eq!(
            params.negative_prompt,
            "(worst quality:1.4), lowres\nEasyNegative"
        );
        assert_eq!(params.sampler.steps, 28);
        assert_eq!(params.sampler.sampler, "DPM++ 2M");
        assert_eq!(params.sampler.schedule, Schedule::Karras);
        assert_eq!(params.cfg_scale, 7.0);
        assert_eq!(params.seed, 3_450_128_396);
        assert_eq!((params.width, params.height), (512, 768));
        assert_eq!(params.sampler.denoising_strength, 0.45);
        assert_eq!(params.clip_skip, 2);
        // No RNG key: A1111's default, the GPU generator.
        assert_eq!(params.randn_source, RngChoice::Gpu);
        assert_eq!(params.resize_mode, ResizeMode::JustResize);
        assert_eq!(params.sd_vae, "vae-ft-mse-840000-ema-pruned.safetensors");

        let odd = Infotext::parse(
            "x\nSteps: many, Sampler: Euler, Seed: 1, RNG: quantum, Schedule type: Wobbly",
        );
        let problems = GenerationRequest::default().apply_infotext(&odd);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn ui_numbers_drop_a_whole_number_point() {
        assert_eq!(ui_number(7.0), "7");
        assert_eq!(ui_number(6.5), "6.5");
        assert_eq!(ui_number(0.75), "0.75");
        assert_eq!(ui_number(1.0), "1");
    }
}
