//! Reading the init image as A1111 receives it (`images.fix_image`, `images.flatten`): EXIF
//! orientation applied, transparency composited over the background colour, RGB out.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::pillow::div255;

/// A1111's `img2img_background_color` default: transparent pixels become white.
pub const DEFAULT_BACKGROUND: [u8; 3] = [255, 255, 255];

/// Why an init image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InitImageError {
    /// The file could not be opened.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not an image this build decodes (PNG or JPEG), or is corrupt.
    #[error("{path}: not a readable image (PNG or JPEG): {reason}")]
    Decode { path: PathBuf, reason: String },
}

/// Loads an image file, applies its EXIF orientation and flattens it onto `background`.
pub fn load_init_image(path: &Path, background: [u8; 3]) -> Result<RgbImage, InitImageError> {
    Ok(flatten(&load_image(path)?, background))
}

/// Loads an image file (PNG or JPEG) as it is, with its EXIF orientation applied.
pub fn load_image(path: &Path) -> Result<DynamicImage, InitImageError> {
    let decode = |reason: String| InitImageError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| InitImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?;
    let mut decoder = reader.into_decoder().map_err(|e| decode(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| decode(e.to_string()))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| decode(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// An image in RGB: pixels with alpha are blended over `background` the way Pillow's
/// `paste(img, mask=img)` blends them (A1111 `images.flatten`), others converted as they are.
pub fn flatten(image: &DynamicImage, background: [u8; 3]) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (target, source) in out.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(source[3]);
        for channel in 0..3 {
            let blended =
                u32::from(background[channel]) * (255 - alpha) + u32::from(source[channel]) * alpha;
            target[channel] = div255(blended);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_pixels_take_the_background() {
        let mut rgba = image::RgbaImage::new(3, 1);
        rgba.put_pixel(0, 0, image::Rgba([10, 20, 30, 0]));
        rgba.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        rgba.put_pixel(2, 0, image::Rgba([0, 100, 200, 128]));
        let rgb = flatten(&DynamicImage::ImageRgba8(rgba), DEFAULT_BACKGROUND);
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        // 255·127 + v·128 over 255, rounded.
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 177, 227]);
    }
}
