//! Requests a client can send, read from frame headers (docs/protocol.md). Job parameters use
//! the field names of A1111's `/sdapi/v1/img2img` so existing client code maps over directly.

use std::collections::BTreeMap;

use image::DynamicImage;
use sdhost_plugin_api::OptionValue;
use serde::Deserialize;

use super::protocol::{Attachment, Frame, PixelFormat};
use crate::pipeline::params::{Img2ImgParams, InitLatentMode, RngChoice};
use crate::pipeline::preview::{PreviewMethod, PreviewSettings};
use crate::prepare::inpaint::MaskedContent;
use crate::prepare::modes::Img2ImgMode;
use crate::prepare::resize::ResizeMode;
use crate::sampling::schedule::Schedule;

/// A request and the id the client gave it (echoed in every answer to it).
#[derive(Debug)]
pub struct Envelope {
    /// The client's request id (any JSON value; null when absent).
    pub id: serde_json::Value,
    /// The request.
    pub request: Request,
}

/// What a client asks for.
#[derive(Debug)]
pub enum Request {
    /// First frame of a connection: protocol version and, over TCP, the token.
    Hello {
        protocol: u32,
        client: String,
        token: Option<String>,
    },
    /// Liveness check.
    Ping,
    /// Models, samplers, schedules, embeddings and limits.
    List,
    /// Load another model (queued like a job).
    SelectModel { model: String },
    /// An img2img job in one of the five modes.
    Generate(Box<GenerateRequest>),
    /// The infotext of a PNG.
    PngInfo { png: Vec<u8> },
    /// Stop a job (queued or running).
    Cancel { job: u64 },
}

/// An img2img job as received: parameters and images.
#[derive(Debug)]
pub struct GenerateRequest {
    /// Which A1111 tab.
    pub mode: Img2ImgMode,
    /// The job parameters.
    pub params: Img2ImgParams,
    /// The image.
    pub image: DynamicImage,
    /// The mask, for the inpaint modes.
    pub mask: Option<DynamicImage>,
    /// The sketch layer, for the sketch modes.
    pub sketch: Option<DynamicImage>,
    /// Inpaint sketch's mask transparency.
    pub mask_alpha: f64,
    /// Live previews on progress events (none unless asked for).
    pub preview: Option<PreviewSettings>,
}

/// Why a request was refused (becomes an `error` event with this code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// Machine-readable code: `bad_request`, `unknown_request`, `limit` …
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
}

impl RequestError {
    /// A `bad_request` error.
    pub fn bad(message: impl Into<String>) -> Self {
        RequestError {
            code: "bad_request",
            message: message.into(),
        }
    }
}

/// Job parameters on the wire (A1111 API names; every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireParams {
    prompt: Option<String>,
    negative_prompt: Option<String>,
    resize_mode: Option<serde_json::Value>,
    sampler_name: Option<String>,
    scheduler: Option<String>,
    steps: Option<usize>,
    cfg_scale: Option<f64>,
    denoising_strength: Option<f64>,
    seed: Option<i64>,
    subseed: Option<i64>,
    subseed_strength: Option<f64>,
    seed_resize_from_w: Option<u32>,
    seed_resize_from_h: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
    n_iter: Option<usize>,
    batch_size: Option<usize>,
    clip_skip: Option<usize>,
    mask_blur: Option<u32>,
    mask_blur_x: Option<u32>,
    mask_blur_y: Option<u32>,
    inpainting_mask_invert: Option<u8>,
    inpainting_fill: Option<u8>,
    inpaint_full_res: Option<bool>,
    inpaint_full_res_padding: Option<u32>,
    inpaint_min_context: Option<[u32; 2]>,
    inpainting_mask_weight: Option<f64>,
    initial_noise_multiplier: Option<f64>,
    eta_noise_seed_delta: Option<i64>,
    color_correction: Option<bool>,
    vae_tiling: Option<bool>,
    rng: Option<String>,
    init_latent: Option<String>,
    mask_alpha: Option<f64>,
    sampler_options: Option<BTreeMap<String, serde_json::Value>>,
}

/// The `preview` object on the wire: `{"method", "every"?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePreview {
    method: String,
    every: Option<i64>,
}

/// Reads the optional top-level `preview` field; absent or null means no previews.
fn preview_settings(header: &serde_json::Value) -> Result<Option<PreviewSettings>, RequestError> {
    let Some(wire) = field::<WirePreview>(header, "preview")? else {
        return Ok(None);
    };
    let bad = |e: crate::pipeline::preview::PreviewError| {
        RequestError::bad(format!("field \"preview\": {e}"))
    };
    let method: PreviewMethod = wire.method.parse().map_err(bad)?;
    PreviewSettings::new(method, wire.every.unwrap_or(1))
        .map(Some)
        .map_err(bad)
}

