//! The `upscale` request (docs/protocol.md): one picture through an upscaler as A1111's extras
//! tab upscales it ([`crate::upscale::extras`], which the HTTP API's extras run too), by a
//! scale or to cover a size. Everything a client can get wrong is refused before the job is
//! queued; the worker runs it like any job and answers with one `result`, then `done`.

use image::{GrayImage, Rgb, RgbImage, RgbaImage};
use schemars::JsonSchema;
use serde::Deserialize;

use super::attachments::{decode_image, take_attachment, RequestError};
use super::event::ErrorCode;
use super::protocol::Attachment;
use crate::prepare::resample::{resize, Filter};
use crate::upscale::extras::{ExtrasUpscale, UpscaleSize};
use crate::upscale::{Upscaler, UpscalerDirs};

/// The largest scale `upscale` takes (by `scale`, or implied by a target size): A1111's
/// extras slider ends at 8.
pub const MAX_SCALE: f64 = 8.0;

/// The header of an `upscale` request.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpscaleRequest {
    /// The upscaler's name, one of `welcome`'s `upscalers`.
    pub upscaler: String,
    /// Scale both sides by this (0 < scale ≤ 8; default 2), A1111's resize mode 0.
    #[serde(default)]
    pub scale: Option<f64>,
    /// With `height`, instead of `scale`: the scale that covers `width` × `height` (A1111's
    /// resize mode 1 without crop).
    #[serde(default)]
    pub width: Option<u32>,
    /// With `width`: see there.
    #[serde(default)]
    pub height: Option<u32>,
    /// A second upscaler, blended in by `upscaler_2_visibility`.
    #[serde(default)]
    pub upscaler_2: Option<String>,
    /// How much of the second upscaler's result is blended in, 0-1 (default 0).
    #[serde(default)]
    pub upscaler_2_visibility: Option<f64>,
}

/// An `upscale` as accepted: the picture, its alpha when it has any, and the upscale.
#[derive(Debug)]
pub struct UpscaleJob {
    /// The picture's colours.
    pub image: RgbImage,
    /// Its alpha, when some pixel is not opaque (resized to the result's size with Lanczos:
    /// the upscalers see colours only, as A1111's `convert("RGB")` gives them).
    pub alpha: Option<GrayImage>,
    /// The upscale.
    pub upscale: ExtrasUpscale,
}

fn invalid(message: impl Into<String>) -> RequestError {
    RequestError {
        code: ErrorCode::InvalidParams,
        message: format!("upscale: {}", message.into()),
    }
}

/// Checks that `name` is an upscaler of `names`, naming them when it is not.
fn check_name(field: &str, name: &str, names: &[String]) -> Result<(), RequestError> {
    if names.iter().any(|n| n == name) {
        return Ok(());
    }
    Err(invalid(format!(
        "{field}: no upscaler \"{name}\" (known: {})",
        names.join(", ")
    )))
}

impl UpscaleRequest {
    /// The job: names, scale and size checked against `dirs` and `max_pixels`, the `image`
    /// attachment decoded; nothing is loaded or upscaled yet.
    pub fn into_job(
        self,
        mut attachments: Vec<(Attachment, Vec<u8>)>,
        max_pixels: u64,
        dirs: &UpscalerDirs,
    ) -> Result<UpscaleJob, RequestError> {
        let names: Vec<String> = Upscaler::all(dirs)
            .iter()
            .map(|u| u.name().to_string())
            .collect();
        check_name("upscaler", &self.upscaler, &names)?;
        let upscaler_2 = self.upscaler_2.unwrap_or_else(|| "None".into());
        check_name("upscaler_2", &upscaler_2, &names)?;
        let visibility = self.upscaler_2_visibility.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&visibility) {
            return Err(invalid(format!(
                "upscaler_2_visibility {visibility} is not between 0 and 1"
            )));
        }
        let size = match (self.scale, self.width, self.height) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(invalid("give scale, or width and height, not both"))
            }
            (_, Some(_), None) | (_, None, Some(_)) => {
                return Err(invalid("width and height go together"))
            }
            (_, Some(0), _) | (_, _, Some(0)) => {
                return Err(invalid("width and height must be ≥ 1"))
            }
            (_, Some(width), Some(height)) => UpscaleSize::To {
                width,
                height,
                crop: false,
            },
            (scale, None, None) => UpscaleSize::By(scale.unwrap_or(2.0)),
        };
        let image = take_attachment(&mut attachments, "image")
            .ok_or_else(|| RequestError::bad("upscale needs an \"image\" attachment"))
            .and_then(|a| decode_image(a, max_pixels))?
            .to_rgba8();
        let upscale = ExtrasUpscale {
            size,
            upscaler_1: self.upscaler,
            upscaler_2,
            upscaler_2_visibility: visibility,
        };
        check_size(&upscale, image.dimensions(), max_pixels)?;
        let (rgb, alpha) = split_alpha(&image);
        Ok(UpscaleJob {
            image: rgb,
            alpha,
            upscale,
        })
    }
}

