//! The inpainting mask as A1111 prepares it (`modules/processing.py: create_binary_mask` and
//! the start of `StableDiffusionProcessingImg2Img.init`): the user's mask image made binary
//! (or luma), optionally inverted, then blurred in x and y with OpenCV's 8-bit Gaussian.

use image::{DynamicImage, GrayImage};

/// Threshold of A1111's `create_binary_mask` for masks drawn with transparency.
const ALPHA_THRESHOLD: u8 = 128;

/// The mask of a mask image (A1111 `create_binary_mask`): the alpha channel when the image has
/// transparency (above 128 → 255 when `round`), else its luma with no threshold.
pub fn binary_mask(mask: &DynamicImage, round: bool) -> GrayImage {
    if mask.color().has_alpha() {
        let rgba = mask.to_rgba8();
        if rgba.pixels().any(|p| p[3] != 255) {
            let (w, h) = rgba.dimensions();
            return GrayImage::from_fn(w, h, |x, y| {
                let alpha = rgba.get_pixel(x, y)[3];
                image::Luma([if !round {
                    alpha
                } else if alpha > ALPHA_THRESHOLD {
                    255
                } else {
                    0
                }])
            });
        }
    }
    luma(mask)
}

/// Pillow's `convert('L')`: ITU-R 601 luma in 16-bit fixed point, rounded.
pub fn luma(image: &DynamicImage) -> GrayImage {
    if let DynamicImage::ImageLuma8(gray) = image {
        return gray.clone();
    }
    let rgb = image.to_rgb8();
    let (w, h) = rgb.dimensions();
    GrayImage::from_fn(w, h, |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        let l = (u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16;
        image::Luma([l as u8])
    })
}

/// "Inpaint not masked": the mask's negative.
pub fn invert(mask: &GrayImage) -> GrayImage {
    let mut out = mask.clone();
    out.pixels_mut().for_each(|p| p[0] = 255 - p[0]);
    out
}

/// A1111's mask blur: `cv2.GaussianBlur` along x with σ = `blur_x`, then along y with
/// σ = `blur_y`, each with a kernel of `2·int(2.5σ + 0.5) + 1` taps; 0 skips that axis.
pub fn blur_mask(mask: &GrayImage, blur_x: u32, blur_y: u32) -> GrayImage {
    let mut out = mask.clone();
    if blur_x > 0 {
        out = gaussian_blur_line(&out, blur_x, Axis::X);
    }
    if blur_y > 0 {
        out = gaussian_blur_line(&out, blur_y, Axis::Y);
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Axis {
    X,
    Y,
}

/// A1111's kernel size for a blur σ.
fn kernel_size(sigma: u32) -> usize {
    2 * ((2.5 * f64::from(sigma) + 0.5) as usize) + 1
}

/// OpenCV's Gaussian kernel for 8-bit images (`getGaussianKernelBitExact` followed by the
/// conversion to 8 fractional bits with error diffusion): integer taps summing to 256.
fn fixed_point_kernel(taps: usize, sigma: f64) -> Vec<i64> {
    let half = (taps - 1) / 2;
    let scale = -0.125 / (sigma * sigma);
    // exp(−d²/2σ²) for the taps left of the centre (x runs over 2·(i − half)).
    let values: Vec<f64> = (0..half)
        .map(|i| {
            let x = 2 * i as i64 - 2 * half as i64;
            ((x * x) as f64 * scale).exp()
        })
        .collect();
    let sum = 2.0 * values.iter().sum::<f64>() + 1.0;
    let normalise = 1.0 / sum;
    let mut kernel = vec![0i64; taps];
    let mut error = 0.0;
    let mut total = 0i64;
    for (i, value) in values.iter().enumerate() {
        let adjusted = value * normalise * 256.0 + error;
        let rounded = round_half_even(adjusted);
        error = adjusted - rounded as f64;
        kernel[i] = rounded;
        kernel[taps - 1 - i] = rounded;
        total += rounded;
    }
    kernel[half] = 256 - 2 * total;
    kernel
}

fn round_half_even(value: f64) -> i64 {
    let rounded = value.round();
    if (value - value.trunc()).abs() == 0.5 && rounded as i64 % 2 != 0 {
        (rounded - value.signum()) as i64
    } else {
        rounded as i64
    }
}

/// OpenCV's default border (`BORDER_REFLECT_101`): …2 1 | 0 1 2 … n−1 | n−2 …
fn reflect_101(index: i64, len: i64) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let mut i = index.rem_euclid(period);
    if i >= len {
        i = period - i;
    }
    i as usize
}

/// One separable Gaussian pass in OpenCV's fixed point: Σ pixel·tap, rounded from 8
/// fractional bits. The reflected neighbour indices are computed once per line length.
fn gaussian_blur_line(mask: &GrayImage, sigma: u32, axis: Axis) -> GrayImage {
    let taps = kernel_size(sigma);
    let kernel: Vec<i32> = fixed_point_kernel(taps, f64::from(sigma))
        .into_iter()
        .map(|k| k as i32)
        .collect();
    let half = (taps / 2) as i64;
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    // Along the line: `len` pixels `step` apart; lines start `stride` apart.
    let (len, lines, step, stride) = match axis {
        Axis::X => (w, h, 1, w),
        Axis::Y => (h, w, w, 1),
    };
    let neighbours: Vec<usize> = (0..len as i64)
        .flat_map(|p| (0..taps as i64).map(move |k| reflect_101(p + k - half, len as i64) * step))
        .collect();
    let src = mask.as_raw();
    let mut out = vec![0u8; src.len()];
    for line in 0..lines {
        let start = line * stride;
        for (p, around) in neighbours.chunks_exact(taps).enumerate() {
            let sum: i32 = around
                .iter()
                .zip(&kernel)
                .map(|(&offset, &tap)| i32::from(src[start + offset]) * tap)
                .sum();
            out[start + p * step] = ((sum + 128) >> 8).clamp(0, 255) as u8;
        }
    }
    GrayImage::from_raw(w as u32, h as u32, out).expect("same size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_sum_to_one_in_fixed_point() {
        for sigma in [1, 2, 4, 8, 16, 64] {
            let kernel = fixed_point_kernel(kernel_size(sigma), f64::from(sigma));
            assert_eq!(kernel.iter().sum::<i64>(), 256, "σ = {sigma}");
            assert_eq!(kernel.len(), kernel_size(sigma));
        }
        // A1111's blur 4: 21 taps.
        assert_eq!(kernel_size(4), 21);
    }

    #[test]
    fn reflect_101_mirrors_without_repeating_the_edge() {
        let got: Vec<usize> = (-3..8).map(|i| reflect_101(i, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect_101(-7, 1), 0);
    }

    #[test]
    fn alpha_masks_are_thresholded_and_opaque_ones_use_luma() {
        let mut rgba = image::RgbaImage::new(3, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 128]));
        rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 129]));
        rgba.put_pixel(2, 0, image::Rgba([0, 0, 0, 0]));
        let mask = binary_mask(&DynamicImage::ImageRgba8(rgba.clone()), true);
        assert_eq!(mask.as_raw(), &[0, 255, 0]);
        assert_eq!(
            binary_mask(&DynamicImage::ImageRgba8(rgba), false).as_raw(),
            &[128, 129, 0]
        );
        let rgb = image::RgbImage::from_raw(2, 1, vec![255, 255, 255, 10, 200, 30]).unwrap();
        let mask = binary_mask(&DynamicImage::ImageRgb8(rgb), true);
        // 10·0.299 + 200·0.587 + 30·0.114 = 123.81
        assert_eq!(mask.as_raw(), &[255, 124]);
    }
}
