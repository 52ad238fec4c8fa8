//! A1111's img2img colour correction (`modules/processing.py: setup_color_correction`,
//! `apply_color_correction`), value for value: each result's colours are matched to the init
//! image's in OpenCV's 8-bit CIE Lab (scikit-image's histogram matching per channel), converted
//! back with OpenCV, and the result keeps its own luminosity (blendmodes' luminosity blend of
//! the matched image with the generated one).

pub mod histogram;
mod luminosity;
pub mod opencv_lab;

use histogram::match_histogram;
use image::RgbImage;
use luminosity::luminosity_blend;

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
    /// put back (A1111 `apply_color_correction`). The sizes need not agree (only histograms
    /// are compared); an empty target, where scikit-image raises, leaves `generated` as it is.
    pub fn apply(&self, generated: &RgbImage) -> RgbImage {
        if self.target[0].is_empty() {
            return generated.clone();
        }
        let source = lab_channels(generated);
        let matched: Vec<Vec<u8>> = (0..3)
            .map(|c| match_histogram(&source[c], &self.target[c]))
            .collect();
        let (w, h) = generated.dimensions();
        let mut out = RgbImage::new(w, h);
        for (i, (pixel, original)) in out.pixels_mut().zip(generated.pixels()).enumerate() {
            let lab = [matched[0][i], matched[1][i], matched[2][i]];
            let corrected = opencv_lab::lab_to_rgb(lab);
            pixel.0 = luminosity_blend(corrected, original.0);
        }
        out
    }
}

/// `cv2.cvtColor(image, cv2.COLOR_RGB2LAB)`, split into its L, a and b planes.
fn lab_channels(image: &RgbImage) -> [Vec<u8>; 3] {
    let len = image.pixels().len();
    let mut channels: [Vec<u8>; 3] = std::array::from_fn(|_| Vec::with_capacity(len));
    for pixel in image.pixels() {
        let lab = opencv_lab::rgb_to_lab(pixel.0);
        for (channel, value) in channels.iter_mut().zip(lab) {
            channel.push(value);
        }
    }
    channels
}
