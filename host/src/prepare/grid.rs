//! A1111's overlapping tile grid (`modules/images.py: Grid`, `split_grid`, `combine_grid`):
//! an image cut into tiles spread evenly so neighbours overlap, and tiles joined back with a
//! linear ramp over each overlap, first along rows, then between rows. Model upscalers tile
//! with it (`modules/upscaler_utils.py: upscale_with_model`), with Pillow's cropping beyond
//! the edge (black) and masked pasting value for value.

use image::{GrayImage, Luma, Rgb, RgbImage};

use super::pillow::blend;

/// One tile: its left edge in the image (negative when the image is narrower than a tile),
/// its width, and its pixels.
#[derive(Debug, Clone)]
pub struct Tile {
    /// Left edge.
    pub x: i64,
    /// Width.
    pub w: u32,
    /// The pixels.
    pub image: RgbImage,
}

/// One row of tiles: its top edge, height and tiles.
#[derive(Debug, Clone)]
pub struct GridRow {
    /// Top edge.
    pub y: i64,
    /// Height.
    pub h: u32,
    /// The tiles, left to right.
    pub tiles: Vec<Tile>,
}

/// `images.Grid`: the rows of tiles and the sizes they were cut with.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Rows, top to bottom.
    pub rows: Vec<GridRow>,
    /// Tile width.
    pub tile_w: u32,
    /// Tile height.
    pub tile_h: u32,
    /// Width of the whole image.
    pub image_w: u32,
    /// Height of the whole image.
    pub image_h: u32,
    /// Overlap between neighbours, in pixels.
    pub overlap: u32,
}

impl Grid {
    /// The number of tiles (`tile_count`).
    pub fn tile_count(&self) -> usize {
        self.rows.iter().map(|r| r.tiles.len()).sum()
    }
}

