//! Grid pictures as A1111 draws them (`modules/images.py`): cells pasted into a grid
//! (`image_grid`), legends around it (`draw_grid_annotations`, `draw_prompt_matrix`), and the
//! X/Y/Z plot's row of Z sub-grids under their titles (`scripts/xyz_grid.py: draw_xyz_grid`).
//!
//! Legends are real text: Roboto shaped and rasterised by [`font`], sized and placed with
//! A1111's integer arithmetic, so a grid has A1111's dimensions to the pixel.

pub mod font;
mod hinting;

use font::LegendFont;
use image::{imageops, Rgb, RgbImage};

/// A1111's option `grid_background_color` default, `#ffffff`.
pub const GRID_BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
/// A1111's option `grid_text_active_color` default, `#000000`.
pub const TEXT_ACTIVE: Rgb<u8> = Rgb([0, 0, 0]);
/// A1111's option `grid_text_inactive_color` default, `#999999`.
pub const TEXT_INACTIVE: Rgb<u8> = Rgb([153, 153, 153]);

/// Why a grid cannot be drawn (A1111 would fail with a ZeroDivisionError or an assertion).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GridError {
    /// No cells were given.
    #[error("a grid needs at least one image")]
    NoImages,
    /// Zero rows were asked for.
    #[error("a grid needs at least one row")]
    NoRows,
    /// A cell size of zero.
    #[error("grid cells must be at least 1×1 pixels, got {0}×{1}")]
    EmptyCell(u32, u32),
    /// The label lists do not match the grid's columns or rows.
    #[error("bad number of {axis} texts: {got}; must be {expected}")]
    LabelCount {
        axis: &'static str,
        got: usize,
        expected: usize,
    },
}

/// One legend line: its text, and whether it is drawn active (black) or inactive (grey,
/// struck through), as the prompt matrix marks the prompt parts a cell leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridAnnotation {
    /// The label text; wrapped at spaces to the column width.
    pub text: String,
    /// Active lines are black; inactive ones grey with a strike-through.
    pub is_active: bool,
}

impl GridAnnotation {
    /// An active label.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_active: true,
        }
    }
}

/// `modules/images.py: image_grid` with the rows given: `cols = ceil(n / rows)` (rows capped
/// at the number of images), every cell the size of the largest image, smaller images
/// centred in theirs, the rest `background` (option `grid_background_color`).
pub fn image_grid(
    images: &[RgbImage],
    rows: usize,
    background: Rgb<u8>,
) -> Result<RgbImage, GridError> {
    if images.is_empty() {
        return Err(GridError::NoImages);
    }
    if rows == 0 {
        return Err(GridError::NoRows);
    }
    let rows = rows.min(images.len());
    let cols = images.len().div_ceil(rows);
    let w = images.iter().map(RgbImage::width).max().unwrap_or(0);
    let h = images.iter().map(RgbImage::height).max().unwrap_or(0);
    let mut grid = RgbImage::from_pixel(cols as u32 * w, rows as u32 * h, background);
    for (i, img) in images.iter().enumerate() {
        let x = (i % cols) as u32 * w + (w - img.width()) / 2;
        let y = (i / cols) as u32 * h + (h - img.height()) / 2;
        imageops::replace(&mut grid, img, i64::from(x), i64::from(y));
    }
    Ok(grid)
}

/// A wrapped legend line with its box at the legend's base font size.
struct Line {
    text: String,
    is_active: bool,
    width: i64,
    height: i64,
    allowed_width: u32,
}

