//! Hires. fix (A1111 `modules/processing.py: StableDiffusionProcessingTxt2Img`): the target
//! size (`calculate_target_resolution`), and the upscale between the passes
//! — in latent space with one of `shared.latent_upscale_modes` (`torch.nn.functional.interpolate`)
//! or in pixels with an upscaler (`modules/images.py: resize_image`; Lanczos, Nearest, or a
//! model of the upscaler folders), decoded and encoded again.

use tch::Tensor;

pub use crate::request::{HiresSettings, DEFAULT_LATENT_MODE};
use crate::upscale::{ReadyUpscaler, Upscaler, UpscalerDirs};

/// Where the hires pass goes: the size it upscales to, and how much of the upscaled latent is
/// cropped away to reach hr_resize_x × hr_resize_y.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiresTarget {
    /// `hr_upscale_to_x`, `hr_upscale_to_y`: the upscale's size in pixels.
    pub upscale_to: (u32, u32),
    /// `truncate_x`, `truncate_y`: latent columns and rows cropped after the upscale, half
    /// from each side (the extra one from the end).
    pub truncate: (i64, i64),
}

impl HiresTarget {
    /// A1111 `calculate_target_resolution` for a first pass of `width` × `height` (`opt_f` 8).
    pub fn new(settings: &HiresSettings, width: u32, height: u32) -> Self {
        const OPT_F: i64 = 8;
        let (rx, ry) = (settings.hr_resize_x, settings.hr_resize_y);
        let (w, h) = (u64::from(width), u64::from(height));
        let side = |v: u64| v.min(u64::from(u32::MAX)) as u32;
        if rx == 0 && ry == 0 {
            // Python's int() of a float product truncates.
            let scale = |v: u32| (f64::from(v) * settings.hr_scale).max(0.0) as u32;
            return HiresTarget {
                upscale_to: (scale(width), scale(height)),
                truncate: (0, 0),
            };
        }
        let by_width = (rx, side(u64::from(rx) * h / w));
        let by_height = (side(u64::from(ry) * w / h), ry);
        if ry == 0 {
            return HiresTarget {
                upscale_to: by_width,
                truncate: (0, 0),
            };
        }
        if rx == 0 {
            return HiresTarget {
                upscale_to: by_height,
                truncate: (0, 0),
            };
        }
        // Both given: cover rx × ry keeping the aspect ratio, then crop the excess.
        let src_ratio = f64::from(width) / f64::from(height);
        let dst_ratio = f64::from(rx) / f64::from(ry);
        let upscale_to = if src_ratio < dst_ratio {
            by_width
        } else {
            by_height
        };
        let truncate = |to: u32, target: u32| (i64::from(to) - i64::from(target)).div_euclid(OPT_F);
        HiresTarget {
            upscale_to,
            truncate: (truncate(upscale_to.0, rx), truncate(upscale_to.1, ry)),
        }
    }

    /// The latent size [h, w] the upscale makes (`target // opt_f`).
    pub fn upscaled_latent(&self, downscale: u32) -> (i64, i64) {
        (
            i64::from(self.upscale_to.1 / downscale),
            i64::from(self.upscale_to.0 / downscale),
        )
    }

    /// Crops the upscaled latent [B, C, h, w] as A1111 does
    /// (`samples[:, :, ty//2 : h-(ty+1)//2, tx//2 : w-(tx+1)//2]`).
    pub fn crop(&self, latent: &Tensor) -> Tensor {
        let (tx, ty) = self.truncate;
        if tx == 0 && ty == 0 {
            return latent.shallow_clone();
        }
        let size = latent.size();
        let (h, w) = (size[2], size[3]);
        let span = |len: i64, t: i64| {
            let start = t.div_euclid(2).clamp(0, len);
            let end = (len - (t + 1).div_euclid(2)).clamp(start, len);
            (start, end - start)
        };
        let (y0, hh) = span(h, ty);
        let (x0, ww) = span(w, tx);
        latent.narrow(2, y0, hh).narrow(3, x0, ww)
    }
}

