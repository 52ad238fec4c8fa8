//! Images in and out of the API as A1111 reads and writes them (`modules/api/api.py:
//! decode_base64_to_image, encode_pil_to_base64`): in, bare base64 or a `data:image/…;base64,`
//! URL, decoded leniently like Python's `b64decode`, its size checked against the daemon's
//! pixel limit before any pixel is decoded; out, bare base64 PNG with the infotext in its
//! `parameters` text chunk.

use std::io::Cursor;

use axum::http::StatusCode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use image::{DynamicImage, RgbImage};

use super::error::ApiError;
use crate::pipeline::png_info::png_bytes;

/// Python's `b64decode` after its non-alphabet characters are dropped: padding is checked by
/// the caller, trailing bits are ignored.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// The base64 text of an image field: A1111 takes what follows the first `,` after the first
/// `;` of a `data:image/` URL, and the whole string otherwise.
fn payload(text: &str) -> Result<&str, ApiError> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("data:image/") {
        return rest
            .split(';')
            .nth(1)
            .and_then(|part| part.split(',').nth(1))
            .ok_or_else(ApiError::invalid_image);
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        // A1111 fetches these when its option allows; a daemon that fetches URLs for its
        // callers is a request forgery waiting to happen, so sdhost never does.
        return Err(ApiError::http(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Requests not allowed",
        ));
    }
    Ok(text)
}

/// Decodes base64 as Python's non-strict `b64decode`: characters outside the alphabet are
/// skipped, the data ends at the first `=`, and the padding must complete the last quantum.
pub fn lenient_base64(text: &str) -> Option<Vec<u8>> {
    let mut data = Vec::with_capacity(text.len());
    let mut pads = 0;
    for byte in text.bytes() {
        match byte {
            b'=' => pads += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if pads == 0 => data.push(byte),
            _ => {}
        }
    }
    let rest = data.len() % 4;
    if rest == 1 || (rest != 0 && pads < 4 - rest) {
        return None;
    }
    LENIENT.decode(&data).ok()
}

/// Decodes an image field (bare base64 or a data URL), refusing more than `max_pixels`
/// pixels from the file's header before its pixels are decoded. Undecodable input is A1111's
/// 500 "Invalid encoded image".
pub fn decode_image(text: &str, max_pixels: u64) -> Result<DynamicImage, ApiError> {
    let bytes = lenient_base64(payload(text)?).ok_or_else(ApiError::invalid_image)?;
    let reader = || {
        image::ImageReader::new(Cursor::new(bytes.as_slice()))
            .with_guessed_format()
            .map_err(|_| ApiError::invalid_image())
    };
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|_| ApiError::invalid_image())?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ApiError::http(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the image is {width}x{height}, more than the limit of {max_pixels} pixels"),
        ));
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    // Room for the decoded pixels at 16 bytes each (RGBA at 32 bits), and no more.
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    reader.decode().map_err(|_| ApiError::invalid_image())
}

/// An image as A1111 returns it: bare base64 of a PNG with `infotext` as its `parameters`.
pub fn encode_png(image: &RgbImage, infotext: Option<&str>) -> Result<String, ApiError> {
    let bytes = png_bytes(image, infotext)
        .map_err(|e| ApiError::runtime(format!("encoding a PNG: {e}")))?;
    Ok(STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(w: u32, h: u32) -> Vec<u8> {
        png_bytes(&RgbImage::new(w, h), Some("a prompt")).unwrap()
    }

    #[test]
    fn base64_is_read_leniently_and_padding_is_required() {
        assert_eq!(lenient_base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(lenient_base64("aGVs\nbG8=\n"), Some(b"hello".to_vec()));
        assert_eq!(lenient_base64("aGV*sbG8="), Some(b"hello".to_vec()));
        assert_eq!(lenient_base64("aGVsbG8"), None, "missing padding");
        assert_eq!(lenient_base64("aGVsb"), None);
    }

    #[test]
    fn images_come_bare_or_as_data_urls_and_sizes_are_checked_first() {
        let text = STANDARD.encode(png_of(4, 3));
        let bare = decode_image(&text, 100).unwrap();
        assert_eq!((bare.width(), bare.height()), (4, 3));
        let url = format!("data:image/png;base64,{text}");
        assert_eq!(decode_image(&url, 100).unwrap().width(), 4);
        assert_eq!(decode_image(&text, 11).unwrap_err().status(), 413);
        assert_eq!(
            decode_image("bm9wZQ==", 100),
            Err(ApiError::invalid_image())
        );
        assert_eq!(decode_image("", 100), Err(ApiError::invalid_image()));
        let encoded = encode_png(&RgbImage::new(2, 2), Some("x")).unwrap();
        assert!(!encoded.starts_with("data:"));
        let decoded = STANDARD.decode(encoded).unwrap();
        assert_eq!(
            crate::pipeline::png_info::png_text(&decoded, "parameters").unwrap(),
            Some("x".into())
        );
    }
}