/// `modules/images.py: draw_grid_annotations`: `hor_texts[col]` centred above each column,
/// `ver_texts[row]` centred in a left strip `cell_w · 3/4` wide (none when every vertical
/// text is empty), cells `margin` apart. Font size `(cell_w + cell_h) / 25`, line spacing
/// half of it; labels wrap at spaces to the column (or strip) width and a single word still
/// too wide is drawn at a smaller size; inactive lines are grey and struck through.
pub fn draw_grid_annotations(
    grid: &RgbImage,
    cell_w: u32,
    cell_h: u32,
    hor_texts: &[Vec<GridAnnotation>],
    ver_texts: &[Vec<GridAnnotation>],
    margin: u32,
) -> Result<RgbImage, GridError> {
    if cell_w == 0 || cell_h == 0 {
        return Err(GridError::EmptyCell(cell_w, cell_h));
    }
    let cols = (grid.width() / cell_w) as usize;
    let rows = (grid.height() / cell_h) as usize;
    if hor_texts.len() != cols {
        return Err(GridError::LabelCount {
            axis: "horizontal",
            got: hor_texts.len(),
            expected: cols,
        });
    }
    if ver_texts.len() != rows {
        return Err(GridError::LabelCount {
            axis: "vertical",
            got: ver_texts.len(),
            expected: rows,
        });
    }

    let fontsize = (cell_w + cell_h) / 25;
    let line_spacing = i64::from(fontsize / 2);
    let font = LegendFont::new(fontsize);
    let has_ver_text = ver_texts.iter().flatten().any(|line| !line.text.is_empty());
    let pad_left = if has_ver_text { cell_w * 3 / 4 } else { 0 };

    let wrap_all = |texts: &[Vec<GridAnnotation>], allowed: u32| -> Vec<Vec<Line>> {
        texts
            .iter()
            .map(|lines| wrap_lines(&font, lines, allowed))
            .collect()
    };
    let hor = wrap_all(hor_texts, cell_w);
    let ver = wrap_all(ver_texts, pad_left);

    // A1111 subtracts one spacing per column block but one per line for rows (so a row's
    // block is centred as if it had no spacing): both kept.
    let hor_heights: Vec<i64> = hor
        .iter()
        .map(|lines| lines.iter().map(|l| l.height + line_spacing).sum::<i64>() - line_spacing)
        .collect();
    let ver_heights: Vec<i64> = ver
        .iter()
        .map(|lines| {
            lines.iter().map(|l| l.height + line_spacing).sum::<i64>()
                - line_spacing * lines.len() as i64
        })
        .collect();
    let pad_top = if hor_heights.iter().sum::<i64>() == 0 {
        0
    } else {
        hor_heights.iter().copied().max().unwrap_or(0) + line_spacing * 2
    };
    let pad_top = pad_top.max(0) as u32;

    let gaps = |n: usize| margin * (n.saturating_sub(1)) as u32;
    let mut result = RgbImage::from_pixel(
        grid.width() + pad_left + gaps(cols),
        grid.height() + pad_top + gaps(rows),
        GRID_BACKGROUND,
    );
    for row in 0..rows as u32 {
        for col in 0..cols as u32 {
            let cell =
                imageops::crop_imm(grid, cell_w * col, cell_h * row, cell_w, cell_h).to_image();
            let x = pad_left + (cell_w + margin) * col;
            let y = pad_top + (cell_h + margin) * row;
            imageops::replace(&mut result, &cell, i64::from(x), i64::from(y));
        }
    }

    for (col, lines) in hor.iter().enumerate() {
        let x = f64::from(pad_left)
            + f64::from((cell_w + margin) * col as u32)
            + f64::from(cell_w) / 2.0;
        let y = f64::from(pad_top) / 2.0 - hor_heights[col] as f64 / 2.0;
        draw_texts(&mut result, x, y, lines, font, line_spacing);
    }
    for (row, lines) in ver.iter().enumerate() {
        let x = f64::from(pad_left) / 2.0;
        let y = f64::from(pad_top)
            + f64::from((cell_h + margin) * row as u32)
            + f64::from(cell_h) / 2.0
            - ver_heights[row] as f64 / 2.0;
        draw_texts(&mut result, x, y, lines, font, line_spacing);
    }
    Ok(result)
}

