//! A1111 v1.10.1's extras upscale (`scripts/postprocessing_upscale.py:
//! ScriptPostprocessingUpscale`): one picture through a main upscaler, by a scale or to cover a
//! size (optionally cropped to it), with a second upscaler blended in; the infotext entries it
//! adds. The HTTP API's `/sdapi/v1/extra-*` and the daemon's `upscale` request both run it.

use image::{Rgb, RgbImage};

use super::{ReadyUpscaler, Upscaler, UpscalerCache, UpscalerDirs, UpscalerError};
use crate::infotext::{py_float, quote};

/// How large the result is: A1111's resize mode 0 (by `upscaling_resize`) or 1 (to
/// `upscaling_resize_w` × `_h`, with `upscaling_crop`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpscaleSize {
    /// Mode 0: scale both sides by this (> 0).
    By(f64),
    /// Mode 1: the scale that covers `width` × `height`; with `crop`, centred on a canvas of
    /// exactly that size.
    To { width: u32, height: u32, crop: bool },
}

/// What the extras upscale is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtrasUpscale {
    /// The result's size.
    pub size: UpscaleSize,
    /// The main upscaler's name ("None": the picture unchanged).
    pub upscaler_1: String,
    /// The second upscaler's name ("None": none).
    pub upscaler_2: String,
    /// How much of the second upscaler's result is blended in, 0-1.
    pub upscaler_2_visibility: f64,
}

/// Where the extras find and run upscalers.
pub struct UpscalerSource<'a> {
    /// The upscaler folders.
    pub dirs: &'a UpscalerDirs,
    /// The loaded model upscaler, shared between requests.
    pub cache: &'a UpscalerCache,
    /// Where models run.
    pub device: tch::Device,
}

/// Why the extras upscale did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ExtrasError {
    /// No upscaler has this name (A1111's assertion's text).
    #[error("could not find upscaler named {0}")]
    Unknown(String),
    /// The model file of the upscaler cannot be used.
    #[error("upscaler {name}: {source}")]
    Load { name: String, source: UpscalerError },
    /// The caller's stop said so between tiles.
    #[error("the upscale was stopped")]
    Stopped,
}

/// The postprocessing infotext's entries in A1111's order (values as Python prints them).
pub type PostInfo = Vec<(String, String)>;

impl ExtrasUpscale {
    /// The scale `upscale` is called with for a `width` × `height` picture.
    pub fn scale_for(&self, width: u32, height: u32) -> f64 {
        match self.size {
            UpscaleSize::By(scale) => scale,
            UpscaleSize::To {
                width: w,
                height: h,
                ..
            } => (f64::from(w) / f64::from(width)).max(f64::from(h) / f64::from(height)),
        }
    }

    /// The result's size for a `width` × `height` picture, known before any pixel work:
    /// `Upscaler.upscale` ends on the scaled size rounded down to multiples of 8, a crop on
    /// the target, "None" on the picture's own.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        if self.upscaler_1 == "None" {
            return (width, height);
        }
        if let UpscaleSize::To {
            width: w,
            height: h,
            crop: true,
        } = self.size
        {
            return (w, h);
        }
        let scale = self.scale_for(width, height);
        // As `upscale_by` rounds, in floats so that a huge scale saturates, not wraps.
        let side = |v: u32| (((f64::from(v) * scale) / 8.0).floor() * 8.0) as u32;
        (side(width), side(height))
    }
}

/// The upscaler `name` ready to run ("None": nothing to run); a model is read now, so a
/// broken or foreign file fails before any pixel work.
pub fn find_upscaler(
    name: &str,
    source: &UpscalerSource,
) -> Result<Option<ReadyUpscaler>, ExtrasError> {
    if name == "None" {
        return Ok(None);
    }
    let upscaler =
        Upscaler::named(name, source.dirs).ok_or_else(|| ExtrasError::Unknown(name.into()))?;
    source
        .cache
        .ready(&upscaler, source.device)
        .map(Some)
        .map_err(|source| ExtrasError::Load {
            name: name.into(),
            source,
        })
}

fn set_info(info: &mut PostInfo, key: &str, value: String) {
    match info.iter_mut().find(|(k, _)| k == key) {
        Some((_, slot)) => *slot = value,
        None => info.push((key.to_string(), value)),
    }
}

/// `ScriptPostprocessingUpscale.upscale`: one upscaler's result and what it adds to `info`.
fn upscale_once(
    image: &RgbImage,
    upscaler: &ReadyUpscaler,
    settings: &ExtrasUpscale,
    info: &mut PostInfo,
    stop: &dyn Fn() -> bool,
) -> Result<RgbImage, ExtrasError> {
    match settings.size {
        UpscaleSize::To { width, height, .. } => {
            set_info(info, "Postprocess upscale to", format!("{width}x{height}"))
        }
        UpscaleSize::By(scale) => set_info(info, "Postprocess upscale by", py_float(scale)),
    }
    let scale = settings.scale_for(image.width(), image.height());
    let upscaled = upscaler
        .upscale_until(image, scale, stop)
        .ok_or(ExtrasError::Stopped)?;
    if let UpscaleSize::To {
        width,
        height,
        crop: true,
    } = settings.size
    {
        let cropped = paste_centred(&upscaled, width, height);
        set_info(
            info,
            "Postprocess crop to",
            format!("{}x{}", cropped.width(), cropped.height()),
        );
        return Ok(cropped);
    }
    Ok(upscaled)
}

