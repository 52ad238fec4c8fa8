//! The pixel upscalers sdhost has (A1111 `modules/upscaler.py`: `UpscalerNone`,
//! `UpscalerLanczos`, `UpscalerNearest`) and `modules/images.py: resize_image`'s use of them
//! in resize mode 0, which Hires. fix calls with `upscaler_name`.

use image::RgbImage;

use super::resample::{resize, Filter};

/// A pixel upscaler by A1111's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelUpscaler {
    /// "None": Pillow's Lanczos resize straight to the size.
    None,
    /// "Lanczos": Pillow's Lanczos by the scale, then to the size.
    Lanczos,
    /// "Nearest": Pillow's nearest by the scale, then Lanczos to the size.
    Nearest,
}

const ALL: [(PixelUpscaler, &str); 3] = [
    (PixelUpscaler::None, "None"),
    (PixelUpscaler::Lanczos, "Lanczos"),
    (PixelUpscaler::Nearest, "Nearest"),
];

impl PixelUpscaler {
    /// The upscaler with A1111's exact name.
    pub fn named(name: &str) -> Option<Self> {
        ALL.iter().find(|(_, n)| *n == name).map(|(u, _)| *u)
    }

    /// The names, in A1111's order (`/sdapi/v1/upscalers`).
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|(_, n)| *n).collect()
    }

    /// One `do_upscale` step by `scale` (`int(side · scale)`).
    fn step(self, image: &RgbImage, scale: f64) -> RgbImage {
        let side = |v: u32| (f64::from(v) * scale) as u32;
        let (w, h) = (side(image.width()), side(image.height()));
        match self {
            PixelUpscaler::None => image.clone(),
            PixelUpscaler::Lanczos => resize(image, w, h, Filter::Lanczos, None),
            PixelUpscaler::Nearest => resize_nearest(image, w, h),
        }
    }

    /// `Upscaler.upscale`: up to three steps until the size reaches `scale` rounded down to
    /// multiples of 8, then Lanczos to exactly that (also the extras tab's upscale).
    pub fn upscale(self, image: &RgbImage, scale: f64) -> RgbImage {
        upscale_by(image, scale, &mut |img| self.step(img, scale))
    }

    /// The name A1111 lists.
    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(u, _)| *u == self)
            .map(|(_, n)| *n)
            .expect("every upscaler has a name")
    }
}

/// `Upscaler.upscale(img, scale)` with `do_upscale` = `step`: up to three steps until the
/// picture reaches `scale` rounded down to multiples of 8 (a scale of 1 steps anyway), stopping
/// when a step changes nothing, then Lanczos to exactly that size.
pub fn upscale_by(
    image: &RgbImage,
    scale: f64,
    step: &mut dyn FnMut(&RgbImage) -> RgbImage,
) -> RgbImage {
    let dest = |v: u32| ((f64::from(v) * scale) / 8.0).floor() as u32 * 8;
    let (dest_w, dest_h) = (dest(image.width()), dest(image.height()));
    let mut image = image.clone();
    for _ in 0..3 {
        if image.width() >= dest_w && image.height() >= dest_h && scale != 1.0 {
            break;
        }
        let before = image.dimensions();
        image = step(&image);
        if image.dimensions() == before {
            break;
        }
    }
    if image.dimensions() != (dest_w, dest_h) {
        image = resize(&image, dest_w, dest_h, Filter::Lanczos, None);
    }
    image
}

/// `images.resize_image`'s `resize(im, w, h)` with an upscaler other than None: `upscale`
/// by `max(w / width, h / height)` when that enlarges, then Lanczos to exactly `w` × `h`.
pub fn resize_to(
    image: &RgbImage,
    width: u32,
    height: u32,
    upscale: &mut dyn FnMut(&RgbImage, f64) -> RgbImage,
) -> RgbImage {
    let scale = (f64::from(width) / f64::from(image.width()))
        .max(f64::from(height) / f64::from(image.height()));
    let mut image = if scale > 1.0 {
        upscale(image, scale)
    } else {
        image.clone()
    };
    if image.dimensions() != (width, height) {
        image = resize(&image, width, height, Filter::Lanczos, None);
    }
    image
}

/// `images.resize_image(0, image, width, height, upscaler_name)`: the upscaler when it
/// enlarges, then Lanczos to exactly `width` × `height`.
pub fn upscale_to(upscaler: PixelUpscaler, image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if upscaler == PixelUpscaler::None {
        return resize(image, width, height, Filter::Lanczos, None);
    }
    resize_to(image, width, height, &mut |img, scale| {
        upscaler.upscale(img, scale)
    })
}

/// Pillow's NEAREST resize (`ImagingScaleAffine`): destination pixel x takes source
/// ⌊(x + ½) · in/out⌋, with the position summed step by step in f64 as Pillow sums it, so
/// exact halves fall where Pillow's rounding puts them (64 → 160: pixel 7 takes 2, not 3).
pub fn resize_nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let picks = |src_len: u32, dst_len: u32| -> Vec<u32> {
        let step = f64::from(src_len) / f64::from(dst_len);
        let mut at = step * 0.5;
        (0..dst_len)
            .map(|_| {
                let picked = (at as u32).min(src_len.saturating_sub(1));
                at += step;
                picked
            })
            .collect()
    };
    let (xs, ys) = (picks(w, width), picks(h, height));
    RgbImage::from_fn(width, height, |x, y| {
        *image.get_pixel(xs[x as usize], ys[y as usize])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn nearest_picks_as_pillow_sums_its_positions() {
        // Pillow 64 → 160 (measured): 0.2 + 7 · 0.4 summed in f64 is just below 3.
        let row = RgbImage::from_fn(64, 1, |x, _| Rgb([x as u8, 0, 0]));
        let picked: Vec<u8> = resize_nearest(&row, 160, 1)
            .pixels()
            .map(|p| p[0])
            .collect();
        assert_eq!(&picked[5..9], [2, 2, 2, 3]);
        assert_eq!((picked[52], picked[159]), (20, 63));
    }

    #[test]
    fn nearest_repeats_pixels_and_every_upscaler_reaches_the_size() {
        let image = RgbImage::from_fn(3, 2, |x, y| Rgb([(x * 80) as u8, (y * 100) as u8, 7]));
        let big = resize_nearest(&image, 6, 4);
        assert_eq!(big.get_pixel(1, 1), image.get_pixel(0, 0));
        assert_eq!(big.get_pixel(5, 3), image.get_pixel(2, 1));
        for name in PixelUpscaler::names() {
            let upscaler = PixelUpscaler::named(name).unwrap();
            assert_eq!(upscale_to(upscaler, &image, 13, 10).dimensions(), (13, 10));
        }
        assert_eq!(PixelUpscaler::named("ESRGAN_4x"), None);
        // Nearest by an exact factor is Lanczos-free.
        let exact = upscale_to(PixelUpscaler::Nearest, &image, 24, 16);
        assert_eq!(exact, resize_nearest(&image, 24, 16));
    }
}