/// A1111's `wrap`: words joined while `textlength` fits `allowed` px; a word that does not fit
/// starts a new line (so a first word too wide leaves an empty first line, as in A1111).
fn wrap_lines(font: &LegendFont, annotations: &[GridAnnotation], allowed: u32) -> Vec<Line> {
    let mut out = Vec::new();
    for annotation in annotations {
        let mut lines = vec![String::new()];
        for word in annotation.text.split_whitespace() {
            let last = lines.last_mut().expect("lines starts non-empty");
            let joined = if last.is_empty() {
                word.to_string()
            } else {
                format!("{last} {word}")
            };
            if font.text_length(&joined) <= f64::from(allowed) {
                *last = joined;
            } else {
                lines.push(word.to_string());
            }
        }
        for text in lines {
            let (left, top, right, bottom) = font.text_bbox(&text);
            out.push(Line {
                text,
                is_active: annotation.is_active,
                width: right - left,
                height: bottom - top,
                allowed_width: allowed,
            });
        }
    }
    out
}

/// A1111's `draw_texts`: each line centred at `x`, stacked down from `y`; a line wider than
/// its allowed width is drawn one size smaller until it fits (its box, and so the layout and
/// the strike-through, stay those of the base size, as in A1111).
fn draw_texts(
    image: &mut RgbImage,
    x: f64,
    mut y: f64,
    lines: &[Line],
    base: LegendFont,
    line_spacing: i64,
) {
    for line in lines {
        let mut font = base;
        // A1111 compares `multiline_textsize(...)[0]`, the right edge of the text's box.
        while font.text_bbox(&line.text).2 > i64::from(line.allowed_width) && font.size() > 1 {
            font = LegendFont::new(font.size() - 1);
        }
        let fill = if line.is_active {
            TEXT_ACTIVE
        } else {
            TEXT_INACTIVE
        };
        font.draw_text_mm(image, (x, y + line.height as f64 / 2.0), &line.text, fill);
        if !line.is_active {
            let half = line.width.div_euclid(2) as f64;
            let line_y = y + line.height.div_euclid(2) as f64;
            strike_through(image, x - half, x + half, line_y, fill);
        }
        y += (line.height + line_spacing) as f64;
    }
}

/// `ImageDraw.line((x0, y, x1, y), width=4)` as Pillow rasterises a horizontal wide line:
/// integer ends (truncated), rows `y-1 ..= y+2`, both ends inclusive.
fn strike_through(image: &mut RgbImage, x0: f64, x1: f64, y: f64, fill: Rgb<u8>) {
    let (x0, x1, y) = (x0.trunc() as i64, x1.trunc() as i64, y.trunc() as i64);
    let rows = if x0 == x1 { y..=y } else { y - 1..=y + 2 };
    for py in rows {
        for px in x0..=x1 {
            if px >= 0 && py >= 0 && (px as u32) < image.width() && (py as u32) < image.height() {
                image.put_pixel(px as u32, py as u32, fill);
            }
        }
    }
}

/// `modules/images.py: draw_prompt_matrix`: the prompt parts after the first split in two
/// halves (the first `ceil(n/2)` across, the rest down); column `pos` shows part `i` active
/// when bit `i` of `pos` is set, and likewise for rows. `all_prompts[0]` is the base prompt.
pub fn draw_prompt_matrix(
    grid: &RgbImage,
    cell_w: u32,
    cell_h: u32,
    all_prompts: &[String],
    margin: u32,
) -> Result<RgbImage, GridError> {
    let parts = all_prompts.get(1..).unwrap_or(&[]);
    let (horizontal, vertical) = parts.split_at(parts.len().div_ceil(2));
    let texts = |parts: &[String]| -> Vec<Vec<GridAnnotation>> {
        (0..1usize << parts.len())
            .map(|pos| {
                parts
                    .iter()
                    .enumerate()
                    .map(|(i, text)| GridAnnotation {
                        text: text.clone(),
                        is_active: pos & (1 << i) != 0,
                    })
                    .collect()
            })
            .collect()
    };
    draw_grid_annotations(
        grid,
        cell_w,
        cell_h,
        &texts(horizontal),
        &texts(vertical),
        margin,
    )
}