/// The scale (asked for, or implied by a target size) within (0, 8], and a result of at least
/// one pixel and at most `max_pixels`.
fn check_size(
    upscale: &ExtrasUpscale,
    (width, height): (u32, u32),
    max_pixels: u64,
) -> Result<(), RequestError> {
    let scale = upscale.scale_for(width, height);
    if !(scale > 0.0 && scale <= MAX_SCALE) {
        return Err(invalid(format!(
            "scale {scale} is not within (0, {MAX_SCALE}] (a {width}x{height} picture)"
        )));
    }
    let (out_w, out_h) = upscale.output_size(width, height);
    if out_w == 0 || out_h == 0 {
        return Err(invalid(format!(
            "the result would be {out_w}x{out_h} (a {width}x{height} picture by {scale})"
        )));
    }
    if u64::from(out_w) * u64::from(out_h) > max_pixels {
        return Err(RequestError {
            code: ErrorCode::Limit,
            message: format!(
                "upscale: the result would be {out_w}x{out_h}, more than the daemon's limit of \
                 {max_pixels} pixels"
            ),
        });
    }
    Ok(())
}

/// The colours, and the alpha when some pixel is not opaque.
fn split_alpha(image: &RgbaImage) -> (RgbImage, Option<GrayImage>) {
    let rgb = RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let p = image.get_pixel(x, y);
        Rgb([p[0], p[1], p[2]])
    });
    let opaque = image.pixels().all(|p| p[3] == 255);
    let alpha = (!opaque).then(|| {
        GrayImage::from_fn(image.width(), image.height(), |x, y| {
            image::Luma([image.get_pixel(x, y)[3]])
        })
    });
    (rgb, alpha)
}

