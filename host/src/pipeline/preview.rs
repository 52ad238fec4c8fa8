//! Live previews during sampling, as A1111's live previews make them (`show_progress_type`,
//! `show_progress_every_n_steps`): the sampler's current denoised prediction (scaled latents
//! [n, 4, h, w]) turned into 8-bit RGB images, either by A1111's cheap linear approximation
//! (`sd_vae_approx.cheap_approximation`, at latent resolution) or by a real VAE decode.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;

use image::RgbImage;
use tch::{Kind, Tensor};

use super::decode::{decode_latents, tensor_to_image};
use crate::models::vae::{AutoencoderKl, VaeTiling, SDXL_LATENT_SCALE};

/// A1111's `cheap_approximation` coefficients for SD1/SD2 latents: row = latent channel,
/// columns = R, G, B (they act on the scaled latent the sampler works in).
pub const CHEAP_COEFFICIENTS: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// The same for SDXL's latent space (`modules/sd_vae_approx.py: cheap_approximation`).
pub const CHEAP_COEFFICIENTS_SDXL: [[f32; 3]; 4] = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
];

/// The cheap coefficients for the latent space `vae` decodes: SDXL's is told by its latent
/// scale, the one family constant a VAE carries.
pub fn cheap_coefficients(vae: &AutoencoderKl) -> &'static [[f32; 3]; 4] {
    if vae.config().scaling_factor == SDXL_LATENT_SCALE {
        &CHEAP_COEFFICIENTS_SDXL
    } else {
        &CHEAP_COEFFICIENTS
    }
}

/// How a preview is made (A1111's `show_progress_type` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewMethod {
    /// Latent channels mixed linearly into RGB, at latent resolution (1/8 of the image).
    ApproxCheap,
    /// A VAE decode of the denoised latent, at image resolution.
    Full,
}

impl PreviewMethod {
    /// Every method, in the order clients are told them.
    pub const ALL: [PreviewMethod; 2] = [PreviewMethod::ApproxCheap, PreviewMethod::Full];

    /// A1111's name of the method.
    pub fn label(self) -> &'static str {
        match self {
            PreviewMethod::ApproxCheap => "Approx cheap",
            PreviewMethod::Full => "Full",
        }
    }
}

impl FromStr for PreviewMethod {
    type Err = PreviewError;

    /// A1111's name, case-insensitive, or a short form (`approx-cheap`, `cheap`, `full`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "approx cheap" | "approx-cheap" | "approx_cheap" | "cheap" => {
                Ok(PreviewMethod::ApproxCheap)
            }
            "full" => Ok(PreviewMethod::Full),
            _ => Err(PreviewError::UnknownMethod(name.to_string())),
        }
    }
}

/// Which previews a job sends: one every `every_n_steps` sampler steps of each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewSettings {
    /// How previews are made.
    pub method: PreviewMethod,
    /// A1111's `show_progress_every_n_steps` (at least 1).
    pub every_n_steps: usize,
}

impl PreviewSettings {
    /// Settings with `every_n_steps` checked (0 would mean never, which is no settings at all).
    pub fn new(method: PreviewMethod, every_n_steps: i64) -> Result<Self, PreviewError> {
        match usize::try_from(every_n_steps) {
            Ok(every_n_steps) if every_n_steps >= 1 => Ok(PreviewSettings {
                method,
                every_n_steps,
            }),
            _ => Err(PreviewError::Every(every_n_steps)),
        }
    }

    /// Whether sampler step `step` (from 1, within its batch) gets a preview: every N-th, as
    /// A1111's `sampling_step % show_progress_every_n_steps == 0`.
    pub fn due(&self, step: usize) -> bool {
        step % self.every_n_steps == 0
    }
}

/// Why no preview was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreviewError {
    /// A method name that is not one of [`PreviewMethod::ALL`].
    #[error("unknown preview method \"{0}\" (known: \"Approx cheap\", \"Full\")")]
    UnknownMethod(String),
    /// A step interval below 1.
    #[error("preview interval must be at least 1 step, got {0}")]
    Every(i64),
    /// The latent is not [n, 4, h, w] or the index is outside the batch.
    #[error("cannot preview latents of shape {shape:?} at index {index}")]
    Shape { shape: Vec<i64>, index: i64 },
    /// libtorch failed (out of memory in a full decode, device error).
    #[error("preview: {0}")]
    Torch(String),
}

/// The cheap approximation's RGB in about [−1, 1], [n, 3, h, w] f32 on the latent's device
/// (f32 whatever the latent's dtype, so bf16/fp16 latents give the same pixels as their f32
/// values).
pub fn cheap_approximation(latents: &Tensor) -> Tensor {
    cheap_approximation_with(latents, &CHEAP_COEFFICIENTS)
}

/// [`cheap_approximation`] with a family's coefficients.
pub fn cheap_approximation_with(latents: &Tensor, coefficients: &[[f32; 3]; 4]) -> Tensor {
    let flat: Vec<f32> = coefficients.iter().flatten().copied().collect();
    let coefficients = Tensor::from_slice(&flat)
        .reshape([4, 3])
        .to_device(latents.device());
    Tensor::einsum(
        "nlhw,lr->nrhw",
        &[latents.to_kind(Kind::Float), coefficients],
        None::<i64>,
    )
}

