//! A1111's "Interrogate" settings (`modules/shared_options.py`), one struct for every front end.

use serde::{Deserialize, Serialize};

/// The interrogation options under A1111's option keys, with A1111's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterrogateOptions {
    /// `interrogate_keep_models_in_memory`: keep BLIP, CLIP and DeepDanbooru on the device.
    pub interrogate_keep_models_in_memory: bool,
    /// `interrogate_return_ranks`: write `(tag:0.123)` with each match (CLIP and DeepBooru).
    pub interrogate_return_ranks: bool,
    /// `interrogate_clip_num_beams`: BLIP beam count (1 = greedy).
    pub interrogate_clip_num_beams: u32,
    /// `interrogate_clip_min_length`: BLIP's minimum length in tokens, the 4 prompt tokens included.
    pub interrogate_clip_min_length: u32,
    /// `interrogate_clip_max_length`: BLIP's maximum length in tokens, the prompt included.
    pub interrogate_clip_max_length: u32,
    /// `interrogate_clip_dict_limit`: only the first N lines of each category file (0 = all).
    pub interrogate_clip_dict_limit: u32,
    /// `interrogate_clip_skip_categories`: category file stems left out (`artists`, `flavors`...).
    pub interrogate_clip_skip_categories: Vec<String>,
    /// `interrogate_deepbooru_score_threshold`: tags scoring below this are dropped.
    pub interrogate_deepbooru_score_threshold: f64,
    /// `deepbooru_sort_alpha`: sort tags alphabetically, else by descending score.
    pub deepbooru_sort_alpha: bool,
    /// `deepbooru_use_spaces`: write `_` as a space.
    pub deepbooru_use_spaces: bool,
    /// `deepbooru_escape`: backslash-escape `\`, `(` and `)` so tags are not read as emphasis.
    pub deepbooru_escape: bool,
    /// `deepbooru_filter_tags`: comma-separated tags never written.
    pub deepbooru_filter_tags: String,
}

impl Default for InterrogateOptions {
    fn default() -> Self {
        Self {
            interrogate_keep_models_in_memory: false,
            interrogate_return_ranks: false,
            interrogate_clip_num_beams: 1,
            interrogate_clip_min_length: 24,
            interrogate_clip_max_length: 48,
            interrogate_clip_dict_limit: 1500,
            interrogate_clip_skip_categories: Vec::new(),
            interrogate_deepbooru_score_threshold: 0.5,
            deepbooru_sort_alpha: true,
            deepbooru_use_spaces: true,
            deepbooru_escape: true,
            deepbooru_filter_tags: String::new(),
        }
    }
}

/// The interrogation options among `settings` (A1111's option keys, as `/sdapi/v1/options` or a
/// daemon request carries them; other keys are ignored), over A1111's defaults. Slider values
/// may come as floats (`24.0`); they are truncated to integers as A1111 forks do.
pub fn read_interrogate_options(
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<InterrogateOptions, String> {
    use serde_json::Value;
    let mut options = InterrogateOptions::default();
    let flag = |key: &str, slot: &mut bool| -> Result<(), String> {
        match settings.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Bool(b)) => {
                *slot = *b;
                Ok(())
            }
            Some(other) => Err(format!("{key}: expected true or false, got {other}")),
        }
    };
    let count = |key: &str, slot: &mut u32| -> Result<(), String> {
        match settings.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() && (0.0..=f64::from(u32::MAX)).contains(&v) => {
                    *slot = v as u32;
                    Ok(())
                }
                _ => Err(format!("{key}: {n} is not a count")),
            },
            Some(other) => Err(format!("{key}: expected a number, got {other}")),
        }
    };
    flag(
        "interrogate_keep_models_in_memory",
        &mut options.interrogate_keep_models_in_memory,
    )?;
    flag(
        "interrogate_return_ranks",
        &mut options.interrogate_return_ranks,
    )?;
    count(
        "interrogate_clip_num_beams",
        &mut options.interrogate_clip_num_beams,
    )?;
    count(
        "interrogate_clip_min_length",
        &mut options.interrogate_clip_min_length,
    )?;
    count(
        "interrogate_clip_max_length",
        &mut options.interrogate_clip_max_length,
    )?;
    count(
        "interrogate_clip_dict_limit",
        &mut options.interrogate_clip_dict_limit,
    )?;
    match settings.get("interrogate_clip_skip_categories") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            options.interrogate_clip_skip_categories = items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        format!("interrogate_clip_skip_categories: {v} is not a category name")
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        Some(other) => {
            return Err(format!(
                "interrogate_clip_skip_categories: expected a list of names, got {other}"
            ))
        }
    }
    match settings.get("interrogate_deepbooru_score_threshold") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            options.interrogate_deepbooru_score_threshold = n.as_f64().unwrap_or(f64::NAN)
        }
        Some(other) => {
            return Err(format!(
                "interrogate_deepbooru_score_threshold: expected a number, got {other}"
            ))
        }
    }
    flag("deepbooru_sort_alpha", &mut options.deepbooru_sort_alpha)?;
    flag("deepbooru_use_spaces", &mut options.deepbooru_use_spaces)?;
    flag("deepbooru_escape", &mut options.deepbooru_escape)?;
    match settings.get("deepbooru_filter_tags") {
        None | Some(Value::Null) => {}
        Some(Value::String(tags)) => options.deepbooru_filter_tags = tags.clone(),
        Some(other) => {
            return Err(format!(
                "deepbooru_filter_tags: expected a comma-separated string, got {other}"
            ))
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_override_the_defaults_and_other_keys_are_ignored() {
        let settings = json!({
            "interrogate_clip_min_length": 30.0,
            "interrogate_return_ranks": true,
            "interrogate_clip_skip_categories": ["artists"],
            "deepbooru_filter_tags": "a_b, c",
            "sd_model_checkpoint": "x",
        });
        let options = read_interrogate_options(settings.as_object().unwrap()).unwrap();
        assert_eq!(options.interrogate_clip_min_length, 30);
        assert!(options.interrogate_return_ranks);
        assert_eq!(options.interrogate_clip_skip_categories, ["artists"]);
        assert_eq!(options.deepbooru_filter_tags, "a_b, c");
        assert_eq!(options.interrogate_clip_max_length, 48);
        let bad = json!({"deepbooru_escape": "yes"});
        let error = read_interrogate_options(bad.as_object().unwrap()).unwrap_err();
        assert!(error.contains("deepbooru_escape"), "{error}");
    }
}
