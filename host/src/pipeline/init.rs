//! What a job computes once from its init image and mask (A1111
//! `StableDiffusionProcessingImg2Img.init`): the prepared image and its encoding, the
//! inpainting masks, and per image its init latent and inpainting-model conditioning.

use image::{GrayImage, RgbImage};
use tch::{Device, Kind, Tensor};

use super::encode::{resize_latent, InitEncoding, InitLatent};
use super::error::{guarded, JobError};
use super::mask_latents::{conditioning_mask, latent_mask, InpaintingConditioning};
use super::model::GenerationModel;
use crate::prepare::color_correction::ColorCorrection;
use crate::prepare::inpaint::{prepare_inpaint, InpaintInit};
use crate::prepare::resize::{resize_image, ResizeMode};
use crate::request::{GenerationRequest, InitLatentMode};
use crate::rng::Generator;

/// A job's init, shared by all its batches.
pub struct JobInit {
    /// The image that was encoded (job size; cropped and filled when inpainting).
    pub image: RgbImage,
    /// Inpainting's images (mask, overlay, region), when a mask was given.
    pub inpaint: Option<InpaintInit>,
    encoding: InitEncoding,
    /// The colour target when colour correction is on.
    pub color_correction: Option<ColorCorrection>,
    /// (keep, regenerate) latent masks when inpainting.
    pub latent_mask: Option<(Tensor, Tensor)>,
    /// An inpainting model's conditioning source (None for other models).
    conditioning: Option<InpaintingConditioning>,
    latent_size: (i64, i64),
    init_latent: InitLatentMode,
    resize_mode: ResizeMode,
}

/// How the next VAE encoding is taken: a sample with the image's generator, or the mean.
fn take(generator: &mut Option<Generator>) -> InitLatent<'_> {
    match generator {
        Some(g) => InitLatent::Sample(g),
        None => InitLatent::Mean,
    }
}

/// One image's latents from the init.
pub struct ImageLatents {
    /// The init latent [1, 4, h, w], float32.
    pub init: Tensor,
    /// An inpainting model's extra channels [1, 5, h, w].
    pub conditioning: Option<Tensor>,
}

impl JobInit {
    /// Prepares and encodes `init_image` (and `mask`, 255 = regenerate) for `params`.
    pub fn new(
        model: &GenerationModel,
        params: &GenerationRequest,
        init_image: &RgbImage,
        mask: Option<&GrayImage>,
    ) -> Result<Self, JobError> {
        let downscale = model.downscale();
        let latent_size = (
            i64::from(params.height / downscale),
            i64::from(params.width / downscale),
        );
        let (image, inpaint) = match mask {
            Some(mask) => {
                let (image, prepared) = prepare_inpaint(
                    init_image,
                    mask,
                    &params.inpaint,
                    params.resize_mode,
                    params.width,
                    params.height,
                )?;
                (image, Some(prepared))
            }
            None => (
                resize_image(params.resize_mode, init_image, params.width, params.height),
                None,
            ),
        };
        let encoding = guarded("VAE encode", || {
            InitEncoding::new(
                &model.sd.vae,
                &image,
                model.device,
                model.kind,
                params.vae_tiling(),
            )
        })?;
        let round = params.inpaint.mask_round;
        let latent_mask = inpaint.as_ref().map(|prepared| {
            latent_mask(
                &prepared.mask,
                latent_size.0,
                latent_size.1,
                round,
                model.device,
            )
        });
        let conditioning = if model.sd.architecture.unet.in_channels == 9 {
            let mask = conditioning_mask(
                inpaint.as_ref().map(|prepared| &prepared.mask),
                i64::from(image.height()),
                i64::from(image.width()),
                // SDXL's branch of A1111's `img2img_image_conditioning` does not pass
                // `round_image_mask`: its conditioning mask is always rounded.
                round || model.sd.architecture.family().is_sdxl(),
                model.device,
            );
            Some(guarded("inpainting conditioning", || {
                InpaintingConditioning::new(
                    &model.sd.vae,
                    &image,
                    &mask,
                    params.inpaint.mask_weight,
                    latent_size,
                    model.kind,
                    params.vae_tiling(),
                )
            })?)
        } else {
            None
        };
        // A1111 takes the target after crop, resize and fill.
        let color_correction = params
            .img2img_color_correction
            .then(|| ColorCorrection::new(&image));
        Ok(JobInit {
            color_correction,
            image,
            inpaint,
            encoding,
            latent_mask,
            conditioning,
            latent_size,
            init_latent: params.init_latent,
            resize_mode: params.resize_mode,
        })
    }

    /// What a script sets besides the image and mask (A1111's `p.latent_mask`, read in `init`
    /// in place of the processed mask for the latent blend; `p.color_corrections`, a target
    /// `init` then does not replace). The latent mask applies only with a mask, the colour
    /// target only with colour correction on.
    pub fn set_script_inputs(
        &mut self,
        params: &GenerationRequest,
        device: Device,
        latent: Option<&GrayImage>,
        color_target: Option<&RgbImage>,
    ) {
        if let (Some(mask), Some(_)) = (latent, &self.inpaint) {
            self.latent_mask = Some(latent_mask(
                mask,
                self.latent_size.0,
                self.latent_size.1,
                params.inpaint.mask_round,
                device,
            ));
        }
        if let (Some(target), true) = (color_target, params.img2img_color_correction) {
            self.color_correction = Some(ColorCorrection::new(target));
        }
    }

    /// Whether the model gets inpainting conditioning (infotext `Conditional mask weight`).
    pub fn uses_inpainting_conditioning(&self) -> bool {
        self.conditioning.is_some()
    }

    /// The latents of the image with `seed`: the VAE posterior sampled with the first draws
    /// of a CPU generator seeded with it (the init latent first, then the conditioning's), or
    /// the posterior means.
    pub fn image_latents(&self, seed: u64) -> Result<ImageLatents, JobError> {
        let mut generator = match self.init_latent {
            InitLatentMode::Sample => Some(Generator::new(seed, Device::Cpu)?),
            InitLatentMode::Mean => None,
        };
        let mut init = self
            .encoding
            .latent(take(&mut generator))?
            .to_kind(Kind::Float);
        if self.resize_mode == ResizeMode::LatentUpscale {
            init = resize_latent(&init, self.latent_size.0, self.latent_size.1)
                .map_err(|e| JobError::torch("latent upscale", e.to_string()))?;
        }
        let conditioning = match &self.conditioning {
            None => None,
            Some(source) => Some(source.for_image(take(&mut generator))?),
        };
        Ok(ImageLatents { init, conditioning })
    }
}
