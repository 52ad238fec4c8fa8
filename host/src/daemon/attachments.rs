//! A request's attachments taken by name and decoded within the daemon's pixel limit, and the
//! error a refused request gets: shared by every request type's checks.

use image::DynamicImage;

use super::event::ErrorCode;
use super::protocol::{Attachment, PixelFormat};

/// Why a request was refused (becomes an `error` event with this code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Machine-readable: `bad_request`, `unknown_request`, `limit` …
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
}

impl RequestError {
    /// A `bad_request` error.
    pub fn bad(message: impl Into<String>) -> Self {
        RequestError {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// Moves the attachment `name` out of the list (large images are not copied).
pub(super) fn take_attachment(
    attachments: &mut Vec<(Attachment, Vec<u8>)>,
    name: &str,
) -> Option<(Attachment, Vec<u8>)> {
    let index = attachments.iter().position(|(a, _)| a.name == name)?;
    Some(attachments.swap_remove(index))
}

/// Decodes an attachment into an image, refusing more than `max_pixels` pixels.
pub(super) fn decode_image(
    (attachment, bytes): (Attachment, Vec<u8>),
    max_pixels: u64,
) -> Result<DynamicImage, RequestError> {
    let too_large = |w: u32, h: u32| RequestError {
        code: ErrorCode::Limit,
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
            let reader = || {
                image::ImageReader::with_format(
                    std::io::Cursor::new(bytes.as_slice()),
                    image::ImageFormat::Png,
                )
            };
            let unreadable = |e: image::ImageError| {
                RequestError::bad(format!("attachment \"{}\": {e}", attachment.name))
            };
            // The header's size, before any pixel is decoded: a limit error, not a decode one.
            let (width, height) = reader().into_dimensions().map_err(unreadable)?;
            check(width, height)?;
            let mut reader = reader();
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(max_pixels.saturating_mul(16));
            reader.limits(limits);
            let decoded = reader.decode().map_err(unreadable)?;
            check(decoded.width(), decoded.height())?;
            Ok(decoded)
        }
    }
}
