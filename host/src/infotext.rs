//! A1111's infotext: the generation parameters written under an image and into its PNG
//! (`modules/processing.py: create_infotext`, `modules/infotext_utils.py: parse_generation_parameters`).

use std::sync::OnceLock;

use regex::Regex;

/// The fixed parameter slots, in A1111's order; other keys follow in insertion order, then
/// [`TRAILING_KEYS`].
pub const FIXED_KEYS: &[&str] = &[
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
];

/// Keys A1111 always writes last.
pub const TRAILING_KEYS: &[&str] = &["Version", "User"];

/// One image's infotext: prompts and the ordered `key: value` parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Infotext {
    /// The positive prompt (may span lines).
    pub prompt: String,
    /// The negative prompt (empty: no `Negative prompt:` line).
    pub negative_prompt: String,
    /// Parameters in the order written, values unquoted.
    pub params: Vec<(String, String)>,
}

/// Python's `str()` of a float: `7.0`, `0.75`, `1e-05`, `1e+16`.
pub fn py_float(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.into();
    }
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-4..1e16).contains(&magnitude) {
        // Python's repr switches to exponent notation, with at least two exponent digits.
        let formatted = format!("{value:e}");
        let (mantissa, exponent) = formatted.split_once('e').expect("{:e} has an exponent");
        let exponent: i32 = exponent.parse().expect("integer exponent");
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    if value.fract() == 0.0 {
        format!("{value:.1}")
    } else {
        format!("{value}")
    }
}

/// A1111's `quote`: values with `,`, newline or `:` become JSON strings.
pub fn quote(value: &str) -> String {
    if value.contains([',', '\n', ':']) {
        serde_json::to_string(value).expect("strings serialise")
    } else {
        value.to_string()
    }
}

fn param_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
            .expect("valid parameter pattern")
    })
}

fn size_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| Regex::new(r"^(\d+)x(\d+)$").expect("valid size pattern"))
}

impl Infotext {
    /// Builds the parameter list in A1111's order from `(key, value)` pairs given in the order
    /// the job produced them: fixed slots first, then the rest in insertion order, then
    /// `Version` and `User`. `None` values are left out; the first value of a key wins.
    pub fn with_params(
        prompt: &str,
        negative_prompt: &str,
        values: Vec<(&str, Option<String>)>,
    ) -> Self {
        let mut present: Vec<(String, String)> = Vec::new();
        for (key, value) in values {
            if let Some(value) = value {
                if !present.iter().any(|(k, _)| k == key) {
                    present.push((key.to_string(), value));
                }
            }
        }
        let take = |keys: &[&str], present: &mut Vec<(String, String)>| -> Vec<(String, String)> {
            keys.iter()
                .filter_map(|key| {
                    let i = present.iter().position(|(k, _)| k == key)?;
                    Some(present.remove(i))
                })
                .collect()
        };
        let mut params = take(FIXED_KEYS, &mut present);
        let trailing = take(TRAILING_KEYS, &mut present);
        params.extend(present);
        params.extend(trailing);
        Infotext {
            prompt: prompt.to_string(),
            negative_prompt: negative_prompt.to_string(),
            params,
        }
    }

