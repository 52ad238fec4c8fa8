//! PNG files with A1111's infotext: written as the `parameters` text chunk (tEXt when the text
//! is Latin-1, uncompressed iTXt otherwise, as Pillow does for A1111) and read back.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::RgbImage;

/// The PNG text keyword A1111 stores its infotext under.
pub const PARAMETERS_KEY: &str = "parameters";

/// Why a PNG could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The file could not be opened or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The PNG encoder or decoder failed (e.g. not a PNG file).
    #[error("{path}: not a readable PNG: {reason}")]
    Png { path: PathBuf, reason: String },
}

fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) < 256)
}

/// Writes `image` as an 8-bit RGB PNG with `infotext` in its `parameters` chunk.
pub fn save_png(path: &Path, image: &RgbImage, infotext: Option<&str>) -> Result<(), PngError> {
    let io = |source| PngError::Io {
        path: path.to_path_buf(),
        source,
    };
    let png = |e: png::EncodingError| PngError::Png {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = File::create(path).map_err(io)?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if let Some(text) = infotext {
        if is_latin1(text) {
            encoder
                .add_text_chunk(PARAMETERS_KEY.into(), text.into())
                .map_err(png)?;
        } else {
            encoder
                .add_itxt_chunk(PARAMETERS_KEY.into(), text.into())
                .map_err(png)?;
        }
    }
    let mut writer = encoder.write_header().map_err(png)?;
    writer.write_image_data(image.as_raw()).map_err(png)?;
    writer.finish().map_err(png)
}

/// The `parameters` text of a PNG, if it has one.
pub fn read_png_infotext(path: &Path) -> Result<Option<String>, PngError> {
    let file = File::open(path).map_err(|source| PngError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let png = |reason: String| PngError::Png {
        path: path.to_path_buf(),
        reason,
    };
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder.read_info().map_err(|e| png(e.to_string()))?;
    let info = reader.info();
    if let Some(chunk) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEY)
    {
        return Ok(Some(chunk.text.clone()));
    }
    if let Some(chunk) = info.utf8_text.iter().find(|c| c.keyword == PARAMETERS_KEY) {
        return chunk.get_text().map(Some).map_err(|e| png(e.to_string()));
    }
    if let Some(chunk) = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEY)
    {
        return chunk.get_text().map(Some).map_err(|e| png(e.to_string()));
    }
    Ok(None)
}
