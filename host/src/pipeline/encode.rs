//! Init image → scaled latent (A1111 `images_tensor_to_samples` + LDM
//! `get_first_stage_encoding`).

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::models::vae::{AutoencoderKl, LatentDistribution, VaeTiling};
use crate::rng::{Generator, RngError};

/// How the init image's latent is taken from the encoder's distribution.
pub enum InitLatent<'g> {
    /// A sample, as A1111 does (its noise from this generator).
    Sample(&'g mut Generator),
    /// The distribution's mean: deterministic, independent of any seed.
    Mean,
}

/// An RGB image as a [1, 3, H, W] tensor in [−1, 1] (`x / 255 · 2 − 1`, float32 first).
pub fn image_to_tensor(image: &RgbImage, device: Device, kind: Kind) -> Tensor {
    let (w, h) = image.dimensions();
    let pixels = Tensor::from_slice(image.as_raw())
        .reshape([i64::from(h), i64::from(w), 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float);
    ((pixels / 255.0) * 2.0 - 1.0)
        .to_device(device)
        .to_kind(kind)
}

/// An init image through the VAE encoder: the latent distribution every image of a job
/// takes its init latent from (A1111 encodes each copy; the distribution is the same).
pub struct InitEncoding {
    distribution: LatentDistribution,
    /// The VAE's latent scale (SD1/SD2 0.18215, SDXL 0.13025).
    scale: f64,
}

impl InitEncoding {
    /// Encodes one image in the VAE's dtype on `device` (in tiles with `tiling`).
    pub fn new(
        vae: &AutoencoderKl,
        image: &RgbImage,
        device: Device,
        kind: Kind,
        tiling: Option<VaeTiling>,
    ) -> Self {
        Self::from_pixels(vae, &image_to_tensor(image, device, kind), tiling)
    }

    /// Encodes pixels [1, 3, H, W] in [−1, 1] already on the VAE's device and dtype.
    pub fn from_pixels(vae: &AutoencoderKl, pixels: &Tensor, tiling: Option<VaeTiling>) -> Self {
        InitEncoding {
            distribution: vae.encode_tiled(pixels, tiling),
            scale: vae.config().scaling_factor,
        }
    }

    /// The scaled latent [1, 4, H/8, W/8] (the generator draws on the CPU, as ldm's
    /// `torch.randn` does, and the noise is moved to the latent's device).
    pub fn latent(&self, init: InitLatent<'_>) -> Result<Tensor, RngError> {
        let mean = &self.distribution.mean;
        let latent = match init {
            InitLatent::Mean => mean.shallow_clone(),
            InitLatent::Sample(generator) => {
                let noise = generator.randn(&mean.size(), Kind::Float)?;
                self.distribution
                    .sample_with(&noise.to_device(mean.device()).to_kind(mean.kind()))
            }
        };
        Ok(latent * self.scale)
    }
}

/// The scaled latent [1, 4, H/8, W/8] of one image, in the VAE's dtype on its device.
pub fn encode_image(
    vae: &AutoencoderKl,
    image: &RgbImage,
    init: InitLatent<'_>,
    device: Device,
    kind: Kind,
) -> Result<Tensor, RngError> {
    InitEncoding::new(vae, image, device, kind, None).latent(init)
}

/// Resize mode "Just resize (latent upscale)": the init latent [B, 4, h, w] resized to the job's
/// latent size, bilinear without corner alignment or antialiasing (A1111's `F.interpolate`).
pub fn resize_latent(latent: &Tensor, height: i64, width: i64) -> Result<Tensor, tch::TchError> {
    latent.f_upsample_bilinear2d([height, width], false, None, None)
}