/// The X/Y/Z plot's final picture (`scripts/xyz_grid.py: draw_xyz_grid`, after the loop): the
/// Z sub-grids side by side (`image_grid(rows=1)`, each centred in the largest one's box) and,
/// with the legend, each Z label above its sub-grid (no margin, no left strip).
pub fn combine_z_grids(
    sub_grids: &[RgbImage],
    z_labels: Option<&[String]>,
    background: Rgb<u8>,
) -> Result<RgbImage, GridError> {
    let z_grid = image_grid(sub_grids, 1, background)?;
    let Some(labels) = z_labels else {
        return Ok(z_grid);
    };
    let w = sub_grids.iter().map(RgbImage::width).max().unwrap_or(0);
    let h = sub_grids.iter().map(RgbImage::height).max().unwrap_or(0);
    let titles: Vec<Vec<GridAnnotation>> = labels
        .iter()
        .map(|z| vec![GridAnnotation::new(z.as_str())])
        .collect();
    draw_grid_annotations(&z_grid, w, h, &titles, &[vec![GridAnnotation::new("")]], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaller_cells_are_centred_on_the_background() {
        let big = RgbImage::from_pixel(4, 4, Rgb([9, 9, 9]));
        let small = RgbImage::from_pixel(2, 2, Rgb([7, 7, 7]));
        let grid = image_grid(&[big, small], 1, Rgb([1, 2, 3])).unwrap();
        assert_eq!(grid.dimensions(), (8, 4));
        assert_eq!(grid.get_pixel(4, 0), &Rgb([1, 2, 3]));
        assert_eq!(grid.get_pixel(5, 1), &Rgb([7, 7, 7]));
        assert_eq!(grid.get_pixel(6, 2), &Rgb([7, 7, 7]));
        assert_eq!(grid.get_pixel(7, 3), &Rgb([1, 2, 3]));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(
            image_grid(&[], 1, GRID_BACKGROUND).unwrap_err(),
            GridError::NoImages
        );
        let cell = RgbImage::new(10, 10);
        assert_eq!(
            image_grid(std::slice::from_ref(&cell), 0, GRID_BACKGROUND).unwrap_err(),
            GridError::NoRows
        );
        let grid = image_grid(&[cell.clone(), cell], 1, GRID_BACKGROUND).unwrap();
        let one = vec![vec![GridAnnotation::new("a")]];
        assert_eq!(
            draw_grid_annotations(&grid, 10, 10, &one, &one, 0).unwrap_err(),
            GridError::LabelCount {
                axis: "horizontal",
                got: 1,
                expected: 2
            }
        );
        assert_eq!(
            draw_grid_annotations(&grid, 0, 10, &one, &one, 0).unwrap_err(),
            GridError::EmptyCell(0, 10)
        );
    }

    #[test]
    fn no_text_no_strips() {
        let cell = RgbImage::from_pixel(50, 40, Rgb([5, 5, 5]));
        let grid = image_grid(&[cell.clone(), cell], 1, GRID_BACKGROUND).unwrap();
        let empty = vec![vec![GridAnnotation::new("")]];
        let out = draw_grid_annotations(
            &grid,
            50,
            40,
            &[empty[0].clone(), empty[0].clone()],
            &empty,
            6,
        )
        .unwrap();
        // No top strip, no left strip, one margin between the two columns.
        assert_eq!(out.dimensions(), (106, 40));
        assert_eq!(out.get_pixel(52, 0), &GRID_BACKGROUND);
        assert_eq!(out.get_pixel(56, 0), &Rgb([5, 5, 5]));
    }
}
