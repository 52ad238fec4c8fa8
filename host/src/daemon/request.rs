//! Requests a client can send (docs/protocol.md): [`Request`], one variant per wire `type`,
//! read from the frame header by serde; images come from the frame's attachments when a job
//! is accepted ([`Img2imgRequest::into_job`]). Job parameters use the field names of A1111's
//! `/sdapi/v1/img2img` and `/sdapi/v1/txt2img` so existing client code maps over directly.

use image::{DynamicImage, GrayImage, RgbImage};
use schemars::JsonSchema;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub use super::attachments::RequestError;
use super::attachments::{decode_image, take_attachment};
use super::event::ErrorCode;
use super::protocol::{message_types, Attachment, Frame, PixelFormat};
use crate::interrogate::interrogator::check_options;
use crate::interrogate::options::read_interrogate_options;
use crate::interrogate::{InterrogateMethod, InterrogateOptions};
use crate::pipeline::preview::{PreviewMethod, PreviewSettings};
use crate::prepare::init_image::DEFAULT_BACKGROUND;
use crate::prepare::modes::{Img2ImgMode, ModeError, ModeInputs};
use crate::request::GenerationRequest;
use crate::scripts::{Script, Tab};

/// A request, its id and the attachments that came with it.
#[derive(Debug)]
pub struct Envelope {
    /// The client's request id (any JSON value; null when absent), echoed in every answer.
    pub id: Value,
    /// The request.
    pub request: Request,
    /// The frame's attachments with their bytes.
    pub attachments: Vec<(Attachment, Vec<u8>)>,
}

/// What a client asks for: a frame header. Fields not named here (`id`, `attachments`) are
/// the frame's; other unknown fields are ignored, as clients of protocol 1 may send them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First frame of a connection: protocol version and, over TCP, the token.
    Hello {
        protocol: u32,
        /// The client's name and version, for logs.
        #[serde(default)]
        client: Option<String>,
        #[serde(default)]
        token: Option<String>,
    },
    /// Liveness check.
    Ping,
    /// Models, samplers, schedules, embeddings and limits.
    List,
    /// Load another model (queued like a job).
    SelectModel { model: String },
    /// An img2img job in one of the five modes (attachments `image`, `mask`, `sketch`).
    Img2img(Img2imgRequest),
    /// A txt2img job, with A1111's Hires. fix when `params` enable it (no attachments).
    Txt2img(Txt2imgRequest),
    /// The infotext of a PNG (attachment `image`), or of `infotext` text, read as a request.
    PngInfo {
        /// Infotext to read instead of a PNG's (added within protocol 1).
        #[serde(default)]
        infotext: Option<String>,
    },
    /// Stop a job (queued or running).
    Cancel { job: u64 },
    /// A prompt from the picture of attachment `image`, as A1111's "Interrogate CLIP" or
    /// "Interrogate DeepBooru" makes it (queued like a job; the answer is `done` with a
    /// `caption`).
    Interrogate(InterrogateRequest),
    /// The picture of attachment `image` through an upscaler, as A1111's extras tab upscales
    /// (queued like a job; the answer is a `result` with the picture, then `done`).
    Upscale(super::upscale::UpscaleRequest),
}

/// The header of an `interrogate` request.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct InterrogateRequest {
    /// `clip` or `deepbooru` (`deepdanbooru`, the HTTP API's name, too).
    pub method: String,
    /// A1111's interrogation options (`interrogate_return_ranks`, `deepbooru_sort_alpha` …)
    /// over its defaults.
    #[serde(default)]
    #[schemars(with = "Option<Map<String, Value>>")]
    pub options: Option<Map<String, Value>>,
}

/// An interrogation as accepted: the picture (alpha dropped as A1111's `convert("RGB")`
/// does), the method and the options.
#[derive(Debug)]
pub struct InterrogateJob {
    /// The picture.
    pub image: image::RgbImage,
    /// Which button.
    pub method: InterrogateMethod,
    /// A1111's options.
    pub options: InterrogateOptions,
}

