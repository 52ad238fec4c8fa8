//! POST `/sdapi/v1/png-info`: the infotext of an image and its other text chunks, and the
//! infotext parsed as A1111 v1.10.1's `infotext_utils.parse_generation_parameters` parses it
//! (values as strings, defaults filled in, old hires fix sizes restored, version back-compat
//! flags), over the project's infotext reader ([`Infotext::parse`]).

use std::io::Cursor;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::body::LimitedBody;
use super::error::ApiError;
use super::images::field_bytes;
use super::lax;
use super::request_model::Ordered;
use super::ApiState;
use crate::infotext::Infotext;
use crate::pipeline::png_info::{png_texts, PARAMETERS_KEY};
use crate::prompt::emphasis::parse_prompt_attention;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/sdapi/v1/png-info", post(png_info))
}

async fn png_info(LimitedBody(body): LimitedBody) -> Result<Json<Value>, ApiError> {
    tokio::task::spawn_blocking(move || answer(&body))
        .await
        .map_err(|e| ApiError::runtime(format!("the request's thread failed: {e}")))?
        .map(Json)
}

/// The whole request: `{"image"}` in, `{"info", "items", "parameters"}` out.
fn answer(body: &[u8]) -> Result<Value, ApiError> {
    let body = lax::json_object(body)?;
    let image = match body.get("image") {
        None | Some(Value::Null) => {
            return Err(ApiError::field(
                "image",
                "field required",
                "value_error.missing",
            ))
        }
        Some(value) => lax::string(value)
            .map_err(|e| ApiError::Validation(vec![e.at("image")]))?
            .unwrap_or_default(),
    };
    let (info, items) = read_info(&field_bytes(image.trim())?)?;
    Ok(json!({
        "info": info,
        "items": items,
        "parameters": parse_generation_parameters(&info),
    }))
}

/// A1111's `images.read_info_from_image` for what sdhost reads: the `parameters` text chunk
/// and the other text chunks of a PNG; other image formats have no text ("", {}). Bytes
/// that are no image are A1111's 500 "Invalid encoded image".
pub fn read_info(bytes: &[u8]) -> Result<(String, Map<String, Value>), ApiError> {
    let format = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ApiError::invalid_image())?;
    let is_png = format.format() == Some(image::ImageFormat::Png);
    format
        .into_dimensions()
        .map_err(|_| ApiError::invalid_image())?;
    if !is_png {
        return Ok((String::new(), Map::new()));
    }
    let texts = png_texts(bytes).map_err(|_| ApiError::invalid_image())?;
    let mut info = String::new();
    let mut items = Map::new();
    for (key, text) in texts {
        if key == PARAMETERS_KEY {
            info = text;
        } else {
            items.insert(key, Value::String(text));
        }
    }
    Ok((info, items))
}

/// An infotext `Version` as `packaging.version` orders it: (major, minor, patch, post),
/// a release without a post number below its `.post0`, a release candidate below both.
fn parse_version(text: &str) -> Option<(u64, u64, u64, i64)> {
    // `infotext_versions.parse_version` keeps the first two `-` parts ("v1.7.0-225-gabc").
    let mut parts = text.split('-');
    let core = parts.next()?.strip_prefix('v').unwrap_or(text);
    let mut numbers = core.split('.').map(|n| n.parse::<u64>().ok());
    let (major, minor, patch) = (numbers.next()??, numbers.next()??, numbers.next()??);
    if numbers.next().is_some() {
        return None;
    }
    let post = match parts.next() {
        None => -1,
        Some(n) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => n.parse().ok()?,
        Some(n) if n.to_ascii_lowercase().starts_with("rc") => -2,
        Some(_) => return None,
    };
    Some((major, minor, patch, post))
}

/// `processing.old_hires_fix_first_pass_dimensions`: the first pass near 512² pixels.
fn old_first_pass(width: f64, height: f64) -> (i64, i64) {
    let scale = (512.0 * 512.0 / (width * height)).sqrt();
    let side = |v: f64| ((scale * v / 64.0).ceil() * 64.0) as i64;
    (side(width), side(height))
}

/// An integer of an infotext value (Python's `int()` of the string).
fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => text.trim().parse().ok(),
        other => other.as_i64(),
    }
}

