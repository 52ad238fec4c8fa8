//! POST `/sdapi/v1/extra-single-image` and `/sdapi/v1/extra-batch-images`: A1111 v1.10.1's
//! extras tab through its API (`api.py: extras_single_image_api`, `postprocessing.run_extras`,
//! `scripts/postprocessing_upscale.py`) with the upscalers sdhost has (None, Lanczos,
//! Nearest, and the models of the upscaler folders; [`Upscaler`]). Resize mode 0 scales by `upscaling_resize`, 1 scales to
//! cover `upscaling_resize_w` × `upscaling_resize_h` and, with `upscaling_crop`, pastes the
//! result centred on a canvas of that size. The answer's `html_info` is the postprocessing
//! infotext as A1111's `plaintext_to_html` writes it; each image keeps its text chunks and
//! gains `postprocessing`. The work runs on a request thread, not the model's queue (it needs
//! no checkpoint; a model upscaler runs on the daemon's device); the upscale itself is
//! [`crate::upscale::extras`], which the daemon's `upscale` runs too. Face restoration (GFPGAN, CodeFormer) is not available: a visibility above 0 is
//! logged and ignored.

use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::body::LimitedBody;
use super::error::{ApiError, ValidationItem};
use super::images::{decode_image, field_bytes};
use super::lax::{self, Fields, LaxError};
use super::png_info::read_info;
use super::ApiState;
use crate::pipeline::png_info::png_bytes_with_texts;
use crate::upscale::extras::{
    infotext, postprocess, ExtrasError, ExtrasUpscale, UpscaleSize, UpscalerSource,
};

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/sdapi/v1/extra-single-image", post(single))
        .route("/sdapi/v1/extra-batch-images", post(batch))
}

/// `ExtrasBaseRequest` as read (face restoration fields only to warn about).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtrasSettings {
    /// 0: scale by `upscaling_resize`; 1: to `upscaling_resize_w` × `_h`.
    pub resize_mode: u8,
    /// The scale of mode 0 (> 0).
    pub upscaling_resize: f64,
    /// The target width of mode 1 (≥ 1).
    pub upscaling_resize_w: u32,
    /// The target height of mode 1 (≥ 1).
    pub upscaling_resize_h: u32,
    /// Mode 1: centre the result on a canvas of exactly the target size.
    pub upscaling_crop: bool,
    /// The main upscaler's name ("None": no upscale).
    pub upscaler_1: String,
    /// The second upscaler's name, blended in by `extras_upscaler_2_visibility`.
    pub upscaler_2: String,
    /// How much of the second upscaler's result is blended in, 0-1.
    pub extras_upscaler_2_visibility: f64,
    /// GFPGAN's and CodeFormer's visibilities (not available here).
    pub face_restoration: f64,
}

/// pydantic's number bounds as 422 entries.
fn bound(name: &str, msg: String, kind: &str) -> ValidationItem {
    ValidationItem::body(name, msg, kind)
}

