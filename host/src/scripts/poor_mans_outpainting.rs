//! A1111's "Poor man's outpainting" script (`scripts/poor_mans_outpainting.py`): the picture is
//! put on a black canvas grown by "Pixels to expand" (sides rounded up to 64), and the canvas is
//! cut into overlapping tiles of the job's size; every tile that reaches into the new border is
//! inpainted with the chosen masked content, seeds counting up from tile to tile, and the tiles
//! are joined again.
//!
//! This file is the canvas, its two masks and which tiles are worked on; the tiling itself is
//! A1111's `split_grid`/`combine_grid` (the grid module) and the jobs are the script runner's.

use image::{imageops, GrayImage, Luma, RgbImage};

use super::outpainting::{pillow_rectangle, Directions, Expansion, OutpaintError};
use crate::prepare::inpaint::MaskedContent;
use crate::request::GenerationRequest;

/// The script's arguments in A1111's order: pixels, mask blur, masked content, direction.
#[derive(Debug, Clone, PartialEq)]
pub struct PoorMansArgs {
    /// "Pixels to expand" (A1111: 8–256, default 128); also the tiles' overlap.
    pub pixels: u32,
    /// "Mask blur" (0–64, default 4); the job's blur is twice this.
    pub mask_blur: u32,
    /// "Masked content" (A1111's default "fill").
    pub masked_content: MaskedContent,
    /// "Outpainting direction".
    pub directions: Directions,
}

impl Default for PoorMansArgs {
    fn default() -> Self {
        PoorMansArgs {
            pixels: 128,
            mask_blur: 4,
            masked_content: MaskedContent::Fill,
            directions: Directions::ALL,
        }
    }
}

/// The grown canvas and its masks (255 = regenerate).
#[derive(Debug, Clone)]
pub struct Canvas {
    /// The picture on black, at (left, up) of the grown size.
    pub image: RgbImage,
    /// The inpainting mask: the border plus `2·blur` into the picture on each growing side.
    pub mask: GrayImage,
    /// The latent mask: the border plus `blur / 2` into the picture.
    pub latent_mask: GrayImage,
    /// How far each side grew.
    pub expansion: Expansion,
}

impl PoorMansArgs {
    /// The canvas and masks for `init` (A1111's `run` up to `split_grid`).
    pub fn canvas(&self, init: &RgbImage) -> Result<Canvas, OutpaintError> {
        if self.pixels == 0 || self.directions.names().is_empty() {
            return Err(OutpaintError::Nothing);
        }
        let e = Expansion::new(init.width(), init.height(), self.pixels, self.directions);
        let mut image = RgbImage::new(e.width, e.height);
        imageops::replace(&mut image, init, i64::from(e.left), i64::from(e.up));
        let band = |inset: u32| {
            let inset = i64::from(inset);
            let grown = |p: u32| if p > 0 { inset } else { 0 };
            (
                i64::from(e.left) + grown(e.left),
                i64::from(e.up) + grown(e.up),
                i64::from(e.width) - i64::from(e.right) - grown(e.right),
                i64::from(e.height) - i64::from(e.down) - grown(e.down),
            )
        };
        let inverted = |what| OutpaintError::RectangleInverted {
            what,
            blur: self.mask_blur,
            width: init.width(),
            height: init.height(),
        };
        let mut mask = GrayImage::from_pixel(e.width, e.height, Luma([255]));
        pillow_rectangle(&mut mask, band(self.mask_blur * 2), 0)
            .ok_or_else(|| inverted("image"))?;
        let mut latent_mask = GrayImage::from_pixel(e.width, e.height, Luma([255]));
        pillow_rectangle(&mut latent_mask, band(self.mask_blur / 2), 0)
            .ok_or_else(|| inverted("latent"))?;
        Ok(Canvas {
            image,
            mask,
            latent_mask,
            expansion: e,
        })
    }

    /// The request of every tile's job: blur twice the script's, whole-picture inpainting, the
    /// chosen masked content, one image.
    pub fn tile_request(&self, base: &GenerationRequest) -> GenerationRequest {
        let mut request = base.clone();
        request.inpaint.mask_blur_x = self.mask_blur * 2;
        request.inpaint.mask_blur_y = self.mask_blur * 2;
        request.inpaint.only_masked = false;
        request.inpaint.masked_content = self.masked_content;
        request.n_iter = 1;
        request.batch_size = 1;
        request
    }
}

impl Canvas {
    /// Whether the tile at (x, y) of size w×h needs work: A1111 skips the tiles that lie
    /// wholly inside the old picture.
    pub fn tile_needs_work(&self, x: u32, y: u32, w: u32, h: u32) -> bool {
        let e = &self.expansion;
        let inside =
            x >= e.left && x + w <= e.width - e.right && y >= e.up && y + h <= e.height - e.down;
        !inside
    }
}
