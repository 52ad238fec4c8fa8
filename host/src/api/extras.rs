//! POST `/sdapi/v1/extra-single-image` and `/sdapi/v1/extra-batch-images`: A1111 v1.10.1's
//! extras tab through its API (`api.py: extras_single_image_api`, `postprocessing.run_extras`,
//! `scripts/postprocessing_upscale.py`) with the upscalers sdhost has (None, Lanczos,
//! Nearest, and the models of the upscaler folders; [`Upscaler`]). Resize mode 0 scales by `upscaling_resize`, 1 scales to
//! cover `upscaling_resize_w` × `upscaling_resize_h` and, with `upscaling_crop`, pastes the
//! result centred on a canvas of that size. The answer's `html_info` is the postprocessing
//! infotext as A1111's `plaintext_to_html` writes it; each image keeps its text chunks and
//! gains `postprocessing`. The work runs on a request thread, not the model's queue (it needs
//! no checkpoint; a model upscaler runs on the daemon's device). Face restoration (GFPGAN, CodeFormer) is not available: a visibility above 0 is
//! logged and ignored.

use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use image::{Rgb, RgbImage};
use serde_json::{json, Map, Value};

use super::body::LimitedBody;
use super::error::{ApiError, ValidationItem};
use super::images::{decode_image, field_bytes};
use super::lax::{self, Fields, LaxError};
use super::png_info::read_info;
use super::ApiState;
use crate::infotext::{py_float, quote};
use crate::pipeline::png_info::png_bytes_with_texts;
use crate::upscale::{ReadyUpscaler, Upscaler, UpscalerCache, UpscalerDirs};

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

/// Where the extras find and run upscalers.
pub struct UpscalerSource<'a> {
    /// The upscaler folders.
    pub dirs: &'a UpscalerDirs,
    /// The loaded model upscaler, shared between requests.
    pub cache: &'a UpscalerCache,
    /// Where models run.
    pub device: tch::Device,
}

/// The upscaler `name` ready to run; A1111's assertion for an upscaler it does not have (a
/// 500 `AssertionError`), and an error for a model file that cannot be used (A1111 logs it
/// and returns the picture unchanged).
fn find_upscaler(name: &str, source: &UpscalerSource) -> Result<Option<ReadyUpscaler>, ApiError> {
    if name == "None" {
        return Ok(None);
    }
    let upscaler = Upscaler::named(name, source.dirs).ok_or_else(|| ApiError::Exception {
        error: "AssertionError".into(),
        errors: format!("could not find upscaler named {name}"),
    })?;
    source
        .cache
        .ready(&upscaler, source.device)
        .map(Some)
        .map_err(|e| ApiError::runtime(format!("upscaler {name}: {e}")))
}

/// The postprocessing infotext's entries in A1111's order (values as Python prints them).
type PostInfo = Vec<(String, String)>;

fn set_info(info: &mut PostInfo, key: &str, value: String) {
    match info.iter_mut().find(|(k, _)| k == key) {
        Some((_, slot)) => *slot = value,
        None => info.push((key.to_string(), value)),
    }
}

/// `ScriptPostprocessingUpscale.upscale`: one upscaler's result and what it adds to `info`.
fn upscale_once(
    image: &RgbImage,
    upscaler: &ReadyUpscaler,
    settings: &ExtrasSettings,
    info: &mut PostInfo,
) -> RgbImage {
    let (target_w, target_h) = (settings.upscaling_resize_w, settings.upscaling_resize_h);
    let scale = if settings.resize_mode == 1 {
        set_info(
            info,
            "Postprocess upscale to",
            format!("{target_w}x{target_h}"),
        );
        (f64::from(target_w) / f64::from(image.width()))
            .max(f64::from(target_h) / f64::from(image.height()))
    } else {
        set_info(
            info,
            "Postprocess upscale by",
            py_float(settings.upscaling_resize),
        );
        settings.upscaling_resize
    };
    let upscaled = upscaler.upscale(image, scale);
    if settings.resize_mode == 1 && settings.upscaling_crop {
        let cropped = paste_centred(&upscaled, target_w, target_h);
        set_info(
            info,
            "Postprocess crop to",
            format!("{}x{}", cropped.width(), cropped.height()),
        );
        return cropped;
    }
    upscaled
}

/// Pillow's `Image.new("RGB", (w, h)).paste(image, (w//2 - iw//2, h//2 - ih//2))`: black
/// where the image does not reach, cut where it overhangs.
fn paste_centred(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let x0 = i64::from(width / 2) - i64::from(image.width() / 2);
    let y0 = i64::from(height / 2) - i64::from(image.height() / 2);
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) - x0, i64::from(y) - y0);
        if sx >= 0 && sy >= 0 && sx < i64::from(image.width()) && sy < i64::from(image.height()) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Pillow's `Image.blend(a, b, alpha)`: `a + alpha·(b − a)` per channel, truncated.