/// A latent upscale mode: `torch.nn.functional.interpolate`'s mode and antialiasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentMode {
    /// "bilinear" (align_corners False).
    Bilinear { antialias: bool },
    /// "bicubic" (align_corners False).
    Bicubic { antialias: bool },
    /// "nearest" (PyTorch's legacy nearest: floor(dst · in/out)).
    Nearest,
    /// "nearest-exact" (Pillow's and OpenCV's nearest: floor((dst + ½) · in/out)).
    NearestExact,
}

/// A1111's `shared.latent_upscale_modes`, in its order.
pub const LATENT_UPSCALE_MODES: &[(&str, LatentMode)] = &[
    ("Latent", LatentMode::Bilinear { antialias: false }),
    (
        "Latent (antialiased)",
        LatentMode::Bilinear { antialias: true },
    ),
    ("Latent (bicubic)", LatentMode::Bicubic { antialias: false }),
    (
        "Latent (bicubic antialiased)",
        LatentMode::Bicubic { antialias: true },
    ),
    ("Latent (nearest)", LatentMode::Nearest),
    ("Latent (nearest-exact)", LatentMode::NearestExact),
];

impl LatentMode {
    /// `latent` [B, C, h, w] resized to `size` [h, w] as `F.interpolate(size=…)` does.
    pub fn resize(self, latent: &Tensor, size: (i64, i64)) -> Result<Tensor, tch::TchError> {
        let out = [size.0, size.1];
        match self {
            LatentMode::Bilinear { antialias: false } => {
                latent.f_upsample_bilinear2d(out, false, None, None)
            }
            LatentMode::Bilinear { antialias: true } => {
                latent.f_internal_upsample_bilinear2d_aa(out, false, None, None)
            }
            LatentMode::Bicubic { antialias: false } => {
                latent.f_upsample_bicubic2d(out, false, None, None)
            }
            LatentMode::Bicubic { antialias: true } => {
                latent.f_internal_upsample_bicubic2d_aa(out, false, None, None)
            }
            LatentMode::Nearest => latent.f_upsample_nearest2d(out, None, None),
            LatentMode::NearestExact => latent.f_internal_upsample_nearest_exact2d(out, None, None),
        }
    }
}

/// How the first pass is brought to the hires size, as `hr_upscaler` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiresUpscaler {
    /// In latent space.
    Latent(LatentMode),
    /// In pixels: decoded, upscaled, encoded again.
    Pixels(Upscaler),
}

/// The upscale of a prepared hires pass: a latent mode, or an upscaler ready to run (its
/// model loaded).
#[derive(Clone)]
pub enum HiresUpscale {
    /// In latent space.
    Latent(LatentMode),
    /// In pixels.
    Pixels(ReadyUpscaler),
}

/// `hr_upscaler` names no upscaler sdhost has (A1111: "could not find upscaler named …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not find upscaler named {name} (latent modes: {modes}; upscalers: {upscalers})", modes = latent_names().join(", "))]
pub struct UnknownUpscaler {
    /// The name asked for.
    pub name: String,
    /// The upscalers there are, comma-separated.
    pub upscalers: String,
}

fn latent_names() -> Vec<&'static str> {
    LATENT_UPSCALE_MODES.iter().map(|(name, _)| *name).collect()
}

