//! A1111's "Poor man's outpainting" script (`scripts/poor_mans_outpainting.py`): the picture is
//! put on a black canvas grown by "Pixels to expand" (sides rounded up to 64), and the canvas is
//! cut into overlapping tiles of the job's size; every tile that reaches into the new border is
//! inpainted with the chosen masked content, seeds counting up from tile to tile, and the tiles
//! are joined again.
//!
//! This file is the canvas, its two masks and which tiles are worked on; the tiling itself is
//! A1111's `split_grid`/`combine_grid` (the grid module) and the jobs are the script runner's.

use image::{imageops, DynamicImage, GrayImage, Luma, RgbImage};

use super::{
    picture_error, plan_jobs, ScriptError, ScriptHost, ScriptImage, ScriptInit, ScriptJob,
    ScriptOutcome,
};
use crate::prepare::tiles::{combine_grid, split_grid, Grid};

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
    pub fn tile_needs_work(&self, x: i64, y: i64, w: u32, h: u32) -> bool {
        let e = &self.expansion;
        let (w, h) = (i64::from(w), i64::from(h));
        let inside = x >= i64::from(e.left)
            && x + w <= i64::from(e.width - e.right)
            && y >= i64::from(e.up)
            && y + h <= i64::from(e.height - e.down);
        !inside
    }
}

/// A1111's title.
pub const TITLE: &str = "Poor man's outpainting";

fn invalid(e: impl std::fmt::Display) -> ScriptError {
    picture_error(TITLE, e)
}

/// The tiles of `grid` in A1111's order (row by row) with their places.
fn tiles(grid: &Grid) -> Vec<(i64, i64, &RgbImage)> {
    grid.rows
        .iter()
        .flat_map(|row| row.tiles.iter().map(move |t| (t.x, row.y, &t.image)))
        .collect()
}

/// Runs the script: the canvas's border tiles inpainted one by one (seed + 1 each, as A1111
/// sets `p.seed = processed.seed + 1`), joined again into the one returned picture.
pub fn run(
    args: &PoorMansArgs,
    host: &mut dyn ScriptHost,
    base: &ScriptJob,
) -> Result<ScriptOutcome, ScriptError> {
    let init = base
        .init
        .as_ref()
        .ok_or_else(|| invalid("needs an init image"))?;
    let canvas = args.canvas(&init.image).map_err(invalid)?;
    let params = base.params.clone();
    let (tw, th) = (params.width, params.height);
    let split = |image: &RgbImage| split_grid(image, tw, th, args.pixels).map_err(invalid);
    let as_rgb = |mask: &GrayImage| DynamicImage::ImageLuma8(mask.clone()).to_rgb8();
    let as_gray = |tile: &RgbImage| DynamicImage::ImageRgb8(tile.clone()).to_luma8();
    let mut grid = split(&canvas.image)?;
    let mask_grid = split(&as_rgb(&canvas.mask))?;
    let latent_grid = split(&as_rgb(&canvas.latent_mask))?;
    let seed = crate::rng::fixed_seed(params.seed, crate::rng::random_seed) as i64;
    let request = args.tile_request(&params);
    let mut jobs = Vec::new();
    let places = tiles(&grid);
    for (((x, y, image), (_, _, mask)), (_, _, latent)) in places
        .iter()
        .zip(tiles(&mask_grid))
        .zip(tiles(&latent_grid))
    {
        if !canvas.tile_needs_work(*x, *y, tw, th) {
            continue;
        }
        let mut p = request.clone();
        p.seed = seed + jobs.len() as i64;
        jobs.push(ScriptJob {
            params: p,
            init: Some(ScriptInit {
                image: (*image).clone(),
                mask: Some(as_gray(mask)),
                latent_mask: Some(as_gray(latent)),
                color_target: None,
                deliver: false,
            }),
            checkpoint: base.checkpoint.clone(),
            cell: Vec::new(),
        });
    }
    plan_jobs(host, &jobs);
    let mut outcome = ScriptOutcome::default();
    let mut results = Vec::with_capacity(jobs.len());
    let mut first = None;
    for job in &jobs {
        if host.stopped() {
            outcome.stopped = true;
            break;
        }
        let done = host.run(job)?;
        let Some(image) = done.images.first() else {
            outcome.stopped = true;
            break;
        };
        first.get_or_insert_with(|| ScriptImage::of(image));
        results.push(image.image.clone());
        if done.cancelled || done.interrupted {
            outcome.stopped = true;
            break;
        }
    }
    // Tiles without a result (stopped early) are black, as A1111 puts `Image.new` there.
    let mut results = results.into_iter();
    let needs: Vec<bool> = places
        .iter()
        .map(|(x, y, _)| canvas.tile_needs_work(*x, *y, tw, th))
        .collect();
    let mut at = 0;
    for row in &mut grid.rows {
        for tile in &mut row.tiles {
            if needs[at] {
                tile.image = results.next().unwrap_or_else(|| RgbImage::new(tw, th));
            }
            at += 1;
        }
    }
    if let Some(first) = first {
        outcome.made.push(ScriptImage {
            image: combine_grid(&grid),
            ..first
        });
    }
    Ok(outcome)
}