fn blend(a: &RgbImage, b: &RgbImage, alpha: f64) -> RgbImage {
    let alpha = alpha as f32;
    RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (pa, pb) = (a.get_pixel(x, y), b.get_pixel(x, y));
        Rgb(std::array::from_fn(|c| {
            let value = f32::from(pa[c]) + alpha * (f32::from(pb[c]) - f32::from(pa[c]));
            value.clamp(0.0, 255.0) as u8
        }))
    })
}

/// `ScriptPostprocessingUpscale.process`: the image after the upscalers, and the infotext
/// entries they add.
pub fn postprocess(
    image: &RgbImage,
    settings: &ExtrasSettings,
    upscalers: &UpscalerSource,
) -> Result<(RgbImage, PostInfo), ApiError> {
    let mut info = PostInfo::new();
    let Some(first) = find_upscaler(&settings.upscaler_1, upscalers)? else {
        return Ok((image.clone(), info));
    };
    let second = find_upscaler(&settings.upscaler_2, upscalers)?;
    let mut result = upscale_once(image, &first, settings, &mut info);
    info.push(("Postprocess upscaler".into(), settings.upscaler_1.clone()));
    if let Some(second) = second.filter(|_| settings.extras_upscaler_2_visibility > 0.0) {
        let other = upscale_once(image, &second, settings, &mut info);
        if other.dimensions() == result.dimensions() {
            result = blend(&result, &other, settings.extras_upscaler_2_visibility);
        }
        info.push(("Postprocess upscaler 2".into(), settings.upscaler_2.clone()));
    }
    Ok((result, info))
}

/// The postprocessing infotext (`", ".join(k: quote(v))`).
fn infotext(info: &PostInfo) -> String {
    info.iter()
        .map(|(k, v)| {
            if k == v {
                k.clone()
            } else {
                format!("{k}: {}", quote(v))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    let dirs = &state.shared.networks.dirs().upscalers;
    let source = UpscalerSource {
        dirs,
        cache: &state.upscalers,
        device: state.device,
    };
    let (result, info) = postprocess(&image, settings, &source)?;
    let (width, height) = result.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ApiError::http(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the result would be {width}x{height}, more than the limit of {max_pixels} pixels"
            ),
        ));
    }
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
    fn upscales_by_and_to_with_a1111_info() {
        let image = RgbImage::from_fn(10, 6, |x, y| Rgb([(x * 20) as u8, (y * 30) as u8, 9]));
        let (dirs, cache) = (UpscalerDirs::default(), UpscalerCache::default());
        let source = UpscalerSource {
            dirs: &dirs,
            cache: &cache,
            device: tch::Device::Cpu,
        };
        let mut by = settings(json!({"upscaler_1": "Nearest", "upscaling_resize": 2})).unwrap();
        let (out, info) = postprocess(&image, &by, &source).unwrap();
        // `Upscaler.upscale` rounds to multiples of 8.
        assert_eq!(out.dimensions(), (16, 8));
        assert_eq!(
            infotext(&info),
            "Postprocess upscale by: 2.0, Postprocess upscaler: Nearest"
        );
        by.upscaler_1 = "None".into();
        assert_eq!(
            postprocess(&image, &by, &source).unwrap(),
            (image.clone(), vec![])
        );
        by.upscaler_1 = "R-ESRGAN 4x+".into();
        let error = postprocess(&image, &by, &source).unwrap_err();
        assert_eq!(
            error.body(),
            json!({"error": "AssertionError", "detail": "", "body": "", "errors": "could not find upscaler named R-ESRGAN 4x+"})
        );

        let to = settings(json!({"upscaler_1": "Lanczos", "resize_mode": 1,
            "upscaling_resize_w": 30, "upscaling_resize_h": 30, "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.5}))
        .unwrap();
        let (out, info) = postprocess(&image, &to, &source).unwrap();
        assert_eq!(out.dimensions(), (30, 30));
        assert_eq!(
            infotext(&info),
            "Postprocess upscale to: 30x30, Postprocess crop to: 30x30, Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest"
        );
        let no_crop = settings(json!({"upscaler_1": "Lanczos", "resize_mode": 1,
            "upscaling_resize_w": 30, "upscaling_resize_h": 30, "upscaling_crop": false}))
        .unwrap();
        // Scale 5 covers 30x30; 50x30 rounded to multiples of 8.
        assert_eq!(
            postprocess(&image, &no_crop, &source)
                .unwrap()
                .0
                .dimensions(),
            (48, 24)
        );
        assert_eq!(plaintext_to_html("a <b>\nc"), "<p>a &lt;b&gt;<br>\nc</p>");
    }

    #[test]
    fn blend_and_paste_follow_pillow() {
        let a = RgbImage::from_pixel(2, 2, Rgb([10, 200, 0]));
        let b = RgbImage::from_pixel(2, 2, Rgb([21, 100, 255]));
        assert_eq!(blend(&a, &b, 0.5).get_pixel(0, 0), &Rgb([15, 150, 127]));
        let small = RgbImage::from_pixel(2, 2, Rgb([255, 255, 255]));
        let canvas = paste_centred(&small, 4, 4);
        assert_eq!(canvas.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(canvas.get_pixel(1, 1), &Rgb([255, 255, 255]));
    }
}
