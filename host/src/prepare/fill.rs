//! "Masked content: fill" (A1111 `modules/masking.py: fill`): the hole is painted with ever
//! finer blurs of the colours around it, the unmasked pixels stay as they are.

use image::{GrayImage, RgbImage, RgbaImage};

use super::pillow::{alpha_composite, gaussian_blur, paste_with_mask, unpremultiply};

/// (Blur radius, times composited), coarse to fine; the last layer is the unblurred image.
const FILL_LAYERS: [(f32, usize); 6] = [
    (256.0, 1),
    (64.0, 1),
    (16.0, 2),
    (4.0, 4),
    (2.0, 2),
    (0.0, 1),
];

/// Fills the pixels under `mask` (255 = hole) from the surrounding colours.
pub fn fill(image: &RgbImage, mask: &GrayImage) -> RgbImage {
    let (w, h) = image.dimensions();
    // The image without its hole, premultiplied: keep-alpha = inverted mask.
    let opaque = RgbaImage::from_fn(w, h, |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        image::Rgba([r, g, b, 255])
    });
    let keep = super::mask::invert(mask);
    let mut holed = RgbaImage::new(w, h);
    paste_with_mask(&mut holed, &opaque, &keep);
    let mut result = RgbaImage::new(w, h);
    for (radius, repeats) in FILL_LAYERS {
        let layer = unpremultiply(&gaussian_blur(&holed, radius));
        for _ in 0..repeats {
            alpha_composite(&mut result, &layer);
        }
    }
    RgbImage::from_fn(w, h, |x, y| {
        let [r, g, b, _] = result.get_pixel(x, y).0;
        image::Rgb([r, g, b])
    })
}
