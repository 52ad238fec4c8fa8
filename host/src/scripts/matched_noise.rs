//! Outpainting mk2's fill of the new border (`scripts/outpainting_mk_2.py: get_matched_noise`,
//! which A1111 took from g-diffuser-bot): noise whose spectrum is shaped like the picture's and
//! whose colours are matched to the picture's histogram, so the sampler starts from something
//! with the picture's texture and palette rather than flat colour.
//!
//! The steps and their order are A1111's: the picture with its hole windowed out (and filled
//! with its mean colour) gives a magnitude and a phase spectrum; uniform noise from NumPy's
//! `default_rng(0)` (greyish, `color_variation` of it coloured) is low-passed by a Cauchy-like
//! window, and its power spectrum times the picture's magnitude^`noise_q` with the picture's
//! phase is transformed back, normalised to 0–1, histogram-matched per channel to the kept
//! pixels, and put under the mask. The FFTs are libtorch's in double precision (NumPy's are
//! pocketfft), so values can differ from A1111's in the last bits, which after the 8-bit
//! truncation moves a rare pixel by one level.

use image::{GrayImage, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::prepare::color_correction::histogram::match_histogram_f64;
use crate::rng::NumpyPcg64;

/// `_fft2`/`_ifft2`: fftshift, an orthonormal 2-D transform over height and width, ifftshift.
fn shifted_fft(data: &Tensor, inverse: bool) -> Tensor {
    let dims: &[i64] = &[0, 1];
    let shifted = data.fft_fftshift(Some(dims));
    let transformed = if inverse {
        shifted.fft_ifft2(None::<&[i64]>, dims, "ortho")
    } else {
        shifted.fft_fft2(None::<&[i64]>, dims, "ortho")
    };
    transformed.fft_ifftshift(Some(dims))
}

/// `_get_gaussian_window(width, height, mode=1)` with A1111's names: `rows` is its `width`
/// (the array's first axis), `cols` its `height`. The exponent `std / 3.14` is exactly 1.
fn cauchy_window(rows: usize, cols: usize) -> Vec<f64> {
    let short = rows.min(cols) as f64;
    let scale_x = rows as f64 / short;
    let scale_y = cols as f64 / short;
    let mut window = vec![0.0; rows * cols];
    for r in 0..rows {
        let x = (r as f64 / rows as f64 * 2.0 - 1.0) * scale_x;
        for c in 0..cols {
            let y = (c as f64 / cols as f64 * 2.0 - 1.0) * scale_y;
            window[r * cols + c] = 1.0 / ((x * x + 1.0) * (y * y + 1.0));
        }
    }
    window
}

/// `image` with the pixels under `mask` (255 = new) replaced by matched noise
/// (`get_matched_noise(np_image, np_mask, noise_q, color_variation)` then A1111's
/// `np.clip(noised * 255, 0, 255).astype(np.uint8)`). `mask` is a white/black picture in A1111;
/// its grey levels are used as they are.
pub fn matched_noise(
    image: &RgbImage,
    mask: &GrayImage,
    noise_q: f64,
    color_variation: f64,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let (rows, cols) = (h as usize, w as usize);
    let n = rows * cols;
    let src: Vec<f64> = image
        .as_raw()
        .iter()
        .map(|&v| f64::from(v) / 255.0)
        .collect();
    // The mask is RGB in A1111; its grey is the mean of three equal channels.
    let grey: Vec<f64> = mask
        .as_raw()
        .iter()
        .map(|&v| {
            let m = f64::from(v) / 255.0;
            (m + m + m) / 3.0
        })
        .collect();
    let mask_at = |i: usize| grey[i / 3];

    // The picture windowed by the kept area, scaled to a maximum of 1, its hole at the mean.
    let mut windowed: Vec<f64> = (0..3 * n).map(|i| src[i] * (1.0 - mask_at(i))).collect();
    let peak = windowed.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let average = src.iter().sum::<f64>() / src.len() as f64;
    for (i, v) in windowed.iter_mut().enumerate() {
        *v = *v / peak + average * mask_at(i);
    }
    let shape = [rows as i64, cols as i64, 3];
    let as_tensor = |values: &[f64]| {
        Tensor::from_slice(values)
            .reshape(shape)
            .to_kind(Kind::ComplexDouble)
    };
    let src_fft = shifted_fft(&as_tensor(&windowed), false);
    let src_dist = src_fft.abs();
    let src_phase = &src_fft / &src_dist;

    // Greyish uniform noise from NumPy's default_rng(0), drawn in C order over [rows, cols, 3].
    let mut rng = NumpyPcg64::new(0);
    let mut noise: Vec<f64> = (0..3 * n).map(|_| rng.next_f64()).collect();
    for px in noise.chunks_exact_mut(3) {
        let noise_grey = (px[0] + px[1] + px[2]) / 3.0;
        for v in px.iter_mut() {
            *v *= color_variation;
            *v += (1.0 - color_variation) * noise_grey;
        }
    }
    let window = Tensor::from_slice(&cauchy_window(rows, cols))
        .reshape([rows as i64, cols as i64, 1])
        .to_kind(Kind::ComplexDouble);
    let noise_fft = shifted_fft(&as_tensor(&noise), false) * window;
    let low_passed = shifted_fft(&noise_fft, true)
        .real()
        .to_kind(Kind::ComplexDouble);
    let noise_spectrum = shifted_fft(&low_passed, false);
    let shaped_fft =
        noise_spectrum.abs().square() * src_dist.pow_tensor_scalar(noise_q) * src_phase;
    let shaped = shifted_fft(&shaped_fft, true)
        .real()
        .to_kind(Kind::Double)
        .to_device(Device::Cpu)
        .contiguous()
        .view([-1]);
    let mut shaped = Vec::<f64>::try_from(&shaped).unwrap_or_else(|_| vec![0.0; 3 * n]);
    let low = shaped.iter().copied().fold(f64::INFINITY, f64::min);
    shaped.iter_mut().for_each(|v| *v -= low);
    let high = shaped.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    shaped.iter_mut().for_each(|v| *v /= high);

    // Each channel of the noise under the mask matched to the kept pixels' histogram.
    let regenerated: Vec<usize> = (0..n).filter(|&i| grey[i] > 1e-6).collect();
    let reference: Vec<usize> = (0..n).filter(|&i| grey[i] < 1e-3).collect();
    for c in 0..3 {
        let source: Vec<f64> = regenerated.iter().map(|&i| shaped[3 * i + c]).collect();
        let template: Vec<f64> = reference.iter().map(|&i| src[3 * i + c]).collect();
        let matched = match_histogram_f64(&source, &template);
        for (&i, v) in regenerated.iter().zip(matched) {
            shaped[3 * i + c] = v;
        }
    }
    let pixels: Vec<u8> = (0..3 * n)
        .map(|i| {
            let m = mask_at(i);
            let blended = (src[i] * (1.0 - m) + shaped[i] * m).clamp(0.0, 1.0);
            // NaN (a black picture divides 0 by 0, as in A1111) becomes 0.
            (blended * 255.0).clamp(0.0, 255.0) as u8
        })
        .collect();
    RgbImage::from_raw(w, h, pixels).expect("three bytes per pixel")
}