/// `parse_generation_parameters` with A1111 v1.10.1's default options (no styles to
/// extract, no skipped fields, back-compat on).
pub fn parse_generation_parameters(text: &str) -> Ordered {
    let parsed = Infotext::parse(text);
    let mut res = Ordered::default();
    for (key, value) in &parsed.params {
        match size_parts(value) {
            Some((w, h)) => {
                res.set(&format!("{key}-1"), Value::from(w));
                res.set(&format!("{key}-2"), Value::from(h));
            }
            None => res.set(key, Value::from(value.as_str())),
        }
    }
    let has = |res: &Ordered, key: &str| res.keys().any(|k| k == key);
    res.set("Prompt", Value::from(parsed.prompt.as_str()));
    res.set(
        "Negative prompt",
        Value::from(parsed.negative_prompt.as_str()),
    );
    if !has(&res, "Clip skip") {
        res.set("Clip skip", json!("1"));
    }
    if let Some(hypernet) = res.get("Hypernet").as_str().map(str::to_string) {
        let strength = res
            .get("Hypernet strength")
            .as_str()
            .unwrap_or("1.0")
            .to_string();
        let prompt = format!(
            "{}<hypernet:{hypernet}:{strength}>",
            res.get("Prompt").as_str().unwrap_or_default()
        );
        res.set("Prompt", Value::from(prompt));
    }
    if !has(&res, "Hires resize-1") {
        res.set("Hires resize-1", json!(0));
        res.set("Hires resize-2", json!(0));
    }
    let defaults = [
        ("Hires sampler", json!("Use same sampler")),
        ("Hires schedule type", json!("Use same scheduler")),
        ("Hires checkpoint", json!("Use same checkpoint")),
        ("Hires prompt", json!("")),
        ("Hires negative prompt", json!("")),
        ("Mask mode", json!("Inpaint masked")),
        ("Masked content", json!("original")),
        ("Inpaint area", json!("Whole picture")),
        ("Masked area padding", json!(32)),
    ];
    for (key, value) in defaults {
        if !has(&res, key) {
            res.set(key, value);
        }
    }
    restore_old_hires_fix_params(&mut res);
    let defaults = [
        ("RNG", json!("GPU")),
        ("Schedule type", json!("Automatic")),
        ("Schedule max sigma", json!(0)),
        ("Schedule min sigma", json!(0)),
        ("Schedule rho", json!(0)),
        ("VAE Encoder", json!("Full")),
        ("VAE Decoder", json!("Full")),
        ("FP8 weight", json!("Disable")),
    ];
    for (key, value) in defaults {
        if !has(&res, key) {
            res.set(key, value);
        }
    }
    if !has(&res, "Cache FP16 weight for LoRA") && res.get("FP8 weight") != "Disable" {
        res.set("Cache FP16 weight for LoRA", json!(false));
    }
    let uses_emphasis = [&parsed.prompt, &parsed.negative_prompt]
        .iter()
        .flat_map(|p| parse_prompt_attention(p))
        .any(|f| !(f.weight == 1.0 || f.text == "BREAK"));
    if !has(&res, "Emphasis") && uses_emphasis {
        res.set("Emphasis", json!("Original"));
    }
    if !has(&res, "Refiner switch by sampling steps") {
        res.set("Refiner switch by sampling steps", json!(false));
    }
    backcompat(&mut res);
    res
}

/// A `WxH` value's two sides as strings (A1111's `re_imagesize`).
fn size_parts(value: &str) -> Option<(String, String)> {
    let (w, h) = value.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    (digits(w) && digits(h)).then(|| (w.to_string(), h.to_string()))
}

/// `infotext_utils.restore_old_hires_fix_params`: an old `First pass size` becomes the size,
/// and the size the hires resize.
fn restore_old_hires_fix_params(res: &mut Ordered) {
    let (Some(first_w), Some(first_h)) = (
        int_of(res.get("First pass size-1")),
        int_of(res.get("First pass size-2")),
    ) else {
        return;
    };
    let width = int_of(res.get("Size-1")).unwrap_or(512);
    let height = int_of(res.get("Size-2")).unwrap_or(512);
    let (first_w, first_h) = if first_w == 0 || first_h == 0 {
        old_first_pass(width as f64, height as f64)
    } else {
        (first_w, first_h)
    };
    res.set("Size-1", json!(first_w));
    res.set("Size-2", json!(first_h));
    res.set("Hires resize-1", json!(width));
    res.set("Hires resize-2", json!(height));
}