/// "Approx cheap" previews of every latent of the batch (no model needed): latent resolution,
/// 8-bit RGB as A1111's `single_sample_to_image` makes them.
pub fn cheap_images(latents: &Tensor) -> Result<Vec<RgbImage>, PreviewError> {
    check_shape(latents, 0)?;
    guarded(|| {
        let _guard = tch::no_grad_guard();
        cheap_to_images(latents, &CHEAP_COEFFICIENTS)
    })
}

/// Previews of every latent of the batch (`latents`: scaled, [n, 4, h, w], any device and
/// dtype). Full decodes with `vae` in `vae_kind` (and the job's `tiling`), exactly as the
/// job's final images are.
pub fn preview_images(
    method: PreviewMethod,
    latents: &Tensor,
    vae: &AutoencoderKl,
    vae_kind: Kind,
    tiling: Option<VaeTiling>,
) -> Result<Vec<RgbImage>, PreviewError> {
    check_shape(latents, 0)?;
    guarded(|| render(method, latents, vae, vae_kind, tiling))
}

/// The preview of image `index` of the batch (only that one is decoded or mixed).
pub fn preview_image(
    method: PreviewMethod,
    latents: &Tensor,
    index: i64,
    vae: &AutoencoderKl,
    vae_kind: Kind,
    tiling: Option<VaeTiling>,
) -> Result<RgbImage, PreviewError> {
    check_shape(latents, index)?;
    guarded(|| {
        render(method, &latents.narrow(0, index, 1), vae, vae_kind, tiling)
            .pop()
            .expect("one latent gives one image")
    })
}

fn render(
    method: PreviewMethod,
    latents: &Tensor,
    vae: &AutoencoderKl,
    vae_kind: Kind,
    tiling: Option<VaeTiling>,
) -> Vec<RgbImage> {
    // Callers outside a job (tests, tools) must not build autograd graphs either.
    let _guard = tch::no_grad_guard();
    // A1111 `single_sample_to_image` for both: x·0.5 + 0.5 (Full: (x + 1)/2), clamp, ×255,
    // truncate. The shared conversion computes (x + 1)/2, the same float: halving is exact.
    match method {
        PreviewMethod::ApproxCheap => cheap_to_images(latents, cheap_coefficients(vae)),
        PreviewMethod::Full => decode_latents(vae, &latents.to_kind(vae_kind), tiling),
    }
}

fn cheap_to_images(latents: &Tensor, coefficients: &[[f32; 3]; 4]) -> Vec<RgbImage> {
    let rgb = cheap_approximation_with(latents, coefficients);
    (0..rgb.size()[0])
        .map(|i| tensor_to_image(&rgb.get(i)))
        .collect()
}

fn check_shape(latents: &Tensor, index: i64) -> Result<(), PreviewError> {
    let shape = latents.size();
    let fits = shape.len() == 4 && shape[1] == 4 && (0..shape[0]).contains(&index);
    if fits {
        Ok(())
    } else {
        Err(PreviewError::Shape { shape, index })
    }
}

/// A preview must never take a job down: libtorch panics become errors.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, PreviewError> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|payload| PreviewError::Torch(crate::error::panic_message(&*payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_from_a1111_and_short_names() {
        for (name, method) in [
            ("Approx cheap", PreviewMethod::ApproxCheap),
            ("approx-cheap", PreviewMethod::ApproxCheap),
            ("cheap", PreviewMethod::ApproxCheap),
            ("Full", PreviewMethod::Full),
            ("full", PreviewMethod::Full),
        ] {
            assert_eq!(name.parse::<PreviewMethod>(), Ok(method));
        }
        for method in PreviewMethod::ALL {
            assert_eq!(method.label().parse::<PreviewMethod>(), Ok(method));
        }
        let error = "TAESD".parse::<PreviewMethod>().unwrap_err().to_string();
        assert!(
            error.contains("TAESD") && error.contains("Approx cheap"),
            "{error}"
        );
    }

    #[test]
    fn every_n_steps_is_at_least_one() {
        assert!(PreviewSettings::new(PreviewMethod::Full, 0).is_err());
        assert!(PreviewSettings::new(PreviewMethod::Full, -3).is_err());
        let settings = PreviewSettings::new(PreviewMethod::Full, 3).unwrap();
        let due: Vec<usize> = (1..=10).filter(|&s| settings.due(s)).collect();
        assert_eq!(due, [3, 6, 9]);
    }

    #[test]
    fn cheap_approximation_is_the_coefficient_matrix_per_pixel() {
        // One pixel per latent channel set to 1: the pixel's RGB is that row of the matrix.
        let latents = Tensor::eye(4, (Kind::Float, tch::Device::Cpu)).reshape([4, 4, 1, 1]);
        let rgb = cheap_approximation(&latents).reshape([4, 3]);
        for (l, row) in CHEAP_COEFFICIENTS.iter().enumerate() {
            for (c, &expected) in row.iter().enumerate() {
                assert_eq!(rgb.double_value(&[l as i64, c as i64]) as f32, expected);
            }
        }
    }
}
