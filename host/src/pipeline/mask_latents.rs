//! The latent side of inpainting (`modules/processing.py: StableDiffusionProcessingImg2Img.init`,
//! `StableDiffusionProcessing.inpainting_image_conditioning`): the mask at latent resolution that
//! the sampler blends with, and the extra input channels of inpainting models (mask +
//! masked-image latent).

use image::{DynamicImage, GrayImage, RgbImage};
use tch::{Device, Kind, Tensor};

use super::encode::{image_to_tensor, resize_latent, InitEncoding, InitLatent};
use crate::models::vae::{AutoencoderKl, VaeTiling};
use crate::prepare::resample::{resize, Filter};
use crate::rng::RngError;

/// 8-bit mask values as 0–1 floats, rounded half to even when `round` (numpy's `around`,
/// torch's `round`).
fn mask_values(values: impl Iterator<Item = u8>, round: bool) -> Vec<f32> {
    values
        .map(|v| {
            let v = f32::from(v) / 255.0;
            if round {
                v.round_ties_even()
            } else {
                v
            }
        })
        .collect()
}

/// The latent mask as (keep, regenerate) [1, 4, h, w]: the processed mask resized to the latent
/// size with Pillow's default (bicubic) filter, channel 0 over 255, rounded when `round`
/// (A1111 `init`: `latmask`, `mask`, `nmask`).
pub fn latent_mask(
    mask: &GrayImage,
    height: i64,
    width: i64,
    round: bool,
    device: Device,
) -> (Tensor, Tensor) {
    let rgb = DynamicImage::ImageLuma8(mask.clone()).to_rgb8();
    let small = resize(&rgb, width as u32, height as u32, Filter::Bicubic, None);
    let values = mask_values(small.pixels().map(|p| p[0]), round);
    let regenerate = Tensor::from_slice(&values)
        .reshape([1, 1, height, width])
        .repeat([1, 4, 1, 1])
        .to_device(device);
    let keep = 1.0 - &regenerate;
    (keep, regenerate)
}

/// The pixel-resolution mask of the inpainting-model conditioning [1, 1, H, W] (1 = hole):
/// the processed mask over 255, rounded when `round`; all ones without a mask (plain img2img
/// on an inpainting model, as A1111 does it).
pub fn conditioning_mask(
    mask: Option<&GrayImage>,
    height: i64,
    width: i64,
    round: bool,
    device: Device,
) -> Tensor {
    match mask {
        None => Tensor::ones([1, 1, height, width], (Kind::Float, device)),
        Some(mask) => {
            let values = mask_values(mask.pixels().map(|p| p[0]), round);
            Tensor::from_slice(&values)
                .reshape([1, 1, height, width])
                .to_device(device)
        }
    }
}

/// An inpainting model's image conditioning (A1111 `inpainting_image_conditioning`): the mask
/// at latent size (nearest) and the latent of the image with its hole blanked by `weight`
/// (`lerp(src, src·(1−mask), weight)`). The masked image is encoded once per job; each image
/// takes its own posterior sample of it.
pub struct InpaintingConditioning {
    encoding: InitEncoding,
    small_mask: Tensor,
    latent_size: (i64, i64),
}

impl InpaintingConditioning {
    /// Encodes `image` with its `mask` [1, 1, H, W] blanked by `weight`, in the VAE's `kind`.
    pub fn new(
        vae: &AutoencoderKl,
        image: &RgbImage,
        mask: &Tensor,
        weight: f64,
        latent_size: (i64, i64),
        kind: Kind,
        tiling: Option<VaeTiling>,
    ) -> Self {
        let source = image_to_tensor(image, mask.device(), Kind::Float);
        let hidden = &source * (1.0 - mask);
        let masked = source.lerp(&hidden, weight);
        InpaintingConditioning {
            encoding: InitEncoding::from_pixels(vae, &masked.to_kind(kind), tiling),
            small_mask: mask.upsample_nearest2d([latent_size.0, latent_size.1], None, None),
            latent_size,
        }
    }

    /// One image's conditioning [1, 5, h, w], its latent taken as `init` says.
    pub fn for_image(&self, init: InitLatent<'_>) -> Result<Tensor, RngError> {
        let (h, w) = self.latent_size;
        let mut latent = self.encoding.latent(init)?.to_kind(Kind::Float);
        if latent.size()[2..] != [h, w] {
            // Latent upscale: the image was encoded at its own size, like the init latent.
            latent = resize_latent(&latent, h, w).map_err(RngError::from)?;
        }
        Ok(Tensor::cat(&[&self.small_mask, &latent], 1))
    }
}
