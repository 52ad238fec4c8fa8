//! A1111's img2img resize modes (`modules/images.py: resize_image`, as
//! `modules/processing.py: StableDiffusionProcessingImg2Img.init` calls it).

use image::{imageops, RgbImage};

use super::resample::{resize, Filter};

/// How the init image is fitted to the job's size (A1111's "Resize mode", 0–3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// 0: stretch to the size.
    JustResize,
    /// 1: cover the size, cropping the overflow.
    CropAndResize,
    /// 2: fit inside the size and stretch the edge rows/columns over the empty bands.
    ResizeAndFill,
    /// 3: VAE-encode at the image's own size and resize the latent (bilinear).
    LatentUpscale,
}

impl ResizeMode {
    /// A1111's index of the mode (0-3).
    pub fn index(self) -> u8 {
        match self {
            ResizeMode::JustResize => 0,
            ResizeMode::CropAndResize => 1,
            ResizeMode::ResizeAndFill => 2,
            ResizeMode::LatentUpscale => 3,
        }
    }

    /// A1111's mode index (0–3) or a name such as `crop-and-resize`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(
            match text
                .trim()
                .to_ascii_lowercase()
                .replace(['_', ' '], "-")
                .as_str()
            {
                "0" | "just-resize" => ResizeMode::JustResize,
                "1" | "crop-and-resize" => ResizeMode::CropAndResize,
                "2" | "resize-and-fill" => ResizeMode::ResizeAndFill,
                "3"
                | "latent-upscale"
                | "just-resize-latent-upscale"
                | "just-resize-(latent-upscale)" => ResizeMode::LatentUpscale,
                _ => return None,
            },
        )
    }
}

impl ResizeMode {
    /// The label A1111's UI shows.
    pub fn label(self) -> &'static str {
        match self {
            ResizeMode::JustResize => "Just resize",
            ResizeMode::CropAndResize => "Crop and resize",
            ResizeMode::ResizeAndFill => "Resize and fill",
            ResizeMode::LatentUpscale => "Just resize (latent upscale)",
        }
    }
}

/// Pastes `src` onto `canvas` at (x, y), which may be negative (cropping `src`).
fn paste(canvas: &mut RgbImage, src: &RgbImage, x: i64, y: i64) {
    imageops::replace(canvas, src, x, y);
}

/// The init image fitted to `width`×`height` in pixel space (A1111 `resize_image` with no
/// upscaler set). Latent upscale leaves the pixels alone: the caller resizes the latent.
pub fn resize_image(mode: ResizeMode, image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let (tw, th) = (i64::from(width), i64::from(height));
    let lanczos =
        |src_w: i64, src_h: i64| resize(image, src_w as u32, src_h as u32, Filter::Lanczos, None);
    match mode {
        ResizeMode::LatentUpscale => image.clone(),
        ResizeMode::JustResize => lanczos(tw, th),
        ResizeMode::CropAndResize | ResizeMode::ResizeAndFill => {
            // Aspect ratios compared as A1111 does (floats), sizes by floor division: crop
            // covers the target, fill fits inside it.
            let ratio = tw as f64 / th as f64;
            let src_ratio = w as f64 / h as f64;
            let fit_width = if mode == ResizeMode::CropAndResize {
                ratio > src_ratio
            } else {
                ratio < src_ratio
            };
            let (src_w, src_h) = if fit_width {
                (tw, h * tw / w)
            } else {
                (w * th / h, th)
            };
            let resized = lanczos(src_w, src_h);
            let mut canvas = RgbImage::new(width, height);
            paste(
                &mut canvas,
                &resized,
                tw / 2 - src_w / 2,
                th / 2 - src_h / 2,
            );
            if mode == ResizeMode::CropAndResize {
                return canvas;
            }
            if ratio < src_ratio {
                let fill = th / 2 - src_h / 2;
                if fill > 0 {
                    let band = |row: f64| {
                        resize(
                            &resized,
                            width,
                            fill as u32,
                            Filter::Bicubic,
                            Some((0.0, row, tw as f64, row)),
                        )
                    };
                    paste(&mut canvas, &band(0.0), 0, 0);
                    paste(&mut canvas, &band(src_h as f64), 0, fill + src_h);
                }
            } else if ratio > src_ratio {
                let fill = tw / 2 - src_w / 2;
                if fill > 0 {
                    let band = |column: f64| {
                        resize(
                            &resized,
                            fill as u32,
                            height,
                            Filter::Bicubic,
                            Some((column, 0.0, column, th as f64)),
                        )
                    };
                    paste(&mut canvas, &band(0.0), 0, 0);
                    paste(&mut canvas, &band(src_w as f64), fill + src_w, 0);
                }
            }
            canvas
        }
    }
}