/// `infotext_versions.backcompat`: the compatibility options an older `Version` implies.
fn backcompat(res: &mut Ordered) {
    let Some(version) = res.get("Version").as_str().and_then(parse_version) else {
        return;
    };
    let v160 = (1, 6, 0, -1);
    let v170_tsnr = (1, 7, 0, 225);
    let v180 = (1, 8, 0, -1);
    if version < v160 && res.get("Prompt").as_str().unwrap_or_default().contains('[') {
        res.set("Old prompt editing timelines", json!(true));
    }
    if version < v160 && matches!(res.get("Sampler").as_str(), Some("DDIM" | "PLMS")) {
        res.set("Pad conds v0", json!(true));
    }
    if version < v170_tsnr {
        res.set("Downcast alphas_cumprod", json!(true));
    }
    let refiner = res.get("Refiner").as_str().is_some_and(|r| !r.is_empty());
    if version < v180 && refiner {
        res.set("Refiner switch by sampling steps", json!(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::png_info::png_bytes;
    use base64::Engine;

    const TEXT: &str = "a (cat:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 123, Size: 512x768, Model hash: 6ce0161689, Lora hashes: \"add_detail: 7c6bad76eb54\", Version: v1.10.1";

    #[test]
    fn parameters_are_strings_with_a1111_defaults() {
        let res = parse_generation_parameters(TEXT);
        assert_eq!(res.get("Prompt"), "a (cat:1.2)");
        assert_eq!(res.get("Negative prompt"), "blurry");
        assert_eq!(res.get("Steps"), "20");
        assert_eq!(res.get("CFG scale"), "7.0");
        assert_eq!(res.get("Size-1"), "512");
        assert_eq!(res.get("Size-2"), "768");
        assert_eq!(res.get("Lora hashes"), "add_detail: 7c6bad76eb54");
        assert_eq!(res.get("Clip skip"), "1");
        assert_eq!(res.get("Hires resize-1"), 0);
        assert_eq!(res.get("Masked area padding"), 32);
        assert_eq!(res.get("RNG"), "GPU");
        assert_eq!(res.get("Schedule type"), "Automatic");
        assert_eq!(res.get("Emphasis"), "Original");
        assert_eq!(res.get("Refiner switch by sampling steps"), false);
        assert_eq!(res.get("Downcast alphas_cumprod"), &Value::Null);
        assert!(!res.keys().any(|k| k == "Cache FP16 weight for LoRA"));

        let empty = parse_generation_parameters("");
        assert_eq!(empty.get("Prompt"), "");
        assert_eq!(empty.get("Steps"), &Value::Null);
        assert_eq!(empty.get("Emphasis"), &Value::Null);
        assert_eq!(empty.get("Hires sampler"), "Use same sampler");
    }

    #[test]
    fn old_infotexts_get_their_compatibility_flags_and_sizes() {
        let old = "a [cat:dog:5]\nSteps: 20, Sampler: DDIM, Size: 1024x1024, First pass size: 0x0, Hypernet: anime, Version: v1.5.1";
        let res = parse_generation_parameters(old);
        assert_eq!(res.get("Size-1"), 512);
        assert_eq!(res.get("Hires resize-1"), 1024);
        assert_eq!(res.get("Old prompt editing timelines"), true);
        assert_eq!(res.get("Pad conds v0"), true);
        assert_eq!(res.get("Downcast alphas_cumprod"), true);
        assert_eq!(res.get("Prompt"), "a [cat:dog:5]<hypernet:anime:1.0>");
        assert_eq!(parse_version("v1.7.0-225-gabc"), Some((1, 7, 0, 225)));
        assert!(parse_version("v1.7.0").unwrap() < (1, 7, 0, 225));
        assert_eq!(parse_version("f2.0.1v1.10.1-previous"), None);
    }

    #[test]
    fn png_text_chunks_are_read_and_bad_images_refused() {
        let png = png_bytes(&image::RgbImage::new(2, 2), Some(TEXT)).unwrap();
        let (info, items) = read_info(&png).unwrap();
        assert_eq!(info, TEXT);
        assert!(items.is_empty());
        let bare = png_bytes(&image::RgbImage::new(2, 2), None).unwrap();
        assert_eq!(read_info(&bare).unwrap(), (String::new(), Map::new()));
        assert_eq!(read_info(b"nope"), Err(ApiError::invalid_image()));

        let body = json!({"image": format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&png))});
        let answer = answer(body.to_string().as_bytes()).unwrap();
        assert_eq!(answer["info"], TEXT);
        assert_eq!(answer["parameters"]["Seed"], "123");
        assert_eq!(answer["items"], json!({}));
        let bad = answer_error(json!({"image": "bm9wZQ=="}));
        assert_eq!(bad, ApiError::invalid_image());
        assert_eq!(answer_error(json!({})).status(), 422);
    }

    fn answer_error(body: Value) -> ApiError {
        answer(body.to_string().as_bytes()).unwrap_err()
    }
}