impl InterrogateRequest {
    /// The job: method and options checked, the `image` attachment decoded (at most
    /// `max_pixels`).
    pub fn into_job(
        self,
        mut attachments: Vec<(Attachment, Vec<u8>)>,
        max_pixels: u64,
    ) -> Result<InterrogateJob, RequestError> {
        let method = InterrogateMethod::parse(&self.method).ok_or_else(|| {
            RequestError::bad(format!(
                "interrogate: unknown method \"{}\" (clip, deepbooru)",
                self.method
            ))
        })?;
        let options = read_interrogate_options(&self.options.unwrap_or_default())
            .map_err(|e| RequestError::bad(format!("interrogate: options: {e}")))?;
        check_options(&options).map_err(|e| RequestError {
            code: ErrorCode::InvalidParams,
            message: e.to_string(),
        })?;
        let image = take_attachment(&mut attachments, "image")
            .ok_or_else(|| RequestError::bad("interrogate needs an \"image\" attachment"))
            .and_then(|a| decode_image(a, max_pixels))?
            .to_rgb8();
        Ok(InterrogateJob {
            image,
            method,
            options,
        })
    }
}

impl Request {
    /// Every `type` a request can have, from the schema (for docs and their test).
    pub fn types() -> Vec<String> {
        message_types::<Request>()
    }
}

/// The header of an `img2img` request.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Img2imgRequest {
    /// Which A1111 tab; without it, implied by the attachments.
    #[serde(default, deserialize_with = "mode_field")]
    #[schemars(with = "Option<String>")]
    pub mode: Option<Img2ImgMode>,
    /// Job parameters laid over A1111's UI defaults at the image's size.
    #[serde(default)]
    pub params: Option<Map<String, Value>>,
    /// Live previews on progress events (none unless asked for).
    #[serde(default, deserialize_with = "preview_field")]
    #[schemars(with = "Option<WirePreview>")]
    pub preview: Option<PreviewSettings>,
    /// A script of A1111's dropdown to run over the job ("X/Y/Z plot"; any case).
    #[serde(default)]
    pub script_name: Option<String>,
    /// The script's arguments, positional as A1111's API `script_args`.
    #[serde(default)]
    pub script_args: Vec<Value>,
}

/// The header of a `txt2img` request.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Txt2imgRequest {
    /// Job parameters laid over A1111's txt2img tab defaults.
    #[serde(default)]
    pub params: Option<Map<String, Value>>,
    /// Live previews on progress events (none unless asked for).
    #[serde(default, deserialize_with = "preview_field")]
    #[schemars(with = "Option<WirePreview>")]
    pub preview: Option<PreviewSettings>,
    /// A script of A1111's dropdown to run over the job ("X/Y/Z plot"; any case).
    #[serde(default)]
    pub script_name: Option<String>,
    /// The script's arguments, positional as A1111's API `script_args`.
    #[serde(default)]
    pub script_args: Vec<Value>,
}

/// The script a request names (none when `name` is absent or empty).
fn request_script(
    name: Option<&str>,
    args: &[Value],
    tab: Tab,
) -> Result<Option<Script>, RequestError> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(name) => Script::from_api(name, args, tab)
            .map(Some)
            .map_err(|e| RequestError::bad(e.to_string())),
    }
}

/// A txt2img job as accepted.
#[derive(Debug)]
pub struct Txt2imgJob {
    /// The job parameters.
    pub params: GenerationRequest,
    /// Live previews on progress events (none unless asked for).
    pub preview: Option<PreviewSettings>,
    /// The script run over it, if any.
    pub script: Option<Script>,
}

