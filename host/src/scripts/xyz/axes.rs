//! The X/Y/Z plot's axis table (`scripts/xyz_grid.py: axis_options`): every axis A1111 v1.10.1
//! lists, in its order (the API's `x_type` is an index into the tab's list), with the value
//! type, the cost that orders the loops, how its legend is written and what it changes in a
//! cell's job. Axes for what sdhost does not do (face restoration, styles …)
//! are listed so that indices match, and refused with a clear error. The list includes "Skip
//! Early CFG" (added with A1111 1.10's `skip_early_cond` option) between "Schedule rho" and
//! "Beta schedule alpha".

use serde_json::{json, Map, Value};

use super::values::{AxisValue, ValueKind};
use crate::request::GenerationRequest;
use crate::scripts::Tab;

/// How a value is written in the legend (A1111's `format_value` functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legend {
    /// `format_value_add_label`: `"<label>: <value>"`.
    Labelled,
    /// `format_value`: the value alone.
    Value,
    /// `format_remove_path`: the value's file name.
    FileName,
    /// `format_nothing`: nothing.
    Nothing,
}

/// What an axis changes in a cell's job (A1111's `apply` functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing (the "Nothing" axis).
    Nothing,
    /// A request field (A1111 API name), set to the value.
    Field(&'static str),
    /// A sampler option, for samplers that take it (A1111 passes `p.<field>` only to sampler
    /// functions with that parameter).
    SamplerOption(&'static str),
    /// Prompt S/R: the first value replaced by this one in both prompts.
    PromptReplace,
    /// Prompt order: the listed tokens reordered in the prompt.
    PromptOrder,
    /// The checkpoint loaded for the cell.
    Checkpoint,
    /// `sd_vae`: Automatic, None or a VAE name.
    Vae,
    /// `refiner_checkpoint`: None (or empty) for none.
    Refiner,
    /// A boolean setting from "True"/"False".
    Bool(&'static str),
    /// UniPC's order, at most steps − 1.
    UniPcOrder,
    /// `WxH`.
    Size,
    /// Something sdhost does not do.
    Unsupported(&'static str),
}

/// One axis of A1111's dropdown.
#[derive(Debug, Clone, Copy)]
pub struct Axis {
    /// A1111's label.
    pub label: &'static str,
    /// Value type.
    pub kind: ValueKind,
    /// Tab it exists on (None: both).
    pub tab: Option<Tab>,
    /// Loop cost: the costliest axis is the outermost loop.
    pub cost: f64,
    /// Whether A1111 gives it fixed choices (its values then come from the dropdown list
    /// unless "Use text inputs instead of dropdowns" is on).
    pub choices: bool,
    /// Legend format.
    pub legend: Legend,
    /// What it changes.
    pub effect: Effect,
}

const fn axis(label: &'static str, kind: ValueKind, effect: Effect) -> Axis {
    Axis {
        label,
        kind,
        tab: None,
        cost: 0.0,
        choices: false,
        legend: Legend::Labelled,
        effect,
    }
}

impl Axis {
    const fn on(mut self, tab: Tab) -> Self {
        self.tab = Some(tab);
        self
    }
    const fn cost(mut self, cost: f64) -> Self {
        self.cost = cost;
        self
    }
    const fn choices(mut self) -> Self {
        self.choices = true;
        self
    }
    const fn legend(mut self, legend: Legend) -> Self {
        self.legend = legend;
        self
    }
}

use Effect::*;
use ValueKind::{Float, Int, Permutations, Str};

/// A1111 v1.10.1's `axis_options`, in order.
pub const AXES: &[Axis] = &[
    axis("Nothing", Str, Nothing).legend(Legend::Nothing),
    axis("Seed", Int, Field("seed")),
    axis("Var. seed", Int, Field("subseed")),
    axis("Var. strength", Float, Field("subseed_strength")),
    axis("Steps", Int, Field("steps")),
    axis("Hires steps", Int, Field("hr_second_pass_steps")).on(Tab::Txt2img),
    axis("CFG Scale", Float, Field("cfg_scale")),
    axis(
        "Image CFG Scale",
        Float,
        Unsupported("instruct-pix2pix models"),
    )
    .on(Tab::Img2img),
    axis("Prompt S/R", Str, PromptReplace).legend(Legend::Value),
    axis("Prompt order", Permutations, PromptOrder).legend(Legend::Value),
    axis("Sampler", Str, Field("sampler_name"))
        .on(Tab::Txt2img)
        .choices()
        .legend(Legend::Value),
    axis("Hires sampler", Str, Field("hr_sampler_name"))
        .on(Tab::Txt2img)
        .choices(),
    axis("Sampler", Str, Field("sampler_name"))
        .on(Tab::Img2img)
        .choices()
        .legend(Legend::Value),
    axis("Checkpoint name", Str, Checkpoint)
        .cost(1.0)
        .choices()
        .legend(Legend::FileName),
    axis(
        "Negative Guidance minimum sigma",
        Float,
        Unsupported("skipping the negative prompt (s_min_uncond)"),
    ),
    axis("Sigma Churn", Float, SamplerOption("s_churn")),
    axis("Sigma min", Float, SamplerOption("s_tmin")),
    axis("Sigma max", Float, SamplerOption("s_tmax")),
    axis("Sigma noise", Float, SamplerOption("s_noise")),
    axis("Schedule type", Str, Field("scheduler")).choices(),
    axis("Schedule min sigma", Float, Field("sigma_min")),
    axis("Schedule max sigma", Float, Field("sigma_max")),
    axis("Schedule rho", Float, Field("rho")),
    axis(
        "Skip Early CFG",
        Float,
        Unsupported("skipping CFG on early steps"),
    ),
    axis("Beta schedule alpha", Float, Field("beta_dist_alpha")),
    axis("Beta schedule beta", Float, Field("beta_dist_beta")),
    axis("Eta", Float, SamplerOption("eta")),
    axis("Clip skip", Int, Field("clip_skip")),
    axis("Denoising", Float, Field("denoising_strength")),
    axis(
        "Initial noise multiplier",
        Float,
        Field("initial_noise_multiplier"),
    ),
    axis("Extra noise", Float, Field("img2img_extra_noise")),
    axis("Hires upscaler", Str, Field("hr_upscaler"))
        .on(Tab::Txt2img)
        .choices(),
    axis(
        "Cond. Image Mask Weight",
        Float,
        Field("inpainting_mask_weight"),
    )
    .on(Tab::Img2img),
    axis("VAE", Str, Vae).cost(0.7).choices(),
    axis("Styles", Str, Unsupported("prompt styles")).choices(),
    axis("UniPC Order", Int, UniPcOrder).cost(0.5),
    axis("Face restore", Str, Unsupported("face restoration")).legend(Legend::Value),
    axis("Token merging ratio", Float, Field("token_merging_ratio")),
    axis(
        "Token merging ratio high-res",
        Float,
        Field("token_merging_ratio_hr"),
    ),
    axis(
        "Always discard next-to-last sigma",
        Str,
        Bool("always_discard_next_to_last_sigma"),
    )
    .choices(),
    axis(
        "SGM noise multiplier",
        Str,
        Unsupported("the SGM noise multiplier"),
    )
    .choices(),
    axis("Refiner checkpoint", Str, Refiner)
        .cost(1.0)
        .choices()
        .legend(Legend::FileName),
    axis("Refiner switch at", Float, Field("refiner_switch_at")),
    axis("RNG source", Str, Field("randn_source")).choices(),
    axis("FP8 mode", Str, Unsupported("FP8 weights"))
        .cost(0.9)
        .choices(),
    axis("Size", Str, Size),
];

/// The axes of `tab`'s dropdown, in order (A1111's `current_axis_options`).
pub fn tab_axes(tab: Tab) -> Vec<&'static Axis> {
    AXES.iter()
        .filter(|a| a.tab.is_none() || a.tab == Some(tab))
        .collect()
}

/// The axis of `tab` named `label` (any case).
pub fn find(tab: Tab, label: &str) -> Option<&'static Axis> {
    let wanted = label.trim();
    tab_axes(tab)
        .into_iter()
        .find(|a| a.label.eq_ignore_ascii_case(wanted))
}

impl Axis {
    /// The legend text of `value` (A1111's `format_value` of the axis).
    pub fn legend_text(&self, value: &AxisValue) -> String {
        match self.legend {
            Legend::Nothing => String::new(),
            Legend::Labelled => format!("{}: {}", self.label, self.value_text(value)),
            Legend::Value | Legend::FileName => self.value_text(value),
        }
    }

    /// The legend's text of `value` without the `<label>: ` that labelled legends put first:
    /// how clients are told a cell's value.
    pub fn value_text(&self, value: &AxisValue) -> String {
        let text = value.display();
        if self.legend != Legend::FileName {
            return text;
        }
        std::path::Path::new(&text)
            .file_name()
            .map_or(text.clone(), |n| n.to_string_lossy().into_owned())
    }

    /// Whether it is a seed axis (random seeds for -1, `Fixed … Values` in the infotext).
    pub fn is_seed(&self) -> bool {
        matches!(self.label, "Seed" | "Var. seed")
    }
}

/// A cell's job being made: the request with the axes applied so far, the checkpoint, and
/// the sampler options waiting for the cell's final sampler.
#[derive(Debug, Clone)]
pub struct CellDraft {
    /// The request.
    pub params: GenerationRequest,
    /// Checkpoint to load.
    pub checkpoint: Option<String>,
    /// Sampler options set by axes: (option, value).
    pub options: Vec<(&'static str, f64)>,
}

/// Why a value cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ApplyError(pub String);

fn value_json(value: &AxisValue) -> Value {
    match value {
        AxisValue::Int(i) => json!(i),
        AxisValue::Float(f) => json!(f),
        AxisValue::Str(s) => json!(s),
        AxisValue::Order(tokens) => json!(tokens),
    }
}

fn set_field(draft: &mut CellDraft, field: &str, value: Value) -> Result<(), ApplyError> {
    let mut changes = Map::new();
    changes.insert(field.to_string(), value);
    draft.params = draft
        .params
        .overlay(&changes)
        .map_err(|e| ApplyError(e.to_string()))?;
    Ok(())
}

impl Axis {
    /// Applies `value` (one of `all`, the axis's values) to a cell (A1111's `apply(p, x, xs)`).
    pub fn apply(
        &self,
        draft: &mut CellDraft,
        value: &AxisValue,
        all: &[AxisValue],
    ) -> Result<(), ApplyError> {
        let text = value.display();
        match self.effect {
            Nothing => {}
            Field(field) => set_field(draft, field, value_json(value))?,
            SamplerOption(option) => {
                let number = match value {
                    AxisValue::Float(f) => *f,
                    AxisValue::Int(i) => *i as f64,
                    _ => return Err(ApplyError(format!("{text} is not a number"))),
                };
                draft.options.retain(|(name, _)| *name != option);
                draft.options.push((option, number));
            }
            PromptReplace => {
                let (AxisValue::Str(search), AxisValue::Str(replace)) = (&all[0], value) else {
                    return Err(ApplyError("Prompt S/R takes text".into()));
                };
                let params = &mut draft.params;
                if !params.prompt.contains(search.as_str())
                    && !params.negative_prompt.contains(search.as_str())
                {
                    return Err(ApplyError(format!(
                        "Prompt S/R did not find {search} in prompt or negative prompt."
                    )));
                }
                params.prompt = params.prompt.replace(search.as_str(), replace);
                params.negative_prompt = params.negative_prompt.replace(search.as_str(), replace);
            }
            PromptOrder => {
                let AxisValue::Order(tokens) = value else {
                    return Err(ApplyError("Prompt order takes tokens".into()));
                };
                draft.params.prompt = reorder(&draft.params.prompt, tokens)?;
            }
            Checkpoint => draft.checkpoint = Some(text),
            Vae => {
                let choice = match text.trim().to_lowercase().as_str() {
                    "auto" | "automatic" => crate::sd_vae::AUTOMATIC.to_string(),
                    "none" => "None".to_string(),
                    _ => text.trim().to_string(),
                };
                draft.params.sd_vae = choice;
            }
            Refiner => {
                draft.params.refiner_checkpoint = if is_none(&text) { String::new() } else { text };
            }
            Bool(field) => set_field(draft, field, json!(text.to_lowercase() == "true"))?,
            UniPcOrder => {
                let AxisValue::Int(order) = value else {
                    return Err(ApplyError(format!("{text} is not an integer")));
                };
                let steps = draft.params.sampler.steps as i64;
                draft.options.retain(|(name, _)| *name != "order");
                draft
                    .options
                    .push(("order", (*order).min(steps - 1) as f64));
            }
            Size => {
                let (width, height) = text
                    .split_once('x')
                    .and_then(|(w, h)| Some((super::values::py_int(w)?, super::values::py_int(h)?)))
                    .ok_or_else(|| ApplyError(format!("Invalid size in XYZ plot: {text}")))?;
                set_field(draft, "width", json!(width))?;
                set_field(draft, "height", json!(height))?;
            }
            Unsupported(what) => {
                return Err(ApplyError(format!(
                    "the axis \"{}\" needs {what}, which sdhost does not do",
                    self.label
                )))
            }
        }
        Ok(())
    }
}

/// A refiner value meaning none (A1111 `confirm_checkpoints_or_none`).
pub fn is_none(text: &str) -> bool {
    matches!(text, "" | "None" | "none")
}

/// A1111's `apply_order`: the tokens are taken out of the prompt in the order they appear and
/// put back, in those places, in the order `tokens` lists them. A token missing from the
/// prompt is an error (A1111 would cut the prompt at a wrong place).
fn reorder(prompt: &str, tokens: &[String]) -> Result<String, ApplyError> {
    let mut found = Vec::new();
    for token in tokens {
        let at = prompt
            .find(token.as_str())
            .ok_or_else(|| ApplyError(format!("Prompt order: \"{token}\" is not in the prompt")))?;
        found.push((at, token));
    }
    found.sort_by_key(|(at, _)| *at);
    let mut rest = prompt;
    let mut parts = Vec::new();
    for (_, token) in &found {
        let at = rest.find(token.as_str()).ok_or_else(|| {
            ApplyError(format!("Prompt order: \"{token}\" overlaps another token"))
        })?;
        parts.push(&rest[..at]);
        rest = &rest[at + token.len()..];
    }
    let mut out = String::new();
    for (part, token) in parts.iter().zip(tokens) {
        out.push_str(part);
        out.push_str(token);
    }
    Ok(out + rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_lists_have_a1111s_indices() {
        let img2img = tab_axes(Tab::Img2img);
        let txt2img = tab_axes(Tab::Txt2img);
        assert_eq!(img2img.len(), 42);
        assert_eq!(txt2img.len(), 43);
        assert_eq!(img2img[4].label, "Steps");
        assert_eq!(img2img[9].label, "Sampler");
        assert_eq!(img2img[25].label, "Denoising");
        assert_eq!(txt2img[5].label, "Hires steps");
        assert_eq!(txt2img[9].label, "Sampler");
        assert_eq!(txt2img[10].label, "Hires sampler");
        assert_eq!(find(Tab::Txt2img, "cfg scale").unwrap().label, "CFG Scale");
        assert!(find(Tab::Txt2img, "Cond. Image Mask Weight").is_none());
    }

    #[test]
    fn prompt_order_swaps_tokens_in_place() {
        let tokens = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            reorder("a cat, red, big", &tokens(&["big", "red"])).unwrap(),
            "a cat, big, red"
        );
        assert_eq!(
            reorder("x y z", &tokens(&["x", "y", "z"])).unwrap(),
            "x y z"
        );
        assert!(reorder("x y", &tokens(&["q"])).is_err());
    }

    #[test]
    fn legends() {
        let steps = find(Tab::Img2img, "Steps").unwrap();
        assert_eq!(steps.legend_text(&AxisValue::Int(10)), "Steps: 10");
        // A cell's value for clients: the legend without the label.
        assert_eq!(steps.value_text(&AxisValue::Int(10)), "10");
        let cfg = find(Tab::Img2img, "CFG Scale").unwrap();
        assert_eq!(cfg.legend_text(&AxisValue::Float(5.0)), "CFG Scale: 5.0");
        assert_eq!(cfg.value_text(&AxisValue::Float(5.0)), "5.0");
        let sampler = find(Tab::Img2img, "Sampler").unwrap();
        assert_eq!(
            sampler.legend_text(&AxisValue::Str("Euler".into())),
            "Euler"
        );
        let checkpoint = find(Tab::Img2img, "Checkpoint name").unwrap();
        assert_eq!(
            checkpoint.legend_text(&AxisValue::Str("sub/model.safetensors".into())),
            "model.safetensors"
        );
        assert_eq!(
            checkpoint.value_text(&AxisValue::Str("sub/model.safetensors".into())),
            "model.safetensors"
        );
    }
}
