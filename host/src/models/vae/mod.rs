//! The KL-regularised autoencoder (LDM `AutoencoderKL`) that maps images to SD latents.

mod blocks;
mod decoder;
mod encoder;
mod tiling;

pub use decoder::Decoder;
pub use encoder::Encoder;
pub use tiling::{run_tiled, TileGrid, VaeTiling};

use crate::models::layers::{Conv2d, ConvSpec};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::Tensor;

/// Factor between the autoencoder's latents and the latents the UNet sees (SD 1.x and 2.x).
pub const SD1_LATENT_SCALE: f64 = 0.18215;
/// Latent scale of every SDXL VAE (`scale_factor` in sgm's `sd_xl_*.yaml`).
pub const SDXL_LATENT_SCALE: f64 = 0.13025;

/// Shape of an autoencoder (`ddconfig` of the LDM yaml).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VaeConfig {
    /// Image channels in (3).
    pub in_channels: i64,
    /// Image channels out (3).
    pub out_channels: i64,
    /// Base width (`ch`, 128).
    pub ch: i64,
    /// Width multiplier per level (`ch_mult`, [1, 2, 4, 4]).
    pub ch_mult: Vec<i64>,
    /// ResNet blocks per encoder level (`num_res_blocks`, 2; the decoder has one more).
    pub num_res_blocks: i64,
    /// Latent channels (`z_channels` = `embed_dim` = 4).
    pub z_channels: i64,
    /// Factor applied to latents for the UNet (`scale_factor`).
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// The SD 1.x autoencoder (`kl-f8`).
    pub fn sd1() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 4,
            scaling_factor: SD1_LATENT_SCALE,
        }
    }

    /// Pixels per latent pixel along each side.
    pub fn downscale(&self) -> i64 {
        1 << (self.ch_mult.len() - 1)
    }
}

/// The latent Gaussian the encoder predicts for an image (`DiagonalGaussianDistribution`).
pub struct LatentDistribution {
    /// Mean [B, z, h, w].
    pub mean: Tensor,
    /// Log-variance, clamped to [−30, 20] as LDM does.
    pub logvar: Tensor,
}

impl LatentDistribution {
    /// Standard deviation `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor {
        (&self.logvar * 0.5).exp()
    }

    /// A sample `mean + std · noise`, with `noise` shaped like the mean.
    pub fn sample_with(&self, noise: &Tensor) -> Tensor {
        &self.mean + self.std() * noise
    }
}

/// Encoder, decoder and the 1×1 (post-)quantisation convolutions.
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    config: VaeConfig,
}

impl AutoencoderKl {
    /// Loads the autoencoder under `vb` (`first_stage_model`).
    pub fn new(vb: &VarBuilder, config: &VaeConfig) -> Result<Self> {
        let z2 = 2 * config.z_channels;
        Ok(Self {
            encoder: Encoder::new(&vb.pp("encoder"), config)?,
            decoder: Decoder::new(&vb.pp("decoder"), config)?,
            quant_conv: Conv2d::new(&vb.pp("quant_conv"), z2, z2, ConvSpec::POINTWISE)?,
            post_quant_conv: Conv2d::new(
                &vb.pp("post_quant_conv"),
                config.z_channels,
                config.z_channels,
                ConvSpec::POINTWISE,
            )?,
            config: config.clone(),
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Image in [−1, 1] (NCHW) → distribution of the unscaled latent.
    pub fn encode(&self, image: &Tensor) -> LatentDistribution {
        self.encode_tiled(image, None)
    }

    /// [`Self::encode`], in tiles when `tiling` is given and the image is larger than a tile.
    pub fn encode_tiled(&self, image: &Tensor, tiling: Option<VaeTiling>) -> LatentDistribution {
        let moments = |x: &Tensor| self.quant_conv.forward(&self.encoder.forward(x));
        let moments = match tiling {
            Some(t) => run_tiled(image, t.encode_grid(self.config.downscale()), moments),
            None => moments(image),
        };
        let parts = moments.chunk(2, 1);
        LatentDistribution {
            mean: parts[0].shallow_clone(),
            logvar: parts[1].clamp(-30.0, 20.0),
        }
    }

    /// Unscaled latent → image in about [−1, 1].
    pub fn decode(&self, latent: &Tensor) -> Tensor {
        self.decode_tiled(latent, None)
    }

    /// [`Self::decode`], in tiles when `tiling` is given and the latent is larger than a tile.
    pub fn decode_tiled(&self, latent: &Tensor, tiling: Option<VaeTiling>) -> Tensor {
        let decode = |z: &Tensor| self.decoder.forward(&self.post_quant_conv.forward(z));
        match tiling {
            Some(t) => run_tiled(latent, t.decode_grid(self.config.downscale()), decode),
            None => decode(latent),
        }
    }
}
