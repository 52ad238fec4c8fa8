//! Pillow's 8-bit pixel arithmetic where A1111 relies on it for masks and composites:
//! masked paste, premultiplied alpha, alpha compositing and the box-approximated Gaussian
//! blur, with Pillow's integer rounding so results match it value for value.

use image::{GrayImage, RgbaImage};

/// `x / 255` rounded to nearest (Pillow's `DIV255`; exact for 0..=255·255).
pub fn div255(value: u32) -> u8 {
    let tmp = value + 128;
    (((tmp >> 8) + tmp) >> 8) as u8
}

/// Pillow's blend of two values by an 8-bit weight: `in1·(255 − w) + in2·w` over 255.
pub fn blend(weight: u8, in1: u8, in2: u8) -> u8 {
    let w = u32::from(weight);
    div255(u32::from(in1) * (255 - w) + u32::from(in2) * w)
}

/// `Image.paste(src, mask=mask)` for same-sized RGBA-layout images: every band of `dst`
/// blended towards `src` by the mask.
pub fn paste_with_mask(dst: &mut RgbaImage, src: &RgbaImage, mask: &GrayImage) {
    for ((d, s), m) in dst.pixels_mut().zip(src.pixels()).zip(mask.pixels()) {
        for band in 0..4 {
            d[band] = blend(m[0], d[band], s[band]);
        }
    }
}

/// RGBA → premultiplied RGBa (Pillow's conversion: each colour times alpha over 255).
pub fn premultiply(image: &RgbaImage) -> RgbaImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let alpha = u32::from(p[3]);
        for band in 0..3 {
            p[band] = div255(u32::from(p[band]) * alpha);
        }
    }
    out
}

/// RGBa → RGBA (Pillow: colour·255 / alpha truncated and clipped; alpha 0 or 255 copied).
pub fn unpremultiply(image: &RgbaImage) -> RgbaImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let alpha = u32::from(p[3]);
        if alpha != 0 && alpha != 255 {
            for band in 0..3 {
                p[band] = (255 * u32::from(p[band]) / alpha).min(255) as u8;
            }
        }
    }
    out
}

/// `Image.alpha_composite(dst, src)`: `src` over `dst`, both straight RGBA, in Pillow's
/// integer arithmetic (7 extra bits of precision, rounded divisions).
pub fn alpha_composite(dst: &mut RgbaImage, src: &RgbaImage) {
    const PRECISION_BITS: u32 = 7;
    let shift_div255 = |a: u32| ((a >> 8) + a) >> 8;
    for (d, s) in dst.pixels_mut().zip(src.pixels()) {
        let src_a = u32::from(s[3]);
        if src_a == 0 {
            continue;
        }
        let blend = u32::from(d[3]) * (255 - src_a);
        let out_a255 = src_a * 255 + blend;
        let coef1 = src_a * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        for band in 0..3 {
            let tmp = u32::from(s[band]) * coef1 + u32::from(d[band]) * coef2;
            d[band] = (shift_div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8;
        }
        d[3] = shift_div255(out_a255 + 0x80) as u8;
    }
}

/// `ImageFilter.GaussianBlur(radius)` on a 4-band image: three box-blur passes per axis whose
/// fractional box radius gives the Gaussian's variance (Pillow `ImagingGaussianBlur`).
pub fn gaussian_blur(image: &RgbaImage, radius: f32) -> RgbaImage {
    if radius == 0.0 {
        return image.clone();
    }
    const PASSES: usize = 3;
    let box_radius = box_radius_for(radius, PASSES as f32);
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut data = image.as_raw().clone();
    // Rows: each pass reads the previous pass's 8-bit output.
    let mut line = Vec::new();
    for _ in 0..PASSES {
        for y in 0..h {
            let row = &mut data[y * w * 4..(y + 1) * w * 4];
            box_blur_line(row, w, 4, box_radius, &mut line);
        }
    }
    // Columns, through a transposed copy as Pillow does it.
    let mut transposed = vec![0u8; w * h * 4];
    for y in 0..h {
        for x in 0..w {
            transposed[(x * h + y) * 4..(x * h + y) * 4 + 4]
                .copy_from_slice(&data[(y * w + x) * 4..(y * w + x) * 4 + 4]);
        }
    }
    for _ in 0..PASSES {
        for x in 0..w {
            let column = &mut transposed[x * h * 4..(x + 1) * h * 4];
            box_blur_line(column, h, 4, box_radius, &mut line);
        }
    }
    for y in 0..h {
        for x in 0..w {
            data[(y * w + x) * 4..(y * w + x) * 4 + 4]
                .copy_from_slice(&transposed[(x * h + y) * 4..(x * h + y) * 4 + 4]);
        }
    }
    RgbaImage::from_raw(w as u32, h as u32, data).expect("same size")
}

/// The fractional box radius whose `passes` repetitions have the variance of a Gaussian of
/// standard deviation `radius` (Gwosdek et al., as Pillow computes it in float32).
fn box_radius_for(radius: f32, passes: f32) -> f32 {
    let sigma2 = radius * radius / passes;
    let length = ((12.0 * f64::from(sigma2) + 1.0).sqrt()) as f32;
    let l = ((f64::from(length) - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// One box-blur pass over a line of `len` pixels of `bands` bytes, edges extended: the
/// ⌊r⌋-radius window at weight `ww` plus the two pixels just outside it at the fractional
/// weight `fw`, in 24-bit fixed point.
fn box_blur_line(line: &mut [u8], len: usize, bands: usize, radius: f32, scratch: &mut Vec<u8>) {
    let whole = radius as i64;
    let ww = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (whole as u32 * 2 + 1) * ww) / 2;
    let last = len as i64 - 1;
    let at = |i: i64| i.clamp(0, last) as usize;
    scratch.clear();
    scratch.extend_from_slice(line);
    let input = &scratch[..];
    for band in 0..bands {
        let value = |i: i64| u32::from(input[at(i) * bands + band]);
        // Running sum of the window x−r … x+r (edge pixels repeated).
        let mut acc: u32 = (-whole - 1..whole).map(value).sum();
        for x in 0..len as i64 {
            acc += value(x + whole);
            acc -= value(x - whole - 1);
            let bulk = acc * ww + (value(x - whole - 1) + value(x + whole + 1)) * fw;
            line[x as usize * bands + band] = ((bulk + (1 << 23)) >> 24) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div255_rounds_to_nearest() {
        for value in 0..=255 * 255 {
            let expected = (f64::from(value) / 255.0).round() as u8;
            assert_eq!(div255(value), expected, "{value}");
        }
    }

    #[test]
    fn box_radius_of_pillow_examples() {
        // σ² / 3 = 1/3 for radius 1: L = √5, l = 0.
        let r = box_radius_for(1.0, 3.0);
        assert!((r - 0.5).abs() < 0.5, "{r}");
        assert!(box_radius_for(256.0, 3.0) > 100.0);
    }
}