impl Txt2imgRequest {
    /// The job: `params` laid over A1111's txt2img tab defaults (attachments are not read:
    /// txt2img takes none).
    pub fn into_job(self) -> Result<Txt2imgJob, RequestError> {
        let params = GenerationRequest::txt2img_ui_defaults()
            .overlay(&self.params.unwrap_or_default())
            .map_err(|e| RequestError::bad(format!("params: {e}")))?;
        let script = request_script(self.script_name.as_deref(), &self.script_args, Tab::Txt2img)?;
        Ok(Txt2imgJob {
            params,
            preview: self.preview,
            script,
        })
    }
}

/// An img2img job as accepted: parameters and images.
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
    /// The script run over it, if any.
    pub script: Option<Script>,
}

impl GenerateRequest {
    /// The init image (RGB) and mask of the job, as its mode makes them from the layers sent.
    pub fn prepare(&self) -> Result<(RgbImage, Option<GrayImage>), ModeError> {
        self.mode.prepare(&ModeInputs {
            image: &self.image,
            sketch: self.sketch.as_ref(),
            mask: self.mask.as_ref(),
            mask_alpha: self.params.mask_alpha,
            mask_blur: self.params.inpaint.mask_blur_x,
            background: DEFAULT_BACKGROUND,
        })
    }
}

/// The `preview` object on the wire: `{"method", "every"?}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WirePreview {
    method: String,
    every: Option<i64>,
}

/// Reads `mode`, naming the field when it is wrong.
fn mode_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Img2ImgMode>, D::Error> {
    let Some(name) = Option::<String>::deserialize(d)
        .map_err(|e| D::Error::custom(format!("field \"mode\": {e}")))?
    else {
        return Ok(None);
    };
    Img2ImgMode::parse(&name)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("field \"mode\": unknown value \"{name}\"")))
}

/// Reads `preview` into checked settings; absent or null means no previews.
fn preview_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PreviewSettings>, D::Error> {
    let named = |e: &dyn std::fmt::Display| D::Error::custom(format!("field \"preview\": {e}"));
    let Some(wire) = Option::<WirePreview>::deserialize(d).map_err(|e| named(&e))? else {
        return Ok(None);
    };
    let method: PreviewMethod = wire.method.parse().map_err(|e| named(&e))?;
    PreviewSettings::new(method, wire.every.unwrap_or(1))
        .map(Some)
        .map_err(|e| named(&e))
}

/// Reads the request of a frame. The `type` is checked first so that an unknown one is told
/// apart from a known one with bad fields.
pub fn parse_request(frame: Frame) -> Result<Envelope, RequestError> {
    let Frame {
        header,
        attachments,
    } = frame;
    let id = header.get("id").cloned().unwrap_or(Value::Null);
    let kind = match header.get("type") {
        None | Some(Value::Null) => return Err(RequestError::bad("field \"type\" is missing")),
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => {
            return Err(RequestError::bad(format!(
                "field \"type\": expected a string, got {other}"
            )))
        }
    };
    let known = Request::types();
    if !known.contains(&kind) {
        return Err(RequestError {
            code: ErrorCode::UnknownRequest,
            message: format!(
                "unknown request type \"{kind}\" (known: {})",
                known.join(", ")
            ),
        });
    }
    let request =
        Request::deserialize(&header).map_err(|e| RequestError::bad(format!("{kind}: {e}")))?;
    Ok(Envelope {
        id,
        request,
        attachments,
    })
}

/// The bytes of the PNG a `png_info` request carries.
pub fn png_attachment(
    attachments: &mut Vec<(Attachment, Vec<u8>)>,
) -> Result<Vec<u8>, RequestError> {
    let (attachment, bytes) = take_attachment(attachments, "image")
        .ok_or_else(|| RequestError::bad("png_info needs an \"image\" attachment"))?;
    if attachment.format != PixelFormat::Png {
        return Err(RequestError::bad("png_info needs a PNG attachment"));
    }
    Ok(bytes)
}