impl HiresUpscaler {
    /// The upscaler `hr_upscaler` names (None: A1111's default latent mode): a latent mode,
    /// a pixel upscaler, or a model of `dirs`; exact names as A1111 matches them.
    pub fn named(name: Option<&str>, dirs: &UpscalerDirs) -> Result<Self, UnknownUpscaler> {
        let name = name.unwrap_or(DEFAULT_LATENT_MODE);
        if let Some((_, mode)) = LATENT_UPSCALE_MODES.iter().find(|(n, _)| *n == name) {
            return Ok(HiresUpscaler::Latent(*mode));
        }
        Upscaler::named(name, dirs)
            .map(HiresUpscaler::Pixels)
            .ok_or_else(|| UnknownUpscaler {
                name: name.to_string(),
                upscalers: Upscaler::all(dirs)
                    .iter()
                    .map(Upscaler::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn settings(scale: f64, rx: u32, ry: u32) -> HiresSettings {
        HiresSettings {
            enable_hr: true,
            hr_scale: scale,
            hr_resize_x: rx,
            hr_resize_y: ry,
            ..HiresSettings::default()
        }
    }

    #[test]
    fn target_resolution_as_a1111_calculates_it() {
        // Upscale by: int(side · scale).
        let t = HiresTarget::new(&settings(2.0, 0, 0), 512, 768);
        assert_eq!((t.upscale_to, t.truncate), ((1024, 1536), (0, 0)));
        let t = HiresTarget::new(&settings(1.35, 0, 0), 500, 333);
        assert_eq!(t.upscale_to, (675, 449));
        // One side given: the other from the aspect ratio, floor division.
        let t = HiresTarget::new(&settings(2.0, 1000, 0), 512, 768);
        assert_eq!((t.upscale_to, t.truncate), ((1000, 1500), (0, 0)));
        let t = HiresTarget::new(&settings(2.0, 0, 1000), 512, 768);
        assert_eq!(t.upscale_to, (666, 1000));
        // Both: cover, then crop the latent excess.
        let t = HiresTarget::new(&settings(2.0, 1024, 1024), 512, 768);
        assert_eq!((t.upscale_to, t.truncate), ((1024, 1536), (0, 64)));
        let t = HiresTarget::new(&settings(2.0, 1000, 500), 512, 512);
        assert_eq!((t.upscale_to, t.truncate), ((1000, 1000), (0, 62)));
        let t = HiresTarget::new(&settings(2.0, 900, 1000), 768, 512);
        assert_eq!((t.upscale_to, t.truncate), ((1500, 1000), (75, 0)));
    }

    #[test]
    fn the_crop_takes_half_from_each_side_the_odd_one_from_the_end() {
        let latent = Tensor::arange(2 * 10 * 9, (Kind::Float, Device::Cpu)).reshape([1, 2, 10, 9]);
        let target = HiresTarget {
            upscale_to: (72, 80),
            truncate: (3, 0),
        };
        let cropped = target.crop(&latent);
        assert_eq!(cropped.size(), [1, 2, 10, 6]);
        assert_eq!(
            cropped.double_value(&[0, 0, 0, 0]),
            1.0,
            "one column off the start"
        );
    }

    #[test]
    fn latent_modes_give_the_target_shape_and_unknown_names_are_refused() {
        let latent = Tensor::randn([2, 4, 8, 6], (Kind::Float, Device::Cpu));
        for (name, mode) in LATENT_UPSCALE_MODES {
            let out = mode.resize(&latent, (16, 13)).expect(name);
            assert_eq!(out.size(), [2, 4, 16, 13], "{name}");
            assert_eq!(
                HiresUpscaler::named(Some(name), &UpscalerDirs::default()),
                Ok(HiresUpscaler::Latent(*mode))
            );
        }
        // Nearest repeats values; nearest-exact picks centres.
        let row = Tensor::from_slice(&[0.0f32, 1.0, 2.0]).reshape([1, 1, 1, 3]);
        let near = LatentMode::Nearest.resize(&row, (1, 2)).unwrap();
        let exact = LatentMode::NearestExact.resize(&row, (1, 2)).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(near.reshape([-1])).unwrap(),
            [0.0, 1.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(exact.reshape([-1])).unwrap(),
            [0.0, 2.0]
        );
        let none = UpscalerDirs::default();
        assert_eq!(
            HiresUpscaler::named(None, &none),
            Ok(HiresUpscaler::Latent(LatentMode::Bilinear {
                antialias: false
            }))
        );
        assert!(HiresUpscaler::named(Some("Lanczos"), &none).is_ok());
        let error = HiresUpscaler::named(Some("R-ESRGAN 4x+"), &none).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("upscalers: None, Lanczos, Nearest"),
            "{error}"
        );
    }
}