fn field<T: for<'de> Deserialize<'de>>(
    header: &serde_json::Value,
    name: &str,
) -> Result<Option<T>, RequestError> {
    match header.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| RequestError::bad(format!("field \"{name}\": {e}"))),
    }
}

fn required<T: for<'de> Deserialize<'de>>(
    header: &serde_json::Value,
    name: &str,
) -> Result<T, RequestError> {
    field(header, name)?.ok_or_else(|| RequestError::bad(format!("field \"{name}\" is missing")))
}

/// Reads the request of a frame.
pub fn parse_request(mut frame: Frame, max_pixels: u64) -> Result<Envelope, RequestError> {
    let header = &frame.header.clone();
    let id = header.get("id").cloned().unwrap_or(serde_json::Value::Null);
    let kind: String = required(header, "type")?;
    let request = match kind.as_str() {
        "hello" => Request::Hello {
            protocol: required(header, "protocol")?,
            client: field(header, "client")?.unwrap_or_default(),
            token: field(header, "token")?,
        },
        "ping" => Request::Ping,
        "list" => Request::List,
        "select_model" => Request::SelectModel {
            model: required(header, "model")?,
        },
        "cancel" => Request::Cancel {
            job: required(header, "job")?,
        },
        "png_info" => {
            let (attachment, bytes) = take_attachment(&mut frame, "image")
                .ok_or_else(|| RequestError::bad("png_info needs an \"image\" attachment"))?;
            if attachment.format != PixelFormat::Png {
                return Err(RequestError::bad("png_info needs a PNG attachment"));
            }
            Request::PngInfo { png: bytes }
        }
        "img2img" => Request::Generate(Box::new(generate_request(&mut frame, max_pixels)?)),
        other => {
            return Err(RequestError {
                code: "unknown_request",
                message: format!(
                    "unknown request type \"{other}\" (known: hello, ping, list, select_model, img2img, png_info, cancel)"
                ),
            })
        }
    };
    Ok(Envelope { id, request })
}

/// Moves the attachment `name` out of the frame (large images are not copied).
fn take_attachment(frame: &mut Frame, name: &str) -> Option<(Attachment, Vec<u8>)> {
    let index = frame.attachments.iter().position(|(a, _)| a.name == name)?;
    Some(frame.attachments.swap_remove(index))
}

/// Decodes an attachment into an image, refusing more than `max_pixels` pixels.
fn decode_image(
    (attachment, bytes): (Attachment, Vec<u8>),
    max_pixels: u64,
) -> Result<DynamicImage, RequestError> {
    let too_large = |w: u32, h: u32| RequestError {
        code: "limit",
        message: format!(
            "attachment \"{}\" is {w}x{h}, more than the daemon's limit of {max_pixels} pixels",
            attachment.name
        ),
    };
    let check = |w: u32, h: u32| {
        if u64::from(w) * u64::from(h) > max_pixels {
            Err(too_large(w, h))
        } else {
            Ok(())
        }
    };
    match attachment.format {
        PixelFormat::Rgba8 => {
            check(attachment.width, attachment.height)?;
            image::RgbaImage::from_raw(attachment.width, attachment.height, bytes)
                .map(DynamicImage::ImageRgba8)
                .ok_or_else(|| RequestError::bad("RGBA attachment of the wrong length"))
        }
        PixelFormat::Y8 => {
            check(attachment.width, attachment.height)?;
            image::GrayImage::from_raw(attachment.width, attachment.height, bytes)
                .map(DynamicImage::ImageLuma8)
                .ok_or_else(|| RequestError::bad("grey attachment of the wrong length"))
        }
        PixelFormat::Png => {
            let mut reader = image::ImageReader::with_format(
                std::io::Cursor::new(bytes),
                image::ImageFormat::Png,
            );
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(max_pixels.saturating_mul(16));
            reader.limits(limits);
            let decoded = reader.decode().map_err(|e| {
                RequestError::bad(format!("attachment \"{}\": {e}", attachment.name))
            })?;
            check(decoded.width(), decoded.height())?;
            Ok(decoded)
        }
    }
}

