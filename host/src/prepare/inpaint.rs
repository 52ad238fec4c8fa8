//! The image side of inpainting (A1111 `modules/processing.py:
//! StableDiffusionProcessingImg2Img.init` with a mask, `apply_overlay` and `uncrop`): the
//! processed mask, the original kept for the final composite, the region generated, the filled
//! init image, and the composite itself.

use image::{GrayImage, RgbImage, RgbaImage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::crop::{expand_to_aspect, grow_to_at_least, mask_region, CropRegion};
use super::fill::fill;
use super::mask::{blur_mask, invert};
use super::pillow::{alpha_composite, paste_with_mask, unpremultiply};
use super::resize::{resize_image, ResizeMode};

/// What fills the masked area before sampling (A1111 "Masked content").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskedContent {
    /// Blurred surrounding colours.
    Fill,
    /// The original pixels.
    Original,
    /// The latent replaced by noise.
    LatentNoise,
    /// The latent zeroed.
    LatentNothing,
}

impl MaskedContent {
    /// A1111's index (`inpainting_fill`, 0-3).
    pub fn index(self) -> u8 {
        match self {
            MaskedContent::Fill => 0,
            MaskedContent::Original => 1,
            MaskedContent::LatentNoise => 2,
            MaskedContent::LatentNothing => 3,
        }
    }

    /// A1111's label (infotext value; "original" is its default and not written).
    pub fn label(self) -> &'static str {
        match self {
            MaskedContent::Fill => "fill",
            MaskedContent::Original => "original",
            MaskedContent::LatentNoise => "latent noise",
            MaskedContent::LatentNothing => "latent nothing",
        }
    }

    /// The mode for an A1111 label or index (0–3).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase().replace(['_', '-'], " ");
        [
            MaskedContent::Fill,
            MaskedContent::Original,
            MaskedContent::LatentNoise,
            MaskedContent::LatentNothing,
        ]
        .into_iter()
        .enumerate()
        .find(|(i, mode)| text == mode.label() || text == i.to_string())
        .map(|(_, mode)| mode)
    }
}

/// A1111's inpainting parameters (img2img tab, Inpaint section) plus sdhost's context growth;
/// serde names are A1111's API fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, SmartDefault)]
#[serde(default)]
pub struct InpaintSettings {
    /// Mask blur σ along x, in pixels (`mask_blur` sets both).
    #[default(4)]
    pub mask_blur_x: u32,
    /// Mask blur σ along y, in pixels.
    #[default(4)]
    pub mask_blur_y: u32,
    /// Mask mode "Inpaint not masked": regenerate what the mask leaves out (A1111 sends 0/1).
    #[serde(
        rename = "inpainting_mask_invert",
        deserialize_with = "crate::request::flag"
    )]
    pub invert: bool,
    /// Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing (names work too).
    #[serde(rename = "inpainting_fill")]
    #[schemars(with = "crate::request::IndexOrName")]
    #[default(MaskedContent::Original)]
    pub masked_content: MaskedContent,
    /// Inpaint area "Only masked": generate the masked region at the full width x height.
    #[serde(rename = "inpaint_full_res")]
    pub only_masked: bool,
    /// Only masked padding, pixels.
    #[serde(rename = "inpaint_full_res_padding")]
    #[default(32)]
    pub only_masked_padding: u32,
    /// Only masked: grow the region to at least [width, height] first, so a small selection
    /// keeps its surroundings (sdhost's, for editors; null: A1111's behaviour).
    #[serde(rename = "inpaint_min_context", with = "crate::request::size_pair")]
    #[schemars(with = "Option<[u32; 2]>")]
    pub min_context: Option<(u32, u32)>,
    /// Inpainting models: conditioning mask strength, 0-1.
    #[serde(rename = "inpainting_mask_weight")]
    #[default(1.0)]
    pub mask_weight: f64,
    /// Round the latent mask and the inpainting model's mask to 0/1.
    #[default(true)]
    pub mask_round: bool,
}