/// Reads `ExtrasBaseRequest`'s fields with pydantic's types, defaults and bounds.
pub fn read_settings(body: &Map<String, Value>) -> Result<ExtrasSettings, ApiError> {
    let mut fields = Fields::new(body);
    let resize_mode = fields.get("resize_mode", lax::float);
    let upscaling_resize = fields.get("upscaling_resize", lax::float).unwrap_or(2.0);
    let width = fields.get("upscaling_resize_w", lax::int).unwrap_or(512);
    let height = fields.get("upscaling_resize_h", lax::int).unwrap_or(512);
    let upscaling_crop = fields.get("upscaling_crop", lax::boolean).unwrap_or(true);
    let upscaler_1 = fields.get("upscaler_1", lax::string);
    let upscaler_2 = fields.get("upscaler_2", lax::string);
    let visibility = fields
        .get("extras_upscaler_2_visibility", lax::float)
        .unwrap_or(0.0);
    let gfpgan = fields.get("gfpgan_visibility", lax::float).unwrap_or(0.0);
    let codeformer = fields
        .get("codeformer_visibility", lax::float)
        .unwrap_or(0.0);
    let weight = fields.get("codeformer_weight", lax::float).unwrap_or(0.0);
    fields.get("upscale_first", lax::boolean);
    fields.get("show_extras_results", lax::boolean);
    fields.finish()?;

    let mut errors = Vec::new();
    // `Literal[0, 1]`: Python's equality, so 1.0 and true are 1.
    let resize_mode = match body.get("resize_mode") {
        Some(Value::Bool(b)) => u8::from(*b),
        _ => match resize_mode {
            None => 0,
            Some(m) if m == 0.0 || m == 1.0 => m as u8,
            Some(_) => {
                errors.push(bound(
                    "resize_mode",
                    "unexpected value; permitted: 0, 1".into(),
                    "value_error.const",
                ));
                0
            }
        },
    };
    if body.get("resize_mode").is_some_and(Value::is_string) {
        errors.push(bound(
            "resize_mode",
            "unexpected value; permitted: 0, 1".into(),
            "value_error.const",
        ));
    }
    if upscaling_resize <= 0.0 {
        errors.push(bound(
            "upscaling_resize",
            "ensure this value is greater than 0".into(),
            "value_error.number.not_gt",
        ));
    }
    for (name, value) in [
        ("upscaling_resize_w", width),
        ("upscaling_resize_h", height),
    ] {
        if value < 1 {
            errors.push(bound(
                name,
                "ensure this value is greater than or equal to 1".into(),
                "value_error.number.not_ge",
            ));
        }
    }
    for (name, value) in [
        ("gfpgan_visibility", gfpgan),
        ("codeformer_visibility", codeformer),
        ("codeformer_weight", weight),
        ("extras_upscaler_2_visibility", visibility),
    ] {
        if value < 0.0 {
            errors.push(bound(
                name,
                "ensure this value is greater than or equal to 0".into(),
                "value_error.number.not_ge",
            ));
        } else if value > 1.0 || !value.is_finite() {
            errors.push(bound(
                name,
                "ensure this value is less than or equal to 1".into(),
                "value_error.number.not_le",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let side = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(ExtrasSettings {
        resize_mode,
        upscaling_resize,
        upscaling_resize_w: side(width),
        upscaling_resize_h: side(height),
        upscaling_crop,
        upscaler_1: upscaler_1.unwrap_or_else(|| "None".into()),
        upscaler_2: upscaler_2.unwrap_or_else(|| "None".into()),
        extras_upscaler_2_visibility: visibility,
        face_restoration: gfpgan.max(codeformer),
    })
}

impl ExtrasSettings {
    /// The upscale these settings ask for.
    pub fn upscale(&self) -> ExtrasUpscale {
        let size = if self.resize_mode == 1 {
            UpscaleSize::To {
                width: self.upscaling_resize_w,
                height: self.upscaling_resize_h,
                crop: self.upscaling_crop,
            }
        } else {
            UpscaleSize::By(self.upscaling_resize)
        };
        ExtrasUpscale {
            size,
            upscaler_1: self.upscaler_1.clone(),
            upscaler_2: self.upscaler_2.clone(),
            upscaler_2_visibility: self.extras_upscaler_2_visibility,
        }
    }
}

/// A1111's answers to an upscale that fails: its assertion for an upscaler it does not have
/// (a 500 `AssertionError`), and an error for a model file that cannot be used (A1111 logs it
/// and returns the picture unchanged).
fn extras_error(error: ExtrasError) -> ApiError {
    match error {
        ExtrasError::Unknown(_) => ApiError::Exception {
            error: "AssertionError".into(),
            errors: error.to_string(),
        },
        ExtrasError::Load { .. } | ExtrasError::Stopped => ApiError::runtime(error.to_string()),
    }
}

/// `ui_common.plaintext_to_html`: lines HTML-escaped, joined by `<br>`, in a `<p>`.
pub fn plaintext_to_html(text: &str) -> String {
    let escape = |line: &str| {
        line.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;")
    };
    let lines: Vec<String> = text.split('\n').map(escape).collect();
    format!("<p>{}</p>", lines.join("<br>\n"))
}

/// One image through the extras: decoded (pixel limit first), upscaled, encoded with its
/// text chunks and `postprocessing`; the infotext for `html_info`.
fn process_image(
    state: &ApiState,
    text: &str,
    settings: &ExtrasSettings,
) -> Result<(String, String), ApiError> {
    let max_pixels = state.shared.limits.max_pixels;
    let image = decode_image(text, max_pixels)?.to_rgb8();
    // A1111 keeps the image's text chunks, its infotext among them.
    let (parameters, mut chunks) = field_bytes(text.trim())
        .and_then(|bytes| read_info(&bytes))
        .unwrap_or_default();
    if !parameters.is_empty() {
        chunks.insert("parameters".into(), Value::String(parameters));
    }
    let upscale = settings.upscale();
    let (width, height) = upscale.output_size(image.width(), image.height());
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ApiError::http(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the result would be {width}x{height}, more than the limit of {max_pixels} pixels"
            ),
        ));
    }
    let source = UpscalerSource {
        dirs: &state.shared.networks.dirs().upscalers,
        cache: &state.upscalers,
        device: state.device,
    };
    let (result, info) = postprocess(&image, &upscale, &source, &|| false).map_err(extras_error)?;
    let text = infotext(&info);
    let mut texts: Vec<(&str, &str)> = chunks
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
        .filter(|(k, _)| *k != "postprocessing")
        .collect();
    texts.push(("postprocessing", &text));
    let png = png_bytes_with_texts(&result, &texts)
        .map_err(|e| ApiError::runtime(format!("encoding a PNG: {e}")))?;
    Ok((STANDARD.encode(png), text))
}

/// Checks the result's size before any pixel work: A1111 has no limit, the daemon has.
fn check_target(settings: &ExtrasSettings, state: &ApiState) -> Result<(), ApiError> {
    if settings.face_restoration > 0.0 {
        eprintln!("sdhost: API: extras: face restoration is not available in sdhost; skipped");
    }
    if settings.resize_mode == 1 && settings.upscaler_1 != "None" {
        let pixels =
            u64::from(settings.upscaling_resize_w) * u64::from(settings.upscaling_resize_h);
        if pixels > state.shared.limits.max_pixels {
            return Err(ApiError::http(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{}x{} is more than the limit of {} pixels",
                    settings.upscaling_resize_w,
                    settings.upscaling_resize_h,
                    state.shared.limits.max_pixels
                ),
            ));
        }
    }
    Ok(())
}

