//! Where a script's grids go: A1111's `images.save_image(grid, p.outpath_grids, basename,
//! grid=True)` with a base name: `<basename>-NNNN.png` in the grid folder (`img2img-grids` or
//! `txt2img-grids` beside the images folder), the infotext in the PNG.

use std::path::{Path, PathBuf};

use crate::pipeline::png_info::{save_png, PngError};

use super::{ScriptImage, Tab};

/// The grid folder A1111 uses beside an images folder: `outputs/img2img-images` →
/// `outputs/img2img-grids` (`outdir_img2img_grids`, `outdir_txt2img_grids`).
pub fn default_grid_dir(images_dir: &Path, tab: Tab) -> PathBuf {
    let name = format!("{}-grids", tab.stem());
    match images_dir.parent() {
        Some(parent) => parent.join(name),
        None => PathBuf::from(name),
    }
}

/// The next number for `basename` in `dir`: one past the largest `N` of the files named
/// `<basename>-N…` (A1111 `images.get_next_sequence_number(path, basename)`).
pub fn next_grid_number(dir: &Path, basename: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let prefix = format!("{basename}-");
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&prefix)?;
            let stem = Path::new(rest).file_stem()?.to_string_lossy().into_owned();
            stem.split('-').next()?.parse::<u64>().ok()
        })
        .max()
        .map_or(0, |largest| largest + 1)
}

/// Saves `grid` in `dir` (created if missing) as `<basename>-NNNN.png` with its infotext;
/// returns the path.
pub fn save_grid(dir: &Path, basename: &str, grid: &ScriptImage) -> Result<PathBuf, PngError> {
    std::fs::create_dir_all(dir).map_err(|source| PngError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut number = next_grid_number(dir, basename);
    let path = loop {
        let candidate = dir.join(format!("{basename}-{number:04}.png"));
        if !candidate.exists() {
            break candidate;
        }
        number += 1;
    };
    save_png(&path, &grid.image, Some(&grid.infotext.to_text()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infotext::Infotext;

    #[test]
    fn grids_are_numbered_per_basename_beside_the_images_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            default_grid_dir(Path::new("outputs/img2img-images"), Tab::Img2img),
            Path::new("outputs/img2img-grids")
        );
        let grid = ScriptImage {
            image: image::RgbImage::new(2, 2),
            infotext: Infotext::default(),
            seed: 1,
        };
        std::fs::write(dir.path().join("00007-1.png"), b"").unwrap();
        std::fs::write(dir.path().join("xyz_grid-0004.png"), b"").unwrap();
        let path = save_grid(dir.path(), "xyz_grid", &grid).unwrap();
        assert_eq!(path.file_name().unwrap(), "xyz_grid-0005.png");
        assert_eq!(next_grid_number(dir.path(), "prompt_matrix"), 0);
    }
}
