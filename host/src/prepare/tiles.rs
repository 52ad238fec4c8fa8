//! A1111's overlapping tiles (`modules/images.py: Grid, split_grid, combine_grid`): SD upscale
//! cuts the upscaled picture into tiles, runs img2img on each and blends them back together,
//! each tile fading in linearly over the overlap with its left and top neighbours.

use image::{imageops, Rgb, RgbImage};

/// Why a picture cannot be cut into tiles (A1111 would divide by zero).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TileError {
    /// A tile dimension of zero.
    #[error("tiles must be at least 1×1 pixels, got {0}×{1}")]
    EmptyTile(u32, u32),
    /// The overlap leaves nothing of a tile that is its own.
    #[error("tile overlap {overlap} must be smaller than the tile size {tile_w}×{tile_h}")]
    OverlapTooLarge {
        overlap: u32,
        tile_w: u32,
        tile_h: u32,
    },
}

/// One tile of a row: its left edge in the picture and its pixels (`tile_w × tile_h`).
#[derive(Debug, Clone)]
pub struct Tile {
    /// Left edge in the picture; negative only when the picture is narrower than a tile.
    pub x: i64,
    /// The tile's pixels; SD upscale replaces them with the processed tile.
    pub image: RgbImage,
}

/// One row of tiles and its top edge in the picture.
#[derive(Debug, Clone)]
pub struct TileRow {
    /// Top edge in the picture; negative only when the picture is shorter than a tile.
    pub y: i64,
    /// The row's tiles, left to right.
    pub tiles: Vec<Tile>,
}

/// A1111's `Grid` namedtuple: the rows of tiles and the sizes needed to put them back.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Rows of tiles, top to bottom.
    pub rows: Vec<TileRow>,
    /// Tile width.
    pub tile_w: u32,
    /// Tile height.
    pub tile_h: u32,
    /// Width of the whole picture.
    pub image_w: u32,
    /// Height of the whole picture.
    pub image_h: u32,
    /// Pixels shared by neighbouring tiles.
    pub overlap: u32,
}

impl Grid {
    /// Number of tiles (A1111's `Grid.tile_count` in later versions).
    pub fn tile_count(&self) -> usize {
        self.rows.iter().map(|row| row.tiles.len()).sum()
    }
}

/// Tile origins along one axis, as `split_grid` places them: `ceil((len - overlap) /
/// (tile - overlap))` tiles spread evenly (`int(i · (len - tile) / (n - 1))`), the last one
/// flush with the far edge.
fn origins(len: u32, tile: u32, overlap: u32) -> Vec<i64> {
    let (len, tile, overlap) = (i64::from(len), i64::from(tile), i64::from(overlap));
    let step = tile - overlap;
    // Python's ceil of a true division, for either sign of the numerator.
    let count = (len - overlap + step - 1).div_euclid(step).max(0);
    let spacing = if count > 1 {
        (len - tile) as f64 / (count - 1) as f64
    } else {
        0.0
    };
    (0..count)
        .map(|i| {
            let at = (i as f64 * spacing) as i64;
            if at + tile >= len {
                len - tile
            } else {
                at
            }
        })
        .collect()
}

/// `modules/images.py: split_grid`: the picture cut into `tile_w × tile_h` tiles that overlap
/// by `overlap` pixels (parts outside a picture smaller than a tile are black, as PIL's crop
/// gives them).
pub fn split_grid(
    image: &RgbImage,
    tile_w: u32,
    tile_h: u32,
    overlap: u32,
) -> Result<Grid, TileError> {
    if tile_w == 0 || tile_h == 0 {
        return Err(TileError::EmptyTile(tile_w, tile_h));
    }
    if overlap >= tile_w || overlap >= tile_h {
        return Err(TileError::OverlapTooLarge {
            overlap,
            tile_w,
            tile_h,
        });
    }
    let xs = origins(image.width(), tile_w, overlap);
    let rows = origins(image.height(), tile_h, overlap)
        .into_iter()
        .map(|y| TileRow {
            y,
            tiles: xs
                .iter()
                .map(|&x| Tile {
                    x,
                    image: crop_padded(image, x, y, tile_w, tile_h),
                })
                .collect(),
        })
        .collect();
    Ok(Grid {
        rows,
        tile_w,
        tile_h,
        image_w: image.width(),
        image_h: image.height(),
        overlap,
    })
}

