//! A1111's img2img colour correction (`modules/processing.py: setup_color_correction`,
//! `apply_color_correction`): each result's colours are matched to the init image's in 8-bit
//! CIE Lab (histogram matching per channel), and the result keeps its own luminosity (a
//! "luminosity" blend of the matched image with the generated one).

mod histogram;
mod luminosity;

use histogram::match_histogram;
use image::RgbImage;
use luminosity::luminosity_blend;

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