/// Pillow's `Image.new("RGB", (w, h)).paste(image, (w//2 - iw//2, h//2 - ih//2))`: black
/// where the image does not reach, cut where it overhangs.
fn paste_centred(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let x0 = i64::from(width / 2) - i64::from(image.width() / 2);
    let y0 = i64::from(height / 2) - i64::from(image.height() / 2);
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) - x0, i64::from(y) - y0);
        if sx >= 0 && sy >= 0 && sx < i64::from(image.width()) && sy < i64::from(image.height()) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Pillow's `Image.blend(a, b, alpha)`: `a + alpha·(b − a)` per channel, truncated.
fn blend(a: &RgbImage, b: &RgbImage, alpha: f64) -> RgbImage {
    let alpha = alpha as f32;
    RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (pa, pb) = (a.get_pixel(x, y), b.get_pixel(x, y));
        Rgb(std::array::from_fn(|c| {
            let value = f32::from(pa[c]) + alpha * (f32::from(pb[c]) - f32::from(pa[c]));
            value.clamp(0.0, 255.0) as u8
        }))
    })
}

/// `ScriptPostprocessingUpscale.process`: the image after the upscalers, and the infotext
/// entries they add. Both upscalers are found (and a model read) before any pixel work;
/// `stop` is asked between a model's tiles.
pub fn postprocess(
    image: &RgbImage,
    settings: &ExtrasUpscale,
    upscalers: &UpscalerSource,
    stop: &dyn Fn() -> bool,
) -> Result<(RgbImage, PostInfo), ExtrasError> {
    let mut info = PostInfo::new();
    let Some(first) = find_upscaler(&settings.upscaler_1, upscalers)? else {
        return Ok((image.clone(), info));
    };
    let second = find_upscaler(&settings.upscaler_2, upscalers)?;
    let mut result = upscale_once(image, &first, settings, &mut info, stop)?;
    info.push(("Postprocess upscaler".into(), settings.upscaler_1.clone()));
    if let Some(second) = second.filter(|_| settings.upscaler_2_visibility > 0.0) {
        let other = upscale_once(image, &second, settings, &mut info, stop)?;
        if other.dimensions() == result.dimensions() {
            result = blend(&result, &other, settings.upscaler_2_visibility);
        }
        info.push(("Postprocess upscaler 2".into(), settings.upscaler_2.clone()));
    }
    Ok((result, info))
}

/// The postprocessing infotext (`", ".join(k: quote(v))`).
pub fn infotext(info: &PostInfo) -> String {
    info.iter()
        .map(|(k, v)| {
            if k == v {
                k.clone()
            } else {
                format!("{k}: {}", quote(v))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    fn upscale(size: UpscaleSize, first: &str, second: &str, visibility: f64) -> ExtrasUpscale {
        ExtrasUpscale {
            size,
            upscaler_1: first.into(),
            upscaler_2: second.into(),
            upscaler_2_visibility: visibility,
        }
    }

    #[test]
    fn upscales_by_and_to_with_a1111_info_and_known_sizes() {
        let image = RgbImage::from_fn(10, 6, |x, y| Rgb([(x * 20) as u8, (y * 30) as u8, 9]));
        let (dirs, cache) = (UpscalerDirs::default(), UpscalerCache::default());
        let source = UpscalerSource {
            dirs: &dirs,
            cache: &cache,
            device: tch::Device::Cpu,
        };
        let mut by = upscale(UpscaleSize::By(2.0), "Nearest", "None", 0.0);
        let (out, info) = postprocess(&image, &by, &source, &never).unwrap();
        // `Upscaler.upscale` rounds to multiples of 8.
        assert_eq!(out.dimensions(), (16, 8));
        assert_eq!(by.output_size(10, 6), (16, 8));
        assert_eq!(
            infotext(&info),
            "Postprocess upscale by: 2.0, Postprocess upscaler: Nearest"
        );
        by.upscaler_1 = "None".into();
        assert_eq!(
            postprocess(&image, &by, &source, &never).unwrap(),
            (image.clone(), vec![])
        );
        assert_eq!(by.output_size(10, 6), (10, 6));
        by.upscaler_1 = "R-ESRGAN 4x+".into();
        let error = postprocess(&image, &by, &source, &never).unwrap_err();
        assert_eq!(
            error.to_string(),
            "could not find upscaler named R-ESRGAN 4x+"
        );

        let crop = UpscaleSize::To {
            width: 30,
            height: 30,
            crop: true,
        };
        let to = upscale(crop, "Lanczos", "Nearest", 0.5);
        let (out, info) = postprocess(&image, &to, &source, &never).unwrap();
        assert_eq!(out.dimensions(), (30, 30));
        assert_eq!(to.output_size(10, 6), (30, 30));
        assert_eq!(
            infotext(&info),
            "Postprocess upscale to: 30x30, Postprocess crop to: 30x30, Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest"
        );
        let no_crop = UpscaleSize::To {
            width: 30,
            height: 30,
            crop: false,
        };
        let no_crop = upscale(no_crop, "Lanczos", "None", 0.0);
        // Scale 5 covers 30x30; 50x30 rounded to multiples of 8.
        let out = postprocess(&image, &no_crop, &source, &never).unwrap().0;
        assert_eq!(out.dimensions(), (48, 24));
        assert_eq!(no_crop.output_size(10, 6), (48, 24));
    }

    #[test]
    fn blend_and_paste_follow_pillow() {
        let a = RgbImage::from_pixel(2, 2, Rgb([10, 200, 0]));
        let b = RgbImage::from_pixel(2, 2, Rgb([21, 100, 255]));
        assert_eq!(blend(&a, &b, 0.5).get_pixel(0, 0), &Rgb([15, 150, 127]));
        let small = RgbImage::from_pixel(2, 2, Rgb([255, 255, 255]));
        let canvas = paste_centred(&small, 4, 4);
        assert_eq!(canvas.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(canvas.get_pixel(1, 1), &Rgb([255, 255, 255]));
    }
}
