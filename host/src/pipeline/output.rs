//! Where finished images go: A1111's numbered names (`00000-1234.png`) in an output folder,
//! with the infotext in the PNG.

use std::path::{Path, PathBuf};

use super::img2img::GeneratedImage;
use super::png_info::{save_png, save_rgba_png, PngError};

/// PNG text key of a patch's offset in the full image: `x,y`.
pub const PATCH_OFFSET_KEY: &str = "sdhost-patch-offset";

/// A1111's default img2img output folder (relative to where it runs).
pub const DEFAULT_OUTPUT_DIR: &str = "outputs/img2img-images";

/// The next free number in `dir`: one past the largest leading number of a file name there
/// (A1111 `images.get_next_sequence_number` with no base name).
pub fn next_sequence_number(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = Path::new(&name).file_stem()?.to_string_lossy().into_owned();
            stem.split('-').next()?.parse::<u64>().ok()
        })
        .max()
        .map_or(0, |largest| largest + 1)
}

/// Saves `image` in `dir` (created if missing) as `NNNNN-SEED.png` with its infotext; returns
/// the path.
pub fn save_numbered(dir: &Path, image: &GeneratedImage) -> Result<PathBuf, PngError> {
    std::fs::create_dir_all(dir).map_err(|source| PngError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut number = next_sequence_number(dir);
    let path = loop {
        let candidate = dir.join(format!("{number:05}-{}.png", image.seed));
        if !candidate.exists() {
            break candidate;
        }
        number += 1;
    };
    save_png(&path, &image.image, Some(&image.infotext.to_text()))?;
    Ok(path)
}

/// Saves an inpainting result's patch next to its image as `NNNNN-SEED-patch.png` (RGBA,
/// alpha = blend mask, its offset in the `sdhost-patch-offset` text chunk and the infotext in
/// `parameters`); returns the path, or None when the image has no patch.
pub fn save_patch(image_path: &Path, image: &GeneratedImage) -> Result<Option<PathBuf>, PngError> {
    let Some(patch) = &image.patch else {
        return Ok(None);
    };
    let stem = image_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = image_path.with_file_name(format!("{stem}-patch.png"));
    let offset = format!("{},{}", patch.x, patch.y);
    let infotext = image.infotext.to_text();
    save_rgba_png(
        &path,
        &patch.image,
        &[
            (PATCH_OFFSET_KEY, offset.as_str()),
            (super::png_info::PARAMETERS_KEY, infotext.as_str()),
        ],
    )?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_largest_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_sequence_number(dir.path()), 0);
        for name in [
            "00003-77.png",
            "00010-5.png",
            "notes.txt",
            "grid-0001.png",
            "7.png",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(next_sequence_number(dir.path()), 11);
        assert_eq!(next_sequence_number(&dir.path().join("missing")), 0);
    }
}
