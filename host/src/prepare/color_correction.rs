//! A1111's img2img colour correction (spec §7.7): each result's colours are matched to the
//! init image's in 8-bit CIE Lab (histogram matching per channel), and the result keeps its
//! own luminosity (a "luminosity" blend of the matched image with the generated one).

use image::RgbImage;

/// OpenCV's sRGB → XYZ (D65) matrix and white point.
const RGB_TO_XYZ: [[f64; 3]; 3] = [
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
];
const XYZ_TO_RGB: [[f64; 3]; 3] = [
    [3.240479, -1.53715, -0.498535],
    [-0.969256, 1.875991, 0.041556],
    [0.055648, -0.204043, 1.057311],
];
const WHITE_X: f64 = 0.950456;
const WHITE_Z: f64 = 1.088754;

/// The colour target of a job: the init image's 8-bit Lab channels.
pub struct ColorCorrection {
    target: [Vec<u8>; 3],
}

impl ColorCorrection {
    /// The target of `init` (the image as encoded: cropped, resized and filled).
    pub fn new(init: &RgbImage) -> Self {
        ColorCorrection {
            target: lab_channels(init),
        }
    }

    /// `generated` with its Lab histograms matched to the target, then its own luminosity
    /// put back (A1111 `apply_color_correction`).
    pub fn apply(&self, generated: &RgbImage) -> RgbImage {
        let source = lab_channels(generated);
        let matched: Vec<Vec<u8>> = (0..3)
            .map(|c| match_histogram(&source[c], &self.target[c]))
            .collect();
        let (w, h) = generated.dimensions();
        RgbImage::from_fn(w, h, |x, y| {
            let i = (y * w + x) as usize;
            let corrected = lab8_to_rgb([matched[0][i], matched[1][i], matched[2][i]]);
            image::Rgb(luminosity_blend(corrected, generated.get_pixel(x, y).0))
        })
    }
}

fn lab_channels(image: &RgbImage) -> [Vec<u8>; 3] {
    let mut channels: [Vec<u8>; 3] = Default::default();
    for pixel in image.pixels() {
        let lab = rgb_to_lab8(pixel.0);
        for c in 0..3 {
            channels[c].push(lab[c]);
        }
    }
    channels
}

fn srgb_to_linear(v: f64) -> f64 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f64) -> f64 {
    if v <= 0.0031308 {
        12.92 * v
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

fn saturate(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// OpenCV's `COLOR_RGB2LAB` for 8-bit images: L·255/100, a + 128, b + 128.
fn rgb_to_lab8(rgb: [u8; 3]) -> [u8; 3] {
    let linear = rgb.map(|v| srgb_to_linear(f64::from(v) / 255.0));
    let xyz: Vec<f64> = RGB_TO_XYZ
        .iter()
        .map(|row| row.iter().zip(&linear).map(|(m, v)| m * v).sum())
        .collect();
    let f = |t: f64| {
        if t > 0.008856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let (fx, fy, fz) = (f(xyz[0] / WHITE_X), f(xyz[1]), f(xyz[2] / WHITE_Z));
    let l = if xyz[1] > 0.008856 {
        116.0 * fy - 16.0
    } else {
        903.3 * xyz[1]
    };
    [
        saturate(l * 255.0 / 100.0),
        saturate(500.0 * (fx - fy) + 128.0),
        saturate(200.0 * (fy - fz) + 128.0),
    ]
}

/// OpenCV's `COLOR_LAB2RGB` for 8-bit images.
fn lab8_to_rgb(lab: [u8; 3]) -> [u8; 3] {
    let l = f64::from(lab[0]) * 100.0 / 255.0;
    let (a, b) = (f64::from(lab[1]) - 128.0, f64::from(lab[2]) - 128.0);
    let (y, fy) = if l <= 7.9996248 {
        let y = l / 903.3;
        (y, 7.787 * y + 16.0 / 116.0)
    } else {
        let fy = (l + 16.0) / 116.0;
        (fy * fy * fy, fy)
    };
    let inverse = |f: f64| {
        if f <= 0.20689654 {
            (f - 16.0 / 116.0) / 7.787
        } else {
            f * f * f
        }
    };
    let xyz = [
        inverse(a / 500.0 + fy) * WHITE_X,
        y,
        inverse(fy - b / 200.0) * WHITE_Z,
    ];
    XYZ_TO_RGB.map(|row| {
        let linear: f64 = row.iter().zip(&xyz).map(|(m, v)| m * v).sum();
        saturate(linear_to_srgb(linear.clamp(0.0, 1.0)) * 255.0)
    })
}

/// scikit-image's `match_histograms` for one 8-bit channel: each value maps to the template
/// value at the same quantile (linear between template values), truncated back to 8 bits.
fn match_histogram(source: &[u8], template: &[u8]) -> Vec<u8> {
    let mut src_counts = [0u64; 256];
    source.iter().for_each(|&v| src_counts[usize::from(v)] += 1);
    let mut tmpl_counts = [0u64; 256];
    template
        .iter()
        .for_each(|&v| tmpl_counts[usize::from(v)] += 1);
    let quantiles = |counts: &[u64], total: usize| -> Vec<f64> {
        let mut running = 0u64;
        counts
            .iter()
            .map(|&c| {
                running += c;
                running as f64 / total as f64
            })
            .collect()
    };
    let src_quantiles = quantiles(&src_counts, source.len());
    let (tmpl_values, tmpl_present): (Vec<f64>, Vec<u64>) = tmpl_counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(v, &c)| (v as f64, c))
        .unzip();
    let tmpl_quantiles = quantiles(&tmpl_present, template.len());
    let lookup: Vec<u8> = src_quantiles
        .iter()
        .map(|&q| interp(q, &tmpl_quantiles, &tmpl_values) as u8)
        .collect();
    source.iter().map(|&v| lookup[usize::from(v)]).collect()
}

/// `numpy.interp` for increasing `xp`.
fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[xp.len() - 1] {
        return fp[fp.len() - 1];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// blendmodes 2022's luminosity blend of opaque pixels: the corrected colour moved to the
/// generated pixel's luma, clipped into gamut (min side first, then max with the luma and
/// maximum found before), ×255 truncated.
fn luminosity_blend(corrected: [u8; 3], generated: [u8; 3]) -> [u8; 3] {
    let lum = |c: &[f64; 3]| c[0] * 0.299 + c[1] * 0.587 + c[2] * 0.114;
    let mut c = corrected.map(|v| f64::from(v) / 255.0);
    let target = lum(&generated.map(|v| f64::from(v) / 255.0));
    let delta = target - lum(&c);
    c.iter_mut().for_each(|v| *v += delta);
    let l = lum(&c);
    let min = c.iter().copied().fold(f64::INFINITY, f64::min);
    let max = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if min < 0.0 {
        c = c.map(|v| l + (v - l) * l / (l - min));
    }
    if max > 1.0 {
        c = c.map(|v| l + (v - l) * (1.0 - l) / (max - l));
    }
    c.map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8)
}