/// Pillow's `image.crop((x, y, x + w, y + h))`: black where the box leaves the image.
pub fn crop(image: &RgbImage, x: i64, y: i64, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |cx, cy| {
        let (sx, sy) = (x + i64::from(cx), y + i64::from(cy));
        if sx >= 0 && sy >= 0 && sx < i64::from(image.width()) && sy < i64::from(image.height()) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Pillow's `dst.paste(src, (x, y), mask)`: clipped to `dst`, each value blended towards
/// `src` by the mask's value at that pixel when there is a mask.
pub fn paste(dst: &mut RgbImage, src: &RgbImage, x: i64, y: i64, mask: Option<&GrayImage>) {
    for sy in 0..src.height() {
        for sx in 0..src.width() {
            let (dx, dy) = (x + i64::from(sx), y + i64::from(sy));
            if dx < 0 || dy < 0 || dx >= i64::from(dst.width()) || dy >= i64::from(dst.height()) {
                continue;
            }
            let s = *src.get_pixel(sx, sy);
            let d = dst.get_pixel_mut(dx as u32, dy as u32);
            match mask {
                None => *d = s,
                Some(mask) => {
                    let m = mask.get_pixel(sx, sy)[0];
                    for c in 0..3 {
                        d[c] = blend(m, d[c], s[c]);
                    }
                }
            }
        }
    }
}

/// `split_grid(image, tile_w, tile_h, overlap)`: as many tiles as cover the image with at
/// least `overlap` shared, spread evenly (positions truncated), the last flush with the edge.
/// `overlap` must be below both tile sides (A1111 divides by their difference).
pub fn split_grid(image: &RgbImage, tile_w: u32, tile_h: u32, overlap: u32) -> Grid {
    assert!(
        overlap < tile_w && overlap < tile_h,
        "overlap below the tile size"
    );
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let (tw, th, ov) = (i64::from(tile_w), i64::from(tile_h), i64::from(overlap));
    let count = |side: i64, tile: i64| ((side - ov) as f64 / (tile - ov) as f64).ceil() as i64;
    let (cols, rows) = (count(w, tw), count(h, th));
    let step = |side: i64, tile: i64, n: i64| {
        if n > 1 {
            (side - tile) as f64 / (n - 1) as f64
        } else {
            0.0
        }
    };
    let (dx, dy) = (step(w, tw, cols), step(h, th, rows));
    let rows = (0..rows)
        .map(|row| {
            let mut y = (row as f64 * dy) as i64;
            if y + th >= h {
                y = h - th;
            }
            let tiles = (0..cols)
                .map(|col| {
                    let mut x = (col as f64 * dx) as i64;
                    if x + tw >= w {
                        x = w - tw;
                    }
                    Tile {
                        x,
                        w: tile_w,
                        image: crop(image, x, y, tile_w, tile_h),
                    }
                })
                .collect();
            GridRow {
                y,
                h: tile_h,
                tiles,
            }
        })
        .collect();
    Grid {
        rows,
        tile_w,
        tile_h,
        image_w: image.width(),
        image_h: image.height(),
        overlap,
    }
}

/// `make_mask_image`: the ramp `i · 255 / overlap` in float32, truncated to 8 bits.
fn ramp(i: u32, overlap: u32) -> u8 {
    (i as f32 * 255.0 / overlap as f32) as u8
}

/// `combine_grid(grid)`: each row joined left to right with a horizontal ramp over the
/// overlap, then the rows top to bottom with a vertical one.
pub fn combine_grid(grid: &Grid) -> RgbImage {
    let ov = grid.overlap;
    let mask_w = GrayImage::from_fn(ov, grid.tile_h, |x, _| Luma([ramp(x, ov)]));
    let mask_h = GrayImage::from_fn(grid.image_w, ov, |_, y| Luma([ramp(y, ov)]));
    let mut combined = RgbImage::new(grid.image_w, grid.image_h);
    for row in &grid.rows {
        let mut line = RgbImage::new(grid.image_w, row.h);
        for tile in &row.tiles {
            if tile.x == 0 {
                paste(&mut line, &tile.image, 0, 0, None);
                continue;
            }
            let head = crop(&tile.image, 0, 0, ov, row.h);
            paste(&mut line, &head, tile.x, 0, Some(&mask_w));
            let tail = crop(
                &tile.image,
                i64::from(ov),
                0,
                tile.w.saturating_sub(ov),
                row.h,
            );
            paste(&mut line, &tail, tile.x + i64::from(ov), 0, None);
        }
        if row.y == 0 {
            paste(&mut combined, &line, 0, 0, None);
            continue;
        }
        let head = crop(&line, 0, 0, line.width(), ov);
        paste(&mut combined, &head, 0, row.y, Some(&mask_h));
        let tail = crop(
            &line,
            0,
            i64::from(ov),
            line.width(),
            row.h.saturating_sub(ov),
        );
        paste(&mut combined, &tail, 0, row.y + i64::from(ov), None);
    }
    combined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_spread_evenly_and_the_last_is_flush() {
        let image = RgbImage::from_fn(23, 18, |x, y| Rgb([x as u8, y as u8, 0]));
        let grid = split_grid(&image, 8, 8, 2);
        // ceil((23 − 2) / 6) = 4 columns at int(i · 5), ceil(16 / 6) = 3 rows at int(i · 5).
        let xs: Vec<i64> = grid.rows[0].tiles.iter().map(|t| t.x).collect();
        let ys: Vec<i64> = grid.rows.iter().map(|r| r.y).collect();
        assert_eq!(xs, [0, 5, 10, 15]);
        assert_eq!(ys, [0, 5, 10]);
        assert_eq!(grid.tile_count(), 12);
        // Without models in between, joining gives the picture back.
        assert_eq!(combine_grid(&grid), image);
    }

    #[test]
    fn a_tile_larger_than_the_image_reaches_left_into_black() {
        let image = RgbImage::from_pixel(5, 4, Rgb([200, 100, 50]));
        let grid = split_grid(&image, 8, 8, 2);
        assert_eq!((grid.rows[0].y, grid.rows[0].tiles[0].x), (-4, -3));
        assert_eq!(grid.rows[0].tiles[0].image.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(
            grid.rows[0].tiles[0].image.get_pixel(3, 4),
            &Rgb([200, 100, 50])
        );
    }
}