/// The result's colours with `alpha` (resized with Lanczos to their size) or opaque.
pub(super) fn join_alpha(image: &RgbImage, alpha: Option<&GrayImage>) -> RgbaImage {
    let (width, height) = image.dimensions();
    let alpha = alpha.map(|a| {
        let grey = RgbImage::from_fn(a.width(), a.height(), |x, y| {
            let v = a.get_pixel(x, y)[0];
            Rgb([v, v, v])
        });
        if grey.dimensions() == (width, height) {
            grey
        } else {
            resize(&grey, width, height, Filter::Lanczos, None)
        }
    });
    RgbaImage::from_fn(width, height, |x, y| {
        let p = image.get_pixel(x, y);
        let a = alpha.as_ref().map_or(255, |a| a.get_pixel(x, y)[0]);
        image::Rgba([p[0], p[1], p[2], a])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::protocol::PixelFormat;

    fn rgba(width: u32, height: u32, alpha: u8) -> Vec<(Attachment, Vec<u8>)> {
        let bytes: Vec<u8> = (0..width * height)
            .flat_map(|i| [(i % 251) as u8, 7, 9, alpha])
            .collect();
        vec![(
            Attachment {
                name: "image".into(),
                format: PixelFormat::Rgba8,
                width,
                height,
                length: bytes.len() as u64,
            },
            bytes,
        )]
    }

    fn request(header: serde_json::Value) -> UpscaleRequest {
        serde_json::from_value(header).unwrap()
    }

    fn refused(header: serde_json::Value, max_pixels: u64) -> RequestError {
        request(header)
            .into_job(rgba(10, 6, 255), max_pixels, &UpscalerDirs::default())
            .unwrap_err()
    }

    #[test]
    fn requests_are_checked_before_any_work() {
        let dirs = UpscalerDirs::default();
        let job = request(serde_json::json!({"upscaler": "Lanczos"}))
            .into_job(rgba(10, 6, 255), 1000, &dirs)
            .unwrap();
        assert_eq!(job.upscale.size, UpscaleSize::By(2.0));
        assert!(job.alpha.is_none());
        let job = request(serde_json::json!({"upscaler": "Nearest", "width": 30, "height": 9}))
            .into_job(rgba(10, 6, 128), 1000, &dirs)
            .unwrap();
        assert_eq!(job.alpha.unwrap().get_pixel(0, 0)[0], 128);

        let unknown = refused(serde_json::json!({"upscaler": "4x-UltraSharp"}), 1000);
        assert_eq!(unknown.code, ErrorCode::InvalidParams);
        assert!(
            unknown.message.contains("known: None, Lanczos, Nearest"),
            "{}",
            unknown.message
        );
        for scale in [0.0, -1.0, 8.5, 1e300] {
            let error = refused(
                serde_json::json!({"upscaler": "Lanczos", "scale": scale}),
                1000,
            );
            assert_eq!(error.code, ErrorCode::InvalidParams, "{scale}");
        }
        // 10x6 to cover 100x10 is a scale of 10.
        let far = refused(
            serde_json::json!({"upscaler": "Lanczos", "width": 100, "height": 10}),
            100_000,
        );
        assert_eq!(far.code, ErrorCode::InvalidParams);
        let large = refused(serde_json::json!({"upscaler": "Lanczos", "scale": 8}), 1000);
        assert_eq!(large.code, ErrorCode::Limit);
        assert!(large.message.contains("80x48"), "{}", large.message);
        let tiny = refused(
            serde_json::json!({"upscaler": "Lanczos", "scale": 0.5}),
            1000,
        );
        assert!(tiny.message.contains("0x0"), "{}", tiny.message);
        for header in [
            serde_json::json!({"upscaler": "Lanczos", "width": 20}),
            serde_json::json!({"upscaler": "Lanczos", "scale": 2, "width": 20, "height": 20}),
            serde_json::json!({"upscaler": "Lanczos", "upscaler_2": "Nearest",
                               "upscaler_2_visibility": 1.5}),
            serde_json::json!({"upscaler": "Lanczos", "upscaler_2": "DAT"}),
        ] {
            assert_eq!(
                refused(header.clone(), 1000).code,
                ErrorCode::InvalidParams,
                "{header}"
            );
        }
        let missing = request(serde_json::json!({"upscaler": "Lanczos"}))
            .into_job(Vec::new(), 1000, &dirs)
            .unwrap_err();
        assert_eq!(missing.code, ErrorCode::BadRequest);
    }

    #[test]
    fn alpha_is_kept_and_resized_with_the_colours() {
        let image = RgbaImage::from_fn(4, 4, |x, _| image::Rgba([9, 9, 9, (x * 60) as u8]));
        let (rgb, alpha) = split_alpha(&image);
        let same = join_alpha(&rgb, alpha.as_ref());
        assert_eq!(same, image);
        let big = join_alpha(&RgbImage::new(8, 8), alpha.as_ref());
        assert!(big.get_pixel(0, 0)[3] < 30 && big.get_pixel(7, 0)[3] > 150);
        let opaque = join_alpha(&rgb, None);
        assert!(opaque.pixels().all(|p| p[3] == 255));
    }
}