/// Why a mask cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MaskError {
    /// The mask selects nothing.
    #[error("the mask is empty: nothing to inpaint (mark the area to regenerate, or run img2img without a mask)")]
    Empty,
    /// Mask and image differ in size.
    #[error("the mask is {mask_w}x{mask_h} but the image is {image_w}x{image_h}; give a mask of the image's size")]
    SizeMismatch {
        mask_w: u32,
        mask_h: u32,
        image_w: u32,
        image_h: u32,
    },
    /// A1111's latent-upscale mode cannot composite a mask at another size.
    #[error("resize mode \"latent upscale\" cannot be used with a mask when the image ({image_w}x{image_h}) is not already the job's size ({width}x{height})")]
    LatentUpscaleWithMask {
        image_w: u32,
        image_h: u32,
        width: u32,
        height: u32,
    },
}

/// An inpainting job's masks and original after A1111's `init` (the image to encode is
/// returned beside it by [`prepare_inpaint`]).
pub struct InpaintInit {
    /// The processed mask at the job's size (255 = regenerate): source of the latent mask.
    pub mask: GrayImage,
    /// The blend mask of the final composite, at the composite's size.
    pub overlay_mask: GrayImage,
    /// The original with alpha = 255 − overlay mask, composited over each result.
    pub overlay: RgbaImage,
    /// Only masked: the region generated, in the original image.
    pub region: Option<CropRegion>,
}

/// A grey mask through an RGB-only resize (A1111 resizes masks as images; bands agree).
fn resize_mask(mode: ResizeMode, mask: &GrayImage, width: u32, height: u32) -> GrayImage {
    let rgb = image::DynamicImage::ImageLuma8(mask.clone()).to_rgb8();
    let resized = resize_image(mode, &rgb, width, height);
    GrayImage::from_fn(width, height, |x, y| {
        image::Luma([resized.get_pixel(x, y)[0]])
    })
}

/// The original `image` with alpha = 255 − `mask` (A1111 pastes it premultiplied with that
/// mask onto a transparent canvas and converts back to straight alpha).
fn overlay_of(image: &RgbImage, mask: &GrayImage) -> RgbaImage {
    let (w, h) = image.dimensions();
    let opaque = RgbaImage::from_fn(w, h, |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        image::Rgba([r, g, b, 255])
    });
    let mut premultiplied = RgbaImage::new(w, h);
    paste_with_mask(&mut premultiplied, &opaque, &invert(mask));
    unpremultiply(&premultiplied)
}

/// Prepares init image and mask (`mask`: 255 = regenerate, same size as `init`) for a job of
/// `width`×`height`, in A1111's order: invert, blur, region or resize, overlay, fill. Returns
/// the image to encode (job size: cropped, resized, filled) and the masks and original.
pub fn prepare_inpaint(
    init: &RgbImage,
    mask: &GrayImage,
    settings: &InpaintSettings,
    resize_mode: ResizeMode,
    width: u32,
    height: u32,
) -> Result<(RgbImage, InpaintInit), MaskError> {
    let (image_w, image_h) = init.dimensions();
    if mask.dimensions() != init.dimensions() {
        return Err(MaskError::SizeMismatch {
            mask_w: mask.width(),
            mask_h: mask.height(),
            image_w,
            image_h,
        });
    }
    let mut m = if settings.invert {
        invert(mask)
    } else {
        mask.clone()
    };
    m = blur_mask(&m, settings.mask_blur_x, settings.mask_blur_y);
    if m.pixels().all(|p| p[0] == 0) {
        return Err(MaskError::Empty);
    }

    let (mut image, prepared) = if settings.only_masked {
        let mut region = mask_region(&m, settings.only_masked_padding).ok_or(MaskError::Empty)?;
        if let Some((min_w, min_h)) = settings.min_context {
            region = grow_to_at_least(region, min_w, min_h, image_w, image_h);
        }
        let region = expand_to_aspect(region, width, height, image_w, image_h);
        let crop = |img: &RgbImage| {
            image::imageops::crop_imm(
                img,
                region.x1 as u32,
                region.y1 as u32,
                region.width() as u32,
                region.height() as u32,
            )
            .to_image()
        };
        let cropped_mask = image::imageops::crop_imm(
            &m,
            region.x1 as u32,
            region.y1 as u32,
            region.width() as u32,
            region.height() as u32,
        )
        .to_image();
        let image = resize_image(ResizeMode::ResizeAndFill, &crop(init), width, height);
        let prepared = InpaintInit {
            mask: resize_mask(ResizeMode::ResizeAndFill, &cropped_mask, width, height),
            overlay: overlay_of(init, &m),
            overlay_mask: m,
            region: Some(region),
        };
        (image, prepared)
    } else {
        if resize_mode == ResizeMode::LatentUpscale && (image_w, image_h) != (width, height) {
            return Err(MaskError::LatentUpscaleWithMask {
                image_w,
                image_h,
                width,
                height,
            });
        }
        let processed = resize_mask(resize_mode, &m, width, height);
        // [quirk] the whole-picture overlay mask is the blurred mask doubled.
        let mut doubled = processed.clone();
        doubled
            .pixels_mut()
            .for_each(|p| p[0] = p[0].saturating_mul(2));
        let image = resize_image(resize_mode, init, width, height);
        let prepared = InpaintInit {
            overlay: overlay_of(&image, &doubled),
            overlay_mask: doubled,
            mask: processed,
            region: None,
        };
        (image, prepared)
    };
    if settings.masked_content != MaskedContent::Original {
        image = fill(&image, &prepared.mask);
    }
    Ok((image, prepared))
}