    /// The value of a parameter, unquoted.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The text A1111 writes: prompt, `Negative prompt:` line, parameter line; stripped.
    pub fn to_text(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(key, value)| {
                if key == value {
                    key.clone()
                } else {
                    format!("{key}: {}", quote(value))
                }
            })
            .collect();
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative_prompt);
        }
        text.push('\n');
        text.push_str(&params.join(", "));
        text.trim().to_string()
    }

    /// Reads infotext as A1111's `parse_generation_parameters` splits it: the last line holds
    /// the parameters if at least 3 `key: value` pairs are found in it; quoted values are
    /// JSON-decoded. (`WxH` values keep their text; see [`Infotext::size`].)
    pub fn parse(text: &str) -> Self {
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let mut params = Vec::new();
        if let Some(last) = lines.last() {
            let found: Vec<(String, String)> = param_pattern()
                .captures_iter(last)
                .map(|c| (c[1].trim().to_string(), c[2].trim().to_string()))
                .collect();
            if found.len() >= 3 {
                params = found;
                lines.pop();
            }
        }
        let mut prompt = Vec::new();
        let mut negative = Vec::new();
        let mut in_negative = false;
        for line in lines {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("Negative prompt:") {
                in_negative = true;
                negative.push(rest.trim_start());
            } else if in_negative {
                negative.push(line);
            } else {
                prompt.push(line);
            }
        }
        let params = params
            .into_iter()
            .map(|(key, value)| {
                let value = if value.starts_with('"') && value.ends_with('"') && value.len() >= 2 {
                    serde_json::from_str::<String>(&value).unwrap_or(value)
                } else {
                    value
                };
                (key, value)
            })
            .collect();
        Infotext {
            prompt: prompt.join("\n"),
            negative_prompt: negative.join("\n"),
            params,
        }
    }

    /// A `WxH` parameter (such as `Size`) as (width, height).
    pub fn size(&self, key: &str) -> Option<(u32, u32)> {
        let captures = size_pattern().captures(self.get(key)?)?;
        Some((captures[1].parse().ok()?, captures[2].parse().ok()?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Lora hashes: \"add_detail: 7c6bad76eb54\", Version: v1.10.1";

    #[test]
    fn python_float_strings() {
        assert_eq!(py_float(7.0), "7.0");
        assert_eq!(py_float(0.75), "0.75");
        assert_eq!(py_float(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(-2.5), "-2.5");
        assert_eq!(py_float(14.614642), "14.614642");
    }

    #[test]
    fn builds_the_spec_example_in_a1111_order() {
        let text = Infotext::with_params(
            "a cat",
            "blurry",
            vec![
                ("Steps", Some("20".into())),
                ("Sampler", Some("DPM++ 2M".into())),
                ("CFG scale", Some("7".into())),
                ("Seed", Some("1234".into())),
                ("Size", Some("512x512".into())),
                ("Model hash", Some("6ce0161689".into())),
                ("Model", Some("v1-5-pruned-emaonly".into())),
                ("Clip skip", None),
                ("Denoising strength", Some("0.75".into())),
                ("Version", Some("v1.10.1".into())),
                ("Mask blur", Some("4".into())),
                ("Schedule type", Some("Karras".into())),
                ("Inpaint area", Some("Only masked".into())),
                ("Masked area padding", Some("32".into())),
                ("Lora hashes", Some("add_detail: 7c6bad76eb54".into())),
            ],
        );
        assert_eq!(text.to_text(), SPEC_EXAMPLE);
    }

    #[test]
    fn parses_a1111_infotext() {
        let info = Infotext::parse(SPEC_EXAMPLE);
        assert_eq!(info.prompt, "a cat");
        assert_eq!(info.negative_prompt, "blurry");
        assert_eq!(info.get("Lora hashes"), Some("add_detail: 7c6bad76eb54"));
        assert_eq!(info.get("Schedule type"), Some("Karras"));
        assert_eq!(info.size("Size"), Some((512, 512)));
        assert_eq!(info.params.len(), 14);
        assert_eq!(info.to_text(), SPEC_EXAMPLE, "round trip");

        // Multi-line prompt and negative prompt, quotes with escapes, no negative line.
        let text = "line one\n(line two:1.2), \"quoted\"\nNegative prompt: bad\nworse\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 640x448, TI hashes: \"emb: 0123456789ab, other: ba9876543210\", Note: \"a \\\"b\\\" c\"";
        let info = Infotext::parse(text);
        assert_eq!(info.prompt, "line one\n(line two:1.2), \"quoted\"");
        assert_eq!(info.negative_prompt, "bad\nworse");
        assert_eq!(
            info.get("TI hashes"),
            Some("emb: 0123456789ab, other: ba9876543210")
        );
        assert_eq!(info.get("Note"), Some("a \"b\" c"));
        assert_eq!(info.size("Size"), Some((640, 448)));
        assert_eq!(Infotext::parse(&info.to_text()), info);

        // A last line with fewer than 3 pairs belongs to the prompt.
        let info = Infotext::parse("a photo\nstyle: nice, mood: calm");
        assert_eq!(info.prompt, "a photo\nstyle: nice, mood: calm");
        assert!(info.params.is_empty());
    }

    /// A real-world shaped A1111 infotext: multi-line prompt with a LoRA tag and quotes,
    /// two-line negative prompt, VAE, two LoRA hashes and TI hashes in quoted values.
    pub(crate) const A1111_SAMPLE: &str = "masterpiece, best quality, <lora:add_detail:0.8>, 1girl,\n(detailed face:1.2), \"quoted words\", [cat:dog:0.4]\nNegative prompt: (worst quality:1.4), lowres\nEasyNegative\nSteps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3450128396, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Lora hashes: \"add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef\", TI hashes: \"EasyNegative: c74b4e810b03\", Emphasis: Original, Version: v1.10.1";

    #[test]
    fn parses_a_real_world_a1111_sample() {
        let info = Infotext::parse(A1111_SAMPLE);
        assert_eq!(
            info.prompt,
            "masterpiece, best quality, <lora:add_detail:0.8>, 1girl,\n(detailed face:1.2), \"quoted words\", [cat:dog:0.4]"
        );
        assert_eq!(
            info.negative_prompt,
            "(worst quality:1.4), lowres\nEasyNegative"
        );
        assert_eq!(
            info.get("Lora hashes"),
            Some("add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef")
        );
        assert_eq!(info.get("TI hashes"), Some("EasyNegative: c74b4e810b03"));
        assert_eq!(
            info.get("VAE"),
            Some("vae-ft-mse-840000-ema-pruned.safetensors")
        );
        assert_eq!(info.get("Seed"), Some("3450128396"));
        assert_eq!(info.size("Size"), Some((512, 768)));
        assert_eq!(info.get("Version"), Some("v1.10.1"));
        assert_eq!(info.params.len(), 19);
        assert_eq!(info.to_text(), A1111_SAMPLE, "round trip");
    }
}
