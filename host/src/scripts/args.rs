//! A1111's positional `script_args` of the scripts other than the X/Y/Z plot, read as its UI
//! components send them (the order of each script's `ui()` return), a missing or null argument
//! taking the UI's default. The info boxes (`gr.HTML`) take a place and are ignored.

use serde_json::Value;

use super::loopback::LoopbackArgs;
use super::outpainting::Directions;
use super::outpainting_mk2::Mk2Args;
use super::poor_mans_outpainting::PoorMansArgs;
use super::prompt_matrix::PromptMatrixArgs;
use super::prompts_from_file::{PromptPosition, PromptsFromFileArgs};
use super::sd_upscale::{SdUpscaleArgs, UpscalerChoice};
use super::ScriptError;
use crate::prepare::inpaint::MaskedContent;

/// One script's arguments with its title for errors.
struct Positional<'a> {
    script: &'static str,
    args: &'a [Value],
}

impl Positional<'_> {
    fn error(&self, message: String) -> ScriptError {
        ScriptError::InvalidArgs {
            script: self.script,
            message,
        }
    }

    fn get(&self, i: usize) -> Option<&Value> {
        self.args.get(i).filter(|v| !v.is_null())
    }

    fn bool(&self, i: usize, default: bool) -> Result<bool, ScriptError> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) || n.as_f64() == Some(1.0) => {
                Ok(n.as_f64() == Some(1.0))
            }
            Some(other) => {
                Err(self.error(format!("script_args[{i}]: {other} is not true or false")))
            }
        }
    }

    fn float(&self, i: usize, default: f64) -> Result<f64, ScriptError> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| self.error(format!("script_args[{i}]: {n}"))),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| self.error(format!("script_args[{i}]: {s:?} is not a number"))),
            Some(other) => Err(self.error(format!("script_args[{i}]: {other} is not a number"))),
        }
    }

    fn int(&self, i: usize, default: i64) -> Result<i64, ScriptError> {
        let v = self.float(i, default as f64)?;
        // Gradio sliders with integer steps send whole numbers; A1111 uses them as given.
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(self.error(format!("script_args[{i}]: {v} is not a whole number")));
        }
        Ok(v as i64)
    }

    fn pixels(&self, i: usize, default: u32, max: u32) -> Result<u32, ScriptError> {
        let v = self.int(i, i64::from(default))?;
        u32::try_from(v)
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| self.error(format!("script_args[{i}]: {v} is outside 0–{max}")))
    }

    fn text(&self, i: usize, default: &str) -> Result<String, ScriptError> {
        match self.get(i) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.error(format!("script_args[{i}]: {other} is not text"))),
        }
    }

    fn directions(&self, i: usize) -> Result<Directions, ScriptError> {
        match self.get(i) {
            None => Ok(Directions::ALL),
            Some(Value::Array(items)) => {
                let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                if names.len() != items.len() {
                    return Err(self.error(format!("script_args[{i}]: directions must be text")));
                }
                Directions::from_names(&names).map_err(|e| self.error(e.to_string()))
            }
            Some(other) => Err(self.error(format!(
                "script_args[{i}]: {other} is not a list of directions"
            ))),
        }
    }
}

/// `[put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]`.
pub fn prompt_matrix(args: &[Value]) -> Result<PromptMatrixArgs, ScriptError> {
    let a = Positional {
        script: super::prompt_matrix::TITLE,
        args,
    };
    PromptMatrixArgs::new(
        a.bool(0, false)?,
        a.bool(1, false)?,
        &a.text(2, "positive")?,
        &a.text(3, "comma")?,
        a.pixels(4, 0, 500)?,
    )
    .map_err(|e| a.error(e.to_string()))
}

/// `[checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]`.
pub fn prompts_from_file(args: &[Value]) -> Result<PromptsFromFileArgs, ScriptError> {
    let a = Positional {
        script: super::prompts_from_file::TITLE,
        args,
    };
    let prompt_position = match a.text(2, "start")?.as_str() {
        "start" => PromptPosition::Start,
        "end" => PromptPosition::End,
        other => {
            return Err(a.error(format!(
                "script_args[2]: prompt position {other:?} is not \"start\" or \"end\""
            )))
        }
    };
    Ok(PromptsFromFileArgs {
        iterate_seed: a.bool(0, false)?,
        same_random_seed: a.bool(1, false)?,
        prompt_position,
        text: a.text(3, "")?,
    })
}

/// `[loops, final_denoising_strength, denoising_curve, append_interrogation]`.
pub fn loopback(args: &[Value]) -> Result<LoopbackArgs, ScriptError> {
    let a = Positional {
        script: super::loopback::TITLE,
        args,
    };
    LoopbackArgs::new(
        a.int(0, 4)?,
        a.float(1, 0.5)?,
        &a.text(2, "Linear")?,
        &a.text(3, "None")?,
    )
    .map_err(|e| a.error(e.to_string()))
}

/// `[info, overlap, upscaler_index, scale_factor]`; the upscaler by index or name.
pub fn sd_upscale(args: &[Value]) -> Result<SdUpscaleArgs, ScriptError> {
    let a = Positional {
        script: super::sd_upscale::TITLE,
        args,
    };
    let upscaler =
        match a.get(2) {
            None | Some(Value::Null) => UpscalerChoice::Index(0),
            Some(Value::String(name)) => UpscalerChoice::Name(name.clone()),
            Some(_) => {
                let i = a.int(2, 0)?;
                UpscalerChoice::Index(usize::try_from(i).map_err(|_| {
                    a.error(format!("script_args[2]: upscaler index {i} is negative"))
                })?)
            }
        };
    let scale_factor = a.float(3, 2.0)?;
    if !(scale_factor.is_finite() && scale_factor > 0.0 && scale_factor <= 16.0) {
        return Err(a.error(format!(
            "script_args[3]: scale factor {scale_factor} is outside 0–16"
        )));
    }
    Ok(SdUpscaleArgs {
        overlap: a.pixels(1, 64, 2048)?,
        upscaler,
        scale_factor,
    })
}

/// `[info, pixels, mask_blur, direction, noise_q, color_variation]`.
pub fn outpainting_mk2(args: &[Value]) -> Result<Mk2Args, ScriptError> {
    let a = Positional {
        script: super::outpainting_mk2::TITLE,
        args,
    };
    Ok(Mk2Args {
        pixels: a.pixels(1, 128, 2048)?,
        mask_blur: a.pixels(2, 8, 64)?,
        directions: a.directions(3)?,
        noise_q: a.float(4, 1.0)?,
        color_variation: a.float(5, 0.05)?,
    })
}

/// `[pixels, mask_blur, inpainting_fill, direction]`, masked content as an index (A1111's
/// radio has `type="index"`) or a name.
pub fn poor_mans(args: &[Value]) -> Result<PoorMansArgs, ScriptError> {
    let a = Positional {
        script: super::poor_mans_outpainting::TITLE,
        args,
    };
    let masked_content = match a.get(2) {
        None => MaskedContent::Fill,
        Some(Value::String(name)) => MaskedContent::parse(name)
            .ok_or_else(|| a.error(format!("script_args[2]: no masked content {name:?}")))?,
        Some(_) => {
            let i = a.int(2, 0)?;
            MaskedContent::parse(&i.to_string())
                .ok_or_else(|| a.error(format!("script_args[2]: no masked content {i}")))?
        }
    };
    Ok(PoorMansArgs {
        pixels: a.pixels(0, 128, 2048)?,
        mask_blur: a.pixels(1, 4, 64)?,
        masked_content,
        directions: a.directions(3)?,
    })
}
