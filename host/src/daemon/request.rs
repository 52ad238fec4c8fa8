//! Requests a client can send, read from frame headers (docs/protocol.md). Job parameters use
//! the field names of A1111's `/sdapi/v1/img2img` so existing client code maps over directly.

use image::DynamicImage;
use serde::Deserialize;

use super::protocol::{Attachment, Frame, PixelFormat};
use crate::pipeline::preview::{PreviewMethod, PreviewSettings};
use crate::prepare::modes::Img2ImgMode;
use crate::request::GenerationRequest;

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
    pub params: GenerationRequest,
    /// The image.
    pub image: DynamicImage,
    /// The mask, for the inpaint modes.
    pub mask: Option<DynamicImage>,
    /// The sketch layer, for the sketch modes.
    pub sketch: Option<DynamicImage>,
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

fn generate_request(frame: &mut Frame, max_pixels: u64) -> Result<GenerateRequest, RequestError> {
    let header = &frame.header.clone();
    let mode_name: Option<String> = field(header, "mode")?;
    let changes: serde_json::Map<String, serde_json::Value> =
        field(header, "params")?.unwrap_or_default();
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
        Some(name) => Img2ImgMode::parse(&name).ok_or_else(|| {
            RequestError::bad(format!("field \"mode\": unknown value \"{name}\""))
        })?,
        None => Img2ImgMode::implied(sketch.is_some(), mask.is_some()),
    };
    // The image's size unless the request sets one.
    let base = GenerationRequest {
        width: image.width(),
        height: image.height(),
        ..GenerationRequest::ui_defaults()
    };
    let params = base
        .overlay(&changes)
        .map_err(|e| RequestError::bad(format!("params: {e}")))?;
    Ok(GenerateRequest {
        mode,
        params,
        image,
        mask,
        sketch,
        preview,
    })
}