impl Img2imgRequest {
    /// The job: images decoded from `attachments` (each at most `max_pixels`), the mode
    /// implied by them when the request names none, and `params` laid over A1111's UI
    /// defaults at the image's size.
    pub fn into_job(
        self,
        mut attachments: Vec<(Attachment, Vec<u8>)>,
        max_pixels: u64,
    ) -> Result<GenerateRequest, RequestError> {
        let image = take_attachment(&mut attachments, "image")
            .ok_or_else(|| RequestError::bad("img2img needs an \"image\" attachment"))
            .and_then(|a| decode_image(a, max_pixels))?;
        let mut optional = |name| {
            take_attachment(&mut attachments, name)
                .map(|a| decode_image(a, max_pixels))
                .transpose()
        };
        let mask = optional("mask")?;
        let sketch = optional("sketch")?;
        let mode = self
            .mode
            .unwrap_or_else(|| Img2ImgMode::implied(sketch.is_some(), mask.is_some()));
        // The image's size unless the request sets one.
        let base = GenerationRequest {
            width: image.width(),
            height: image.height(),
            ..GenerationRequest::ui_defaults()
        };
        let params = base
            .overlay(&self.params.unwrap_or_default())
            .map_err(|e| RequestError::bad(format!("params: {e}")))?;
        let script = request_script(self.script_name.as_deref(), &self.script_args, Tab::Img2img)?;
        Ok(GenerateRequest {
            mode,
            params,
            image,
            mask,
            sketch,
            preview: self.preview,
            script,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(header: Value) -> Result<Request, RequestError> {
        parse_request(Frame {
            header,
            attachments: Vec::new(),
        })
        .map(|envelope| envelope.request)
    }

    #[test]
    fn every_type_is_known_and_read_by_serde() {
        assert_eq!(
            Request::types(),
            [
                "hello",
                "ping",
                "list",
                "select_model",
                "img2img",
                "txt2img",
                "png_info",
                "cancel",
                "interrogate",
                "upscale"
            ]
        );
        let hello = parse(json!({"type": "hello", "id": 1, "protocol": 1, "client": null}));
        assert!(matches!(
            hello,
            Ok(Request::Hello {
                protocol: 1,
                client: None,
                token: None
            })
        ));
        // Fields of the frame and fields a newer client adds are not the request's business.
        assert!(matches!(
            parse(json!({"type": "list", "id": "a", "attachments": [], "since": 3})),
            Ok(Request::List)
        ));
        assert!(matches!(
            parse(json!({"type": "cancel", "job": 12})),
            Ok(Request::Cancel { job: 12 })
        ));
    }

    #[test]
    fn refusals_name_the_type_or_field() {
        let refused = |header| parse(header).unwrap_err();
        let error = refused(json!({"type": "teleport"}));
        assert_eq!(error.code, ErrorCode::UnknownRequest);
        assert!(error.message.contains("img2img"), "{error}");
        for (header, needle) in [
            (json!({"id": 1}), "\"type\" is missing"),
            (json!({"type": 3}), "\"type\""),
            (json!({"type": "hello"}), "protocol"),
            (json!({"type": "select_model"}), "model"),
            (json!({"type": "img2img", "mode": "outpaint"}), "\"mode\""),
            (json!({"type": "img2img", "mode": 2}), "\"mode\""),
            (json!({"type": "img2img", "params": [1]}), "img2img"),
            (
                json!({"type": "img2img", "preview": {"method": "Full", "evry": 1}}),
                "\"preview\"",
            ),
            (json!({"type": "img2img", "preview": "Full"}), "\"preview\""),
            (json!({"type": "txt2img", "params": 3}), "txt2img"),
            (
                json!({"type": "txt2img", "preview": {"method": "Fast"}}),
                "\"preview\"",
            ),
        ] {
            let error = refused(header.clone());
            assert_eq!(error.code, ErrorCode::BadRequest, "{header}");
            assert!(error.message.contains(needle), "{header}: {error}");
        }
    }

    #[test]
    fn jobs_take_their_images_from_the_attachments() {
        let Ok(Request::Img2img(header)) =
            parse(json!({"type": "img2img", "params": {"steps": 3}}))
        else {
            panic!("an img2img request")
        };
        let grey = |name: &str, side: u32| {
            let attachment = Attachment {
                name: name.into(),
                format: PixelFormat::Y8,
                width: side,
                height: side,
                length: u64::from(side * side),
            };
            (attachment, vec![255; (side * side) as usize])
        };
        let job = header
            .into_job(vec![grey("mask", 4), grey("image", 4)], 100)
            .unwrap();
        assert_eq!(job.mode, Img2ImgMode::implied(false, true));
        assert_eq!((job.params.width, job.params.sampler.steps), (4, 3));
        let Ok(Request::Img2img(header)) = parse(json!({"type": "img2img"})) else {
            panic!("an img2img request")
        };
        let error = header.into_job(vec![grey("image", 20)], 100).unwrap_err();
        assert_eq!(error.code, ErrorCode::Limit);
    }

    #[test]
    fn a_png_over_the_pixel_limit_is_a_limit_error_from_its_header() {
        let png = |side: u32| {
            let mut bytes = Vec::new();
            image::GrayImage::new(side, side)
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .unwrap();
            let attachment = Attachment {
                name: "image".into(),
                format: PixelFormat::Png,
                width: 0,
                height: 0,
                length: bytes.len() as u64,
            };
            (attachment, bytes)
        };
        assert_eq!(decode_image(png(10), 100).unwrap().width(), 10);
        let error = decode_image(png(11), 100).unwrap_err();
        assert_eq!(error.code, ErrorCode::Limit, "{}", error.message);
        assert!(error.message.contains("11x11"), "{}", error.message);
        // A header claiming 100000×100000 over a few bytes: refused before any decoding.
        let (attachment, mut bytes) = png(1);
        bytes[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let error = decode_image((attachment, bytes), 1 << 20).unwrap_err();
        assert_eq!(error.code, ErrorCode::Limit, "{}", error.message);
    }

    /// The PNG chunk checksum (CRC-32, ISO 3309).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn txt2img_params_lie_over_the_ui_defaults() {
        let Ok(Request::Txt2img(header)) = parse(json!({"type": "txt2img",
            "params": {"steps": 3, "width": 256}, "preview": {"method": "Full", "every": 2}}))
        else {
            panic!("a txt2img request")
        };
        let job = header.into_job().unwrap();
        let defaults = GenerationRequest::txt2img_ui_defaults();
        assert_eq!((job.params.sampler.steps, job.params.width), (3, 256));
        assert_eq!(job.params.height, defaults.height);
        assert_eq!(job.params.sampler.denoising_strength, 0.7);
        assert!(job.preview.is_some());
        let Ok(Request::Txt2img(header)) =
            parse(json!({"type": "txt2img", "params": {"stepz": 3}}))
        else {
            panic!("a txt2img request")
        };
        let error = header.into_job().unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(error.message.contains("stepz"), "{error}");
    }

    #[test]
    fn scripts_are_named_as_a1111s_api_names_them() {
        let job = |header: Value| {
            let Ok(Request::Txt2img(header)) = parse(header) else {
                panic!("a txt2img request")
            };
            header.into_job()
        };
        let plot = job(json!({"type": "txt2img", "script_name": "x/y/z plot",
            "script_args": [5, "1,2"]}))
        .unwrap();
        let Some(Script::XyzPlot(args)) = plot.script else {
            panic!("the X/Y/Z plot")
        };
        assert_eq!(args.axes[0].axis.label, "Hires steps", "txt2img's index 5");
        assert!(job(json!({"type": "txt2img", "script_name": ""}))
            .unwrap()
            .script
            .is_none());
        let error = job(json!({"type": "txt2img", "script_name": "Loopback 2"})).unwrap_err();
        assert_eq!(error.message, "Script 'Loopback 2' not found");
    }
}
