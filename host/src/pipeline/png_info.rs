//! PNG files with A1111's infotext: written as the `parameters` text chunk (tEXt when the text
//! is Latin-1, uncompressed iTXt otherwise, as Pillow does for A1111) and read back.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::{RgbImage, RgbaImage};

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
    let texts: Vec<(&str, &str)> = infotext.map(|t| (PARAMETERS_KEY, t)).into_iter().collect();
    write_png(
        path,
        (image.width(), image.height()),
        png::ColorType::Rgb,
        image.as_raw(),
        &texts,
    )
}

/// Writes `image` as an 8-bit RGBA PNG with the given text chunks.
pub fn save_rgba_png(
    path: &Path,
    image: &RgbaImage,
    texts: &[(&str, &str)],
) -> Result<(), PngError> {
    write_png(
        path,
        (image.width(), image.height()),
        png::ColorType::Rgba,
        image.as_raw(),
        texts,
    )
}

/// An 8-bit PNG with text chunks: tEXt for Latin-1 text, uncompressed iTXt otherwise.
fn write_png(
    path: &Path,
    size: (u32, u32),
    color: png::ColorType,
    data: &[u8],
    texts: &[(&str, &str)],
) -> Result<(), PngError> {
    let mut bytes = Vec::new();
    encode_png(&mut bytes, size, color, data, texts).map_err(|e| PngError::Png {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_whole(path, &bytes).map_err(|source| PngError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a hidden `.NAME.partial` next to `path`, syncs it and renames it over
/// `path`: a full disk or a crash leaves no half-written file under the final name (the
/// partial one is removed on error).
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let partial = path.with_file_name(format!(".{name}.partial"));
    let written = (|| {
        let mut file = File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// `image` as the bytes of an 8-bit RGB PNG with `infotext` in its `parameters` chunk (what
/// the HTTP API sends). The fast deflate (fdeflate): answers go over a network and are read
/// once, and zlib's default level made the encode most of the API's overhead per request
/// (`sdhost bench --only api`).
pub fn png_bytes(image: &RgbImage, infotext: Option<&str>) -> Result<Vec<u8>, png::EncodingError> {
    let texts: Vec<(&str, &str)> = infotext.map(|t| (PARAMETERS_KEY, t)).into_iter().collect();
    png_bytes_with_texts(image, &texts)
}

/// `image` as the bytes of an 8-bit RGB PNG with the text chunks `texts` (key, text), in
/// order (the API's extras keep an image's chunks and add `postprocessing`).
pub fn png_bytes_with_texts(
    image: &RgbImage,
    texts: &[(&str, &str)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    encode_png_with(
        &mut bytes,
        (image.width(), image.height()),
        png::ColorType::Rgb,
        image.as_raw(),
        texts,
        png::Compression::Fast,
    )?;
    Ok(bytes)
}

/// Encodes an 8-bit PNG with text chunks into `out`.
fn encode_png<W: std::io::Write>(
    out: W,
    size: (u32, u32),
    color: png::ColorType,
    data: &[u8],
    texts: &[(&str, &str)],
) -> Result<(), png::EncodingError> {
    encode_png_with(out, size, color, data, texts, png::Compression::default())
}

/// [`encode_png`] at `compression`.
fn encode_png_with<W: std::io::Write>(
    out: W,
    (width, height): (u32, u32),
    color: png::ColorType,
    data: &[u8],
    texts: &[(&str, &str)],
    compression: png::Compression,
) -> Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(color);
    encoder.set_compression(compression);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, text) in texts {
        if is_latin1(text) {
            encoder.add_text_chunk((*key).into(), (*text).into())?;
        } else {
            encoder.add_itxt_chunk((*key).into(), (*text).into())?;
        }
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(data)?;
    writer.finish()
}

/// The text of chunk `key` of a PNG file, if it has one.
pub fn read_png_text(path: &Path, key: &str) -> Result<Option<String>, PngError> {
    let file = File::open(path).map_err(|source| PngError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text_chunk(std::io::BufReader::new(file), key).map_err(|reason| PngError::Png {
        path: path.to_path_buf(),
        reason,
    })
}

/// The text of chunk `key` of PNG bytes, if it has one.
pub fn png_text(bytes: &[u8], key: &str) -> Result<Option<String>, String> {
    text_chunk(std::io::Cursor::new(bytes), key)
}

/// The most one compressed text chunk may inflate to: an infotext is a few kilobytes, and a
/// chunk of a few kilobytes could otherwise inflate to gigabytes (Pillow, which A1111 reads
/// PNGs with, stops at 1 MiB as well: `PIL/PngImagePlugin.py` `MAX_TEXT_CHUNK`).
pub const MAX_TEXT_CHUNK: usize = 1 << 20;

/// The most all text chunks of one PNG may hold (Pillow's `MAX_TEXT_MEMORY`).
pub const MAX_TEXT_TOTAL: usize = 64 << 20;

/// A zTXt chunk's text, inflated to at most [`MAX_TEXT_CHUNK`] bytes.
fn ztxt_text(chunk: &png::text_metadata::ZTXtChunk) -> Result<String, String> {
    let mut chunk = chunk.clone();
    chunk
        .decompress_text_with_limit(MAX_TEXT_CHUNK)
        .and_then(|()| chunk.get_text())
        .map_err(|e| format!("text chunk {}: {e}", chunk.keyword))
}

/// An iTXt chunk's text, inflated to at most [`MAX_TEXT_CHUNK`] bytes when compressed.
fn itxt_text(chunk: &png::text_metadata::ITXtChunk) -> Result<String, String> {
    let mut chunk = chunk.clone();
    chunk
        .decompress_text_with_limit(MAX_TEXT_CHUNK)
        .and_then(|()| chunk.get_text())
        .map_err(|e| format!("text chunk {}: {e}", chunk.keyword))
}

/// Every text chunk of PNG bytes (tEXt, iTXt, zTXt) in file order within each kind, as
/// Pillow's `image.info` holds them.
pub fn png_texts(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().map_err(|e| e.to_string())?;
    let info = reader.info();
    let mut texts: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    for chunk in &info.compressed_latin1_text {
        texts.push((chunk.keyword.clone(), ztxt_text(chunk)?));
    }
    for chunk in &info.utf8_text {
        texts.push((chunk.keyword.clone(), itxt_text(chunk)?));
    }
    let total: usize = texts.iter().map(|(_, t)| t.len()).sum();
    if total > MAX_TEXT_TOTAL {
        return Err(format!("text chunks hold more than {MAX_TEXT_TOTAL} bytes"));
    }
    Ok(texts)
}

/// Reads the PNG's header chunks (not its pixels) and returns text chunk `key` (tEXt, iTXt
/// or zTXt).
fn text_chunk<R: std::io::BufRead + std::io::Seek>(
    reader: R,
    key: &str,
) -> Result<Option<String>, String> {
    let decoder = png::Decoder::new(reader);
    let reader = decoder.read_info().map_err(|e| e.to_string())?;
    let info = reader.info();
    if let Some(chunk) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == key)
    {
        return Ok(Some(chunk.text.clone()));
    }
    if let Some(chunk) = info.utf8_text.iter().find(|c| c.keyword == key) {
        return itxt_text(chunk).map(Some);
    }
    if let Some(chunk) = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == key)
    {
        return ztxt_text(chunk).map(Some);
    }
    Ok(None)
}

/// The `parameters` text of a PNG, if it has one.
pub fn read_png_infotext(path: &Path) -> Result<Option<String>, PngError> {
    read_png_text(path, PARAMETERS_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use png::text_metadata::{ITXtChunk, ZTXtChunk};

    /// A 1×1 grey PNG with the text chunks `write` adds.
    fn png_with(write: impl FnOnce(&mut png::Writer<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, 1, 1);
            encoder.set_color(png::ColorType::Grayscale);
            let mut writer = encoder.write_header().unwrap();
            write(&mut writer);
            writer.write_image_data(&[0]).unwrap();
        }
        out
    }

    #[test]
    fn compressed_text_bombs_are_refused_while_inflating() {
        // 64 MiB of text deflates to well under a megabyte.
        let huge = "a".repeat(64 << 20);
        let ztxt = png_with(|w| {
            w.write_text_chunk(&ZTXtChunk::new("parameters", huge.clone()))
                .unwrap()
        });
        assert!(ztxt.len() < 1 << 20, "{}", ztxt.len());
        let err = png_texts(&ztxt).unwrap_err();
        assert!(err.contains("text chunk parameters"), "{err}");
        assert!(png_text(&ztxt, "parameters").is_err());

        let mut chunk = ITXtChunk::new("parameters", huge);
        chunk.compressed = true;
        let itxt = png_with(|w| w.write_text_chunk(&chunk).unwrap());
        assert!(png_texts(&itxt).is_err());
        assert!(png_text(&itxt, "parameters").is_err());

        // Text under the limit, compressed or not, is read.
        let fine = png_with(|w| {
            w.write_text_chunk(&ZTXtChunk::new("parameters", "a cat"))
                .unwrap();
            let mut chunk = ITXtChunk::new("comment", "ünïcode");
            chunk.compressed = true;
            w.write_text_chunk(&chunk).unwrap();
        });
        assert_eq!(
            png_texts(&fine).unwrap(),
            vec![
                ("parameters".to_string(), "a cat".to_string()),
                ("comment".to_string(), "ünïcode".to_string())
            ]
        );
        assert_eq!(
            png_text(&fine, "comment").unwrap().as_deref(),
            Some("ünïcode")
        );
    }
}