fn single_image(state: &ApiState, body: &[u8]) -> Result<Value, ApiError> {
    let body = lax::json_object(body)?;
    let mut fields = Fields::new(&body);
    let image = fields.get("image", lax::string).unwrap_or_default();
    fields.finish()?;
    let settings = read_settings(&body)?;
    check_target(&settings, state)?;
    let (image, text) = process_image(state, &image, &settings)?;
    Ok(json!({"html_info": plaintext_to_html(&text), "image": image}))
}

fn batch_images(state: &ApiState, body: &[u8]) -> Result<Value, ApiError> {
    let body = lax::json_object(body)?;
    let list = match body.get("imageList") {
        None | Some(Value::Null) => {
            return Err(ApiError::field(
                "imageList",
                "field required",
                "value_error.missing",
            ))
        }
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(ApiError::field(
                "imageList",
                "value is not a valid list",
                "type_error.list",
            ))
        }
    };
    let mut data = Vec::with_capacity(list.len());
    let mut errors = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let at = |field: &str, error: LaxError| ValidationItem {
            loc: vec![json!("body"), json!("imageList"), json!(i), json!(field)],
            msg: error.msg.into(),
            kind: error.kind.into(),
        };
        let missing = LaxError {
            msg: "field required",
            kind: "value_error.missing",
        };
        let Some(object) = item.as_object() else {
            errors.push(ValidationItem {
                loc: vec![json!("body"), json!("imageList"), json!(i)],
                msg: "value is not a valid dict".into(),
                kind: "type_error.dict".into(),
            });
            continue;
        };
        for field in ["data", "name"] {
            match object.get(field).map(lax::string) {
                None | Some(Ok(None)) => errors.push(at(field, missing.clone())),
                Some(Err(error)) => errors.push(at(field, error)),
                Some(Ok(Some(text))) if field == "data" => data.push(text),
                Some(Ok(Some(_))) => {}
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let settings = read_settings(&body)?;
    check_target(&settings, state)?;
    let mut images = Vec::with_capacity(data.len());
    let mut last = String::new();
    for text in &data {
        let (image, info) = process_image(state, text, &settings)?;
        images.push(image);
        last = info;
    }
    Ok(json!({"html_info": plaintext_to_html(&last), "images": images}))
}

async fn single(
    axum::extract::State(state): axum::extract::State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    run(move || single_image(&state, &body)).await
}

async fn batch(
    axum::extract::State(state): axum::extract::State<ApiState>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    run(move || batch_images(&state, &body)).await
}

/// Pixel work off the runtime's threads.
async fn run(
    work: impl FnOnce() -> Result<Value, ApiError> + Send + 'static,
) -> Result<Json<Value>, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::runtime(format!("the request's thread failed: {e}")))?
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(body: Value) -> Result<ExtrasSettings, ApiError> {
        read_settings(body.as_object().unwrap())
    }

    #[test]
    fn settings_have_pydantic_defaults_and_bounds() {
        let s = settings(json!({})).unwrap();
        assert_eq!(s.resize_mode, 0);
        assert_eq!(s.upscaling_resize, 2.0);
        assert_eq!((s.upscaling_resize_w, s.upscaling_resize_h), (512, 512));
        assert!(s.upscaling_crop);
        assert_eq!(s.upscaler_1, "None");
        let zero = settings(json!({"upscaling_resize_w": 0, "resize_mode": 1})).unwrap_err();
        let ApiError::Validation(items) = zero else {
            panic!("a 422")
        };
        assert_eq!(
            items[0].loc,
            vec![json!("body"), json!("upscaling_resize_w")]
        );
        assert_eq!(items[0].kind, "value_error.number.not_ge");
        assert_eq!(
            settings(json!({"resize_mode": 2})).unwrap_err().status(),
            422
        );
        assert_eq!(
            settings(json!({"resize_mode": true})).unwrap().resize_mode,
            1
        );
        assert_eq!(
            settings(json!({"upscaling_resize": 0}))
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(
            settings(json!({"upscaling_resize": "many"}))
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(settings(json!({"resize-mode": 5})).unwrap().resize_mode, 0);
    }

    #[test]
    fn settings_name_the_upscale_and_a1111s_errors() {
        let by = settings(json!({"upscaler_1": "Nearest", "upscaling_resize": 3})).unwrap();
        assert_eq!(by.upscale().size, UpscaleSize::By(3.0));
        assert_eq!(by.upscale().upscaler_2, "None");
        let to = settings(json!({"upscaler_1": "Lanczos", "resize_mode": 1,
            "upscaling_resize_w": 30, "upscaling_resize_h": 20, "upscaling_crop": false,
            "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5}))
        .unwrap()
        .upscale();
        assert_eq!(
            to.size,
            UpscaleSize::To {
                width: 30,
                height: 20,
                crop: false
            }
        );
        assert_eq!(
            (to.upscaler_2.as_str(), to.upscaler_2_visibility),
            ("Nearest", 0.5)
        );
        let error = extras_error(ExtrasError::Unknown("R-ESRGAN 4x+".into()));
        assert_eq!(
            error.body(),
            json!({"error": "AssertionError", "detail": "", "body": "", "errors": "could not find upscaler named R-ESRGAN 4x+"})
        );
        assert_eq!(plaintext_to_html("a <b>\nc"), "<p>a &lt;b&gt;<br>\nc</p>");
    }
}