fn enum_value<T>(
    value: &str,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, RequestError> {
    parse(value)
        .ok_or_else(|| RequestError::bad(format!("field \"{name}\": unknown value \"{value}\"")))
}

fn generate_request(frame: &mut Frame, max_pixels: u64) -> Result<GenerateRequest, RequestError> {
    let header = &frame.header.clone();
    let mode_name: Option<String> = field(header, "mode")?;
    let wire: WireParams = field(header, "params")?.unwrap_or_default();
    let preview = preview_settings(header)?;
    let image = take_attachment(frame, "image")
        .ok_or_else(|| RequestError::bad("img2img needs an \"image\" attachment"))
        .and_then(|a| decode_image(a, max_pixels))?;
    let mask = take_attachment(frame, "mask")
        .map(|a| decode_image(a, max_pixels))
        .transpose()?;
    let sketch = take_attachment(frame, "sketch")
        .map(|a| decode_image(a, max_pixels))
        .transpose()?;
    let mode = match mode_name {
        Some(name) => enum_value(&name, "mode", |v| {
            <Img2ImgMode as clap::ValueEnum>::from_str(v, true).ok()
        })?,
        None => Img2ImgMode::implied(sketch.is_some(), mask.is_some()),
    };

    let mut params = Img2ImgParams {
        width: image.width(),
        height: image.height(),
        ..Img2ImgParams::default()
    };
    let p = &mut params;
    macro_rules! take {
        ($($wire:ident => $target:expr),* $(,)?) => {
            $(if let Some(value) = wire.$wire { $target = value; })*
        };
    }
    take!(
        prompt => p.prompt,
        negative_prompt => p.negative_prompt,
        sampler_name => p.sampler.sampler,
        steps => p.sampler.steps,
        cfg_scale => p.cfg_scale,
        denoising_strength => p.sampler.denoising_strength,
        seed => p.seed,
        subseed => p.subseed,
        subseed_strength => p.subseed_strength,
        width => p.width,
        height => p.height,
        n_iter => p.batch_count,
        batch_size => p.batch_size,
        clip_skip => p.clip_skip,
        initial_noise_multiplier => p.initial_noise_multiplier,
        eta_noise_seed_delta => p.eta_noise_seed_delta,
        color_correction => p.color_correction,
        vae_tiling => p.vae_tiling,
        inpaint_full_res => p.inpaint.only_masked,
        inpaint_full_res_padding => p.inpaint.only_masked_padding,
        inpainting_mask_weight => p.inpaint.mask_weight,
    );
    if let Some(mode) = &wire.resize_mode {
        let text = match mode {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        p.resize_mode = enum_value(&text, "resize_mode", ResizeMode::parse)?;
    }
    if let Some(name) = &wire.scheduler {
        p.sampler.schedule = Schedule::from_name(name)
            .map_err(|e| RequestError::bad(format!("field \"scheduler\": {e}")))?;
    }
    if let (Some(w), Some(h)) = (wire.seed_resize_from_w, wire.seed_resize_from_h) {
        p.seed_resize_from = (w > 0 && h > 0).then_some((w, h));
    }
    if let Some(blur) = wire.mask_blur {
        p.inpaint.mask_blur_x = blur;
        p.inpaint.mask_blur_y = blur;
    }
    take!(
        mask_blur_x => p.inpaint.mask_blur_x,
        mask_blur_y => p.inpaint.mask_blur_y,
    );
    if let Some(invert) = wire.inpainting_mask_invert {
        p.inpaint.invert = invert != 0;
    }
    if let Some(fill) = wire.inpainting_fill {
        p.inpaint.masked_content =
            enum_value(&fill.to_string(), "inpainting_fill", MaskedContent::parse)?;
    }
    if let Some([w, h]) = wire.inpaint_min_context {
        p.inpaint.min_context = Some((w, h));
    }
    if let Some(rng) = &wire.rng {
        p.rng = enum_value(rng, "rng", |v| {
            <RngChoice as clap::ValueEnum>::from_str(v, true).ok()
        })?;
    }
    if let Some(init) = &wire.init_latent {
        p.init_latent = enum_value(init, "init_latent", |v| {
            <InitLatentMode as clap::ValueEnum>::from_str(v, true).ok()
        })?;
    }
    for (name, value) in wire.sampler_options.unwrap_or_default() {
        let value = match value {
            serde_json::Value::Number(n) => OptionValue::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => OptionValue::Text(s.into()),
            other => {
                return Err(RequestError::bad(format!(
                    "sampler option \"{name}\" must be a number or a string, got {other}"
                )))
            }
        };
        p.sampler.options.push((name, value));
    }
    Ok(GenerateRequest {
        mode,
        params,
        image,
        mask,
        sketch,
        mask_alpha: wire.mask_alpha.unwrap_or(0.0),
        preview,
    })
}