impl InpaintInit {
    /// The generated image placed in the original's frame (only masked: scaled back into its
    /// region), before the overlay: what an editor layers under the original.
    pub fn uncrop(&self, generated: &RgbImage) -> RgbaImage {
        let opaque = |img: &RgbImage| {
            RgbaImage::from_fn(img.width(), img.height(), |x, y| {
                let [r, g, b] = img.get_pixel(x, y).0;
                image::Rgba([r, g, b, 255])
            })
        };
        match self.region {
            None => opaque(generated),
            Some(region) => {
                let mut canvas = RgbaImage::new(self.overlay.width(), self.overlay.height());
                let scaled = resize_image(
                    ResizeMode::CropAndResize,
                    generated,
                    region.width() as u32,
                    region.height() as u32,
                );
                image::imageops::replace(&mut canvas, &opaque(&scaled), region.x1, region.y1);
                canvas
            }
        }
    }

    /// The final image: the generated pixels with the original composited over them, so that
    /// everything outside the blend mask is exactly the original (A1111 `apply_overlay`).
    pub fn composite(&self, generated: &RgbImage) -> RgbImage {
        let mut base = self.uncrop(generated);
        alpha_composite(&mut base, &self.overlay);
        image::DynamicImage::ImageRgba8(base).to_rgb8()
    }

    /// The result as an editor layer: the generated pixels inside the region that changed,
    /// alpha = the blend mask, with the layer's offset in the composite's frame.
    pub fn patch(&self, generated: &RgbImage) -> Patch {
        let (region, scaled) = match self.region {
            // Only masked: the generated image scaled into its region, as `uncrop` places it.
            Some(region) => (
                region,
                resize_image(
                    ResizeMode::CropAndResize,
                    generated,
                    region.width() as u32,
                    region.height() as u32,
                ),
            ),
            None => {
                let region =
                    mask_region(&self.overlay_mask, 0).expect("a prepared mask is not empty");
                let cropped = image::imageops::crop_imm(
                    generated,
                    region.x1 as u32,
                    region.y1 as u32,
                    region.width() as u32,
                    region.height() as u32,
                )
                .to_image();
                (region, cropped)
            }
        };
        let image = RgbaImage::from_fn(scaled.width(), scaled.height(), |x, y| {
            let [r, g, b] = scaled.get_pixel(x, y).0;
            let alpha = self
                .overlay_mask
                .get_pixel(x + region.x1 as u32, y + region.y1 as u32)[0];
            image::Rgba([r, g, b, alpha])
        });
        Patch {
            image,
            x: region.x1 as u32,
            y: region.y1 as u32,
        }
    }
}

/// An RGBA layer and where it goes.
#[derive(Debug, Clone)]
pub struct Patch {
    /// Pixels; alpha is the blend mask.
    pub image: RgbaImage,
    /// Left edge in the full image.
    pub x: u32,
    /// Top edge in the full image.
    pub y: u32,
}
