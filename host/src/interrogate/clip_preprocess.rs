//! CLIP's image preprocessing (`clip/clip.py: _transform`): torchvision's `Resize(n, BICUBIC)`
//! on the shorter side, `CenterCrop(n)`, `ToTensor`, `Normalize` with CLIP's mean and std.
//! The resize is Pillow's ([`crate::prepare::resample`]), so the 8-bit crop equals A1111's.

use crate::prepare::resample::{resize, Filter};
use image::RgbImage;
use tch::{Kind, Tensor};

/// CLIP's per-channel mean (`Normalize` in `_transform`; BLIP uses the same values).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation.
// OpenAI's literals as written; as f32 they equal the shorter ones clippy proposes.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The size torchvision's `Resize(n)` gives a `width`×`height` picture: the shorter side
/// becomes `n`, the longer `int(n · long / short)` (truncated).
pub fn resized_size(width: u32, height: u32, n: u32) -> (u32, u32) {
    let (short, long) = (width.min(height), width.max(height));
    let new_long = (f64::from(n) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (n, new_long)
    } else {
        (new_long, n)
    }
}

/// The top-left corner of torchvision's `CenterCrop(n)` in a `width`×`height` picture:
/// `int(round((side − n) / 2))`, Python's `round` taking halves to even (an offset of 0.5 is
/// 0, 1.5 is 2).
pub fn crop_origin(width: u32, height: u32, n: u32) -> (u32, u32) {
    let offset = |side: u32| (f64::from(side.saturating_sub(n)) / 2.0).round_ties_even() as u32;
    (offset(width), offset(height))
}

/// `Resize(n, BICUBIC)` then `CenterCrop(n)`: the `n`×`n` 8-bit picture CLIP sees. A picture
/// already at its resized size is not resampled (torchvision returns it as is). An empty
/// picture, which A1111 cannot take either, reads as black.
pub fn resize_and_crop(image: &RgbImage, n: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return RgbImage::new(n, n);
    }
    let (rw, rh) = resized_size(w, h, n);
    let resized;
    let source = if (rw, rh) == (w, h) {
        image
    } else {
        resized = resize(image, rw, rh, Filter::Bicubic, None);
        &resized
    };
    let (left, top) = crop_origin(rw, rh, n);
    image::imageops::crop_imm(source, left, top, n, n).to_image()
}

/// `ToTensor` + `Normalize`: [1, 3, H, W] fp32, `(x/255 − mean) / std` per channel.
pub fn normalize(image: &RgbImage) -> Tensor {
    let (w, h) = image.dimensions();
    let pixels = Tensor::from_slice(image.as_raw())
        .reshape([i64::from(h), i64::from(w), 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0;
    let mean = Tensor::from_slice(&CLIP_MEAN).reshape([3, 1, 1]);
    let std = Tensor::from_slice(&CLIP_STD).reshape([3, 1, 1]);
    ((pixels - mean) / std).unsqueeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_and_crop_arithmetic_is_torchvision_s() {
        assert_eq!(resized_size(300, 200, 224), (336, 224));
        assert_eq!(resized_size(200, 299, 224), (224, 334));
        assert_eq!(resized_size(224, 500, 224), (224, 500));
        // 225 − 224 = 1 → offset 0.5 → 0; 227 → 1.5 → 2; 226 → 1.
        assert_eq!(crop_origin(225, 224, 224), (0, 0));
        assert_eq!(crop_origin(227, 224, 224), (2, 0));
        assert_eq!(crop_origin(224, 226, 224), (0, 1));
        let image = RgbImage::from_fn(56, 80, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let out = resize_and_crop(&image, 56);
        assert_eq!(out.dimensions(), (56, 56));
        assert_eq!(out.get_pixel(3, 0), image.get_pixel(3, 12));
        assert_eq!(
            resize_and_crop(&RgbImage::new(0, 5), 56).dimensions(),
            (56, 56)
        );
    }
}