/// PIL's `crop` with a box that may leave the picture: outside pixels are black.
fn crop_padded(image: &RgbImage, x: i64, y: i64, w: u32, h: u32) -> RgbImage {
    let mut out = RgbImage::new(w, h);
    imageops::replace(&mut out, image, -x, -y);
    out
}

/// The fade of an overlap: position `i` of `overlap` gets `uint8(float32(i) · 255 / overlap)`,
/// A1111's `make_mask_image`.
fn fade(overlap: u32) -> Vec<u8> {
    (0..overlap)
        .map(|i| (i as f32 * 255.0 / overlap as f32) as u8)
        .collect()
}

/// PIL's `paste(src, mask)` for one channel: `(dst·(255 − m) + src·m) / 255`, rounded.
fn blend(dst: u8, src: u8, m: u8) -> u8 {
    let v = u32::from(dst) * (255 - u32::from(m)) + u32::from(src) * u32::from(m) + 128;
    ((v + (v >> 8)) >> 8) as u8
}

/// `modules/images.py: combine_grid`: each row assembled left to right, a tile's first
/// `overlap` columns faded over its left neighbour; then rows top to bottom, a row's first
/// `overlap` lines faded over the row above. With no overlap the tiles are simply pasted.
pub fn combine_grid(grid: &Grid) -> RgbImage {
    let overlap = grid.overlap;
    let ramp = fade(overlap);
    let mut combined = RgbImage::new(grid.image_w, grid.image_h);
    for row in &grid.rows {
        let mut strip = RgbImage::new(grid.image_w, grid.tile_h);
        for tile in &row.tiles {
            paste_faded(
                &mut strip,
                &tile.image,
                tile.x,
                0,
                if tile.x == 0 { None } else { Some(Axis::X) },
                &ramp,
            );
        }
        paste_faded(
            &mut combined,
            &strip,
            0,
            row.y,
            if row.y == 0 { None } else { Some(Axis::Y) },
            &ramp,
        );
    }
    combined
}

#[derive(Clone, Copy)]
enum Axis {
    X,
    Y,
}

/// Paste `src` at (`x`, `y`); along `fade_axis`, its first `ramp.len()` columns (or lines)
/// blend in with the ramp's weights.
fn paste_faded(
    dst: &mut RgbImage,
    src: &RgbImage,
    x: i64,
    y: i64,
    fade_axis: Option<Axis>,
    ramp: &[u8],
) {
    for (sx, sy, pixel) in src.enumerate_pixels() {
        let (dx, dy) = (x + i64::from(sx), y + i64::from(sy));
        if dx < 0 || dy < 0 || dx >= i64::from(dst.width()) || dy >= i64::from(dst.height()) {
            continue;
        }
        let weight = match fade_axis {
            Some(Axis::X) => ramp.get(sx as usize).copied(),
            Some(Axis::Y) => ramp.get(sy as usize).copied(),
            None => None,
        };
        let out = dst.get_pixel_mut(dx as u32, dy as u32);
        *out = match weight {
            Some(m) => Rgb([
                blend(out[0], pixel[0], m),
                blend(out[1], pixel[1], m),
                blend(out[2], pixel[2], m),
            ]),
            None => *pixel,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_follow_split_grid() {
        // 1000 px, 512 tiles, 64 overlap: ceil(936/448) = 3 tiles, dx = 244.
        assert_eq!(origins(1000, 512, 64), vec![0, 244, 488]);
        // Exactly one tile.
        assert_eq!(origins(512, 512, 64), vec![0]);
        // Smaller than a tile: one tile hanging over the far edge, as in A1111.
        assert_eq!(origins(300, 512, 64), vec![-212]);
    }

    #[test]
    fn fade_is_a1111_mask() {
        assert_eq!(fade(4), vec![0, 63, 127, 191]);
    }

    #[test]
    fn bad_tiles_are_errors() {
        let image = RgbImage::new(8, 8);
        assert_eq!(
            split_grid(&image, 0, 4, 0).unwrap_err(),
            TileError::EmptyTile(0, 4)
        );
        assert!(matches!(
            split_grid(&image, 4, 4, 4),
            Err(TileError::OverlapTooLarge { .. })
        ));
    }
}
