//! Pillow's convolution resampling of 8-bit images (`libImaging/Resample.c`), reproduced so
//! that resized init images equal what A1111 gets from `Image.resize`.
//!
//! Two separable passes (horizontal then vertical, except as noted in [`resize`]), each with per-pixel filter windows
//! (widened by the scale when shrinking, which antialiases), weights normalised and turned into
//! 22-bit fixed point, rounding and clipping to 8 bits after each pass, exactly as Pillow does.

use image::RgbImage;

/// Fixed-point precision of the 8-bit weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A resampling filter: its support radius and kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Lanczos with a = 3 (Pillow's LANCZOS / ANTIALIAS).
    Lanczos,
    /// Bicubic with a = −0.5 (Pillow's BICUBIC, its default for RGB).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// For each output pixel: the first input index and its fixed-point weights.
struct Coefficients {
    windows: Vec<(usize, Vec<i32>)>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the input span [in0, in1).
fn coefficients(
    in_size: usize,
    in0: f64,
    in1: f64,
    out_size: usize,
    filter: Filter,
) -> Coefficients {
    let scale = (in1 - in0) / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let windows = (0..out_size)
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filter_scale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize)
                .saturating_sub(xmin);
            let weights: Vec<f64> = (0..xmax)
                .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect();
    Coefficients { windows }
}

fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

fn horizontal(src: &RgbImage, width: u32, c: &Coefficients, rows: (u32, u32)) -> RgbImage {
    let (first, count) = rows;
    let mut out = RgbImage::new(width, count);
    for y in 0..count {
        for (x, (xmin, weights)) in c.windows.iter().enumerate() {
            let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
            for (k, &w) in weights.iter().enumerate() {
                let pixel = src.get_pixel((xmin + k) as u32, y + first);
                for ch in 0..3 {
                    sums[ch] += i64::from(pixel[ch]) * i64::from(w);
                }
            }
            out.put_pixel(x as u32, y, image::Rgb(sums.map(clip8)));
        }
    }
    out
}

fn vertical(src: &RgbImage, height: u32, c: &Coefficients, offset: usize) -> RgbImage {
    let mut out = RgbImage::new(src.width(), height);
    for (y, (ymin, weights)) in c.windows.iter().enumerate() {
        for x in 0..src.width() {
            let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
            for (k, &w) in weights.iter().enumerate() {
                let pixel = src.get_pixel(x, (ymin - offset + k) as u32);
                for ch in 0..3 {
                    sums[ch] += i64::from(pixel[ch]) * i64::from(w);
                }
            }
            out.put_pixel(x, y as u32, image::Rgb(sums.map(clip8)));
        }
    }
    out
}

/// `Image.resize((width, height), filter, box)` of an RGB image; `box` is the source
/// rectangle (left, top, right, bottom), the whole image when `None`.
pub fn resize(
    src: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    source_box: Option<(f64, f64, f64, f64)>,
) -> RgbImage {
    let (w, h) = (src.width(), src.height());
    let (x0, y0, x1, y1) = source_box.unwrap_or((0.0, 0.0, f64::from(w), f64::from(h)));
    if width == 0 || height == 0 || w == 0 || h == 0 {
        return RgbImage::new(width, height);
    }
    let needs_horizontal = width != w || x0 != 0.0 || x1 != f64::from(w);
    let needs_vertical = height != h || y0 != 0.0 || y1 != f64::from(h);
    let vertical_coefficients = coefficients(h as usize, y0, y1, height as usize, filter);
    // The horizontal pass only needs the rows the vertical windows touch.
    let first_row = vertical_coefficients.windows.first().map_or(0, |(m, _)| *m);
    let last_row = vertical_coefficients
        .windows
        .last()
        .map_or(h as usize, |(m, k)| m + k.len());
    let horizontal_coefficients = || coefficients(w as usize, x0, x1, width as usize, filter);
    // Pillow (checked against 13.0) runs the vertical pass first when the width grows and the
    // height shrinks; the 8-bit rounding between passes makes the order visible.
    if needs_horizontal && needs_vertical && width > w && height < h {
        let tall = vertical(src, height, &vertical_coefficients, 0);
        return horizontal(&tall, width, &horizontal_coefficients(), (0, height));
    }
    let mut image = src.clone();
    let mut offset = 0;
    if needs_horizontal {
        let c = horizontal_coefficients();
        let rows = if needs_vertical {
            (first_row as u32, (last_row - first_row) as u32)
        } else {
            (0, h)
        };
        image = horizontal(&image, width, &c, rows);
        if needs_vertical {
            offset = first_row;
        }
    }
    if needs_vertical {
        image = vertical(&image, height, &vertical_coefficients, offset);
    }
    image
}
