//! A1111's "Outpainting mk2" script (`scripts/outpainting_mk_2.py`): the picture grows one side
//! at a time (left, right, up, down); for each side the new strip is filled with matched noise
//! ([`super::matched_noise`]) and inpainted with masked content "original" at the size of the
//! strip's working window, and the result is pasted back.
//!
//! This file is the image side of one such step ([`ExpandStep`]) and the order of the steps
//! ([`Mk2Args::steps`]); running the inpainting jobs is the script runner's.

use image::{imageops, GrayImage, Luma, RgbImage};

use super::grid::{image_grid, GRID_BACKGROUND};
use super::matched_noise::matched_noise;
use super::outpainting::{ceil64, pillow_rectangle, Directions, Expansion, OutpaintError};
use super::xyz::draw::batch_rows;
use super::{
    picture_error, plan_jobs, ScriptError, ScriptHost, ScriptImage, ScriptInit, ScriptJob,
    ScriptOutcome,
};
use crate::prepare::inpaint::MaskedContent;
use crate::request::GenerationRequest;

/// The script's arguments, A1111's UI order after its info box: pixels, mask blur, direction,
/// fall-off exponent, colour variation.
#[derive(Debug, Clone, PartialEq)]
pub struct Mk2Args {
    /// "Pixels to expand" (A1111: 8–256, default 128).
    pub pixels: u32,
    /// "Mask blur" (0–64, default 8); the job's blur is four times this on each growing axis.
    pub mask_blur: u32,
    /// "Outpainting direction".
    pub directions: Directions,
    /// "Fall-off exponent (lower=higher detail)" (0–4, default 1).
    pub noise_q: f64,
    /// "Color variation" (0–1, default 0.05).
    pub color_variation: f64,
}

impl Default for Mk2Args {
    fn default() -> Self {
        Mk2Args {
            pixels: 128,
            mask_blur: 8,
            directions: Directions::ALL,
            noise_q: 1.0,
            color_variation: 0.05,
        }
    }
}

/// A side the picture grows on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Towards x < 0.
    Left,
    /// Towards x > width.
    Right,
    /// Towards y < 0.
    Up,
    /// Towards y > height.
    Down,
}

impl Side {
    fn horizontal(self) -> bool {
        matches!(self, Side::Left | Side::Right)
    }
}

impl Mk2Args {
    /// The blur σ along x and y the script uses in its masks: `mask_blur` on an axis that
    /// grows, else 0 (the inpainting job's blur is four times these).
    pub fn blurs(&self) -> (u32, u32) {
        let d = self.directions;
        let on = |grows: bool| if grows { self.mask_blur } else { 0 };
        (on(d.left || d.right), on(d.up || d.down))
    }

    /// The sides in A1111's order with the pixels each grows by, for a picture of this size.
    pub fn steps(&self, width: u32, height: u32) -> Result<Vec<(Side, u32)>, OutpaintError> {
        if self.pixels == 0 || self.directions.names().is_empty() {
            return Err(OutpaintError::Nothing);
        }
        let e = Expansion::new(width, height, self.pixels, self.directions);
        Ok([
            (Side::Left, e.left),
            (Side::Right, e.right),
            (Side::Up, e.up),
            (Side::Down, e.down),
        ]
        .into_iter()
        .filter(|&(_, p)| p > 0)
        .collect())
    }

    /// The request of every step's job, before its size: A1111 sets the mask blur (×4 per
    /// axis), whole-picture inpainting and masked content "original".
    pub fn step_request(&self, base: &GenerationRequest) -> GenerationRequest {
        let (bx, by) = self.blurs();
        let mut request = base.clone();
        request.inpaint.mask_blur_x = bx * 4;
        request.inpaint.mask_blur_y = by * 4;
        request.inpaint.only_masked = false;
        request.inpaint.masked_content = MaskedContent::Original;
        request.n_iter = 1;
        request.batch_size = 1;
        request
    }
}

/// One side's growth (`expand` in A1111's script) for one picture.
#[derive(Debug, Clone)]
pub struct ExpandStep {
    /// The init image of the job: the working window of the noised canvas.
    pub init_image: RgbImage,
    /// The job's mask (255 = regenerate), the same window of the canvas mask.
    pub mask: GrayImage,
    /// The job's latent mask (A1111's `p.latent_mask`), a narrower band than `mask`.
    pub latent_mask: GrayImage,
    /// The job's width (`p.width`).
    pub width: u32,
    /// The job's height.
    pub height: u32,
    canvas: RgbImage,
    /// Whether the window sits at the canvas's left and top edges.
    at_start: (bool, bool),
    grown: (u32, u32),
}

impl ExpandStep {
    /// Prepares growing `init` by `pixels` on `side`; `job_size` is the request's width and
    /// height, which caps the working window along the growing axis.
    pub fn new(
        init: &RgbImage,
        pixels: u32,
        side: Side,
        args: &Mk2Args,
        job_size: (u32, u32),
    ) -> Result<Self, OutpaintError> {
        let (bx, by) = args.blurs();
        let (bx, by) = (i64::from(bx), i64::from(by));
        let horizontal = side.horizontal();
        let (is_left, is_right) = (side == Side::Left, side == Side::Right);
        let (is_top, is_bottom) = (side == Side::Up, side == Side::Down);
        let grow_x = if horizontal { pixels } else { 0 };
        let grow_y = if horizontal { 0 } else { pixels };
        let (res_w, res_h) = (init.width() + grow_x, init.height() + grow_y);
        let (canvas_w, canvas_h) = (ceil64(res_w), ceil64(res_h));

        let mut canvas = RgbImage::new(canvas_w, canvas_h);
        let at = (
            if is_left { grow_x } else { 0 },
            if is_top { grow_y } else { 0 },
        );
        imageops::replace(&mut canvas, init, i64::from(at.0), i64::from(at.1));
        let p = i64::from(pixels);
        let (cw, ch) = (i64::from(canvas_w), i64::from(canvas_h));
        let (rw, rh) = (i64::from(res_w), i64::from(res_h));
        let mut mask = GrayImage::from_pixel(canvas_w, canvas_h, Luma([255]));
        let inverted = |what| OutpaintError::RectangleInverted {
            what,
            blur: args.mask_blur,
            width: init.width(),
            height: init.height(),
        };
        pillow_rectangle(
            &mut mask,
            (
                if is_left { p + bx } else { 0 },
                if is_top { p + by } else { 0 },
                if is_right { cw - p - bx } else { rw },
                if is_bottom { ch - p - by } else { rh },
            ),
            0,
        )
        .ok_or_else(|| inverted("image"))?;
        let noised = matched_noise(&canvas, &mask, args.noise_q, args.color_variation);

        let width = if horizontal {
            job_size.0.min(res_w)
        } else {
            canvas_w
        };
        let height = if horizontal {
            canvas_h
        } else {
            job_size.1.min(res_h)
        };
        let x0 = if is_left { 0 } else { canvas_w - width };
        let y0 = if is_top { 0 } else { canvas_h - height };
        let window_mask = imageops::crop_imm(&mask, x0, y0, width, height).to_image();
        let init_image = imageops::crop_imm(&noised, x0, y0, width, height).to_image();

        let mut latent_mask = GrayImage::from_pixel(width, height, Luma([255]));
        let (mw, mh) = (i64::from(width), i64::from(height));
        pillow_rectangle(
            &mut latent_mask,
            (
                if is_left { p + 2 * bx } else { 0 },
                if is_top { p + 2 * by } else { 0 },
                if is_right { mw - p - 2 * bx } else { rw },
                if is_bottom { mh - p - 2 * by } else { rh },
            ),
            0,
        )
        .ok_or_else(|| inverted("latent"))?;
        Ok(ExpandStep {
            init_image,
            mask: window_mask,
            latent_mask,
            width,
            height,
            at_start: (is_left, is_top),
            canvas: noised,
            grown: (res_w, res_h),
        })
    }

    /// The grown picture: the job's `result` pasted into the noised canvas where its window
    /// was, cropped to the old size plus the new strip.
    pub fn finish(mut self, result: &RgbImage) -> RgbImage {
        // A1111 pastes at the canvas edge the window touches, by the result's own size.
        let (cw, ch) = (
            i64::from(self.canvas.width()),
            i64::from(self.canvas.height()),
        );
        let x = if self.at_start.0 {
            0
        } else {
            cw - i64::from(result.width())
        };
        let y = if self.at_start.1 {
            0
        } else {
            ch - i64::from(result.height())
        };
        imageops::replace(&mut self.canvas, result, x, y);
        imageops::crop_imm(&self.canvas, 0, 0, self.grown.0, self.grown.1).to_image()
    }
}

/// A1111's title.
pub const TITLE: &str = "Outpainting mk2";

/// Runs the script: for each batch, every picture of the batch grows side by side; each side's
/// job for picture k has the request's seed + k (A1111 does not advance the seed between
/// sides, and draws a new random one per side when it is -1). The grown pictures are returned
/// (after their grid when there are several) with the first job's infotext.
pub fn run(
    args: &Mk2Args,
    host: &mut dyn ScriptHost,
    base: &ScriptJob,
) -> Result<ScriptOutcome, ScriptError> {
    let invalid = |e: OutpaintError| picture_error(TITLE, e);
    let init = base.init.as_ref().ok_or_else(|| ScriptError::InvalidArgs {
        script: TITLE,
        message: "needs an init image".into(),
    })?;
    let params = &base.params;
    let steps = args
        .steps(init.image.width(), init.image.height())
        .map_err(invalid)?;
    let job_size = (params.width, params.height);
    let request = args.step_request(params);
    let batch_size = params.batch_size.max(1);
    let calls = params.n_iter * steps.len();
    let stand_in = ScriptJob {
        params: request.clone(),
        init: Some(ScriptInit::new(RgbImage::new(1, 1), None)),
        checkpoint: None,
        cell: Vec::new(),
    };
    plan_jobs(host, &vec![stand_in; calls * batch_size]);
    let mut outcome = ScriptOutcome {
        grid_basename: "grid",
        ..ScriptOutcome::default()
    };
    let mut grown = Vec::new();
    let mut first = None;
    'batches: for _ in 0..params.n_iter {
        let mut pictures = vec![init.image.clone(); batch_size];
        for &(side, pixels) in &steps {
            let seed = crate::rng::fixed_seed(params.seed, crate::rng::random_seed) as i64;
            let subseed = crate::rng::fixed_seed(params.subseed, crate::rng::random_seed) as i64;
            for (k, picture) in pictures.iter_mut().enumerate() {
                if host.stopped() {
                    outcome.stopped = true;
                    break 'batches;
                }
                let step =
                    ExpandStep::new(picture, pixels, side, args, job_size).map_err(invalid)?;
                let mut p = request.clone();
                p.width = step.width;
                p.height = step.height;
                p.seed = seed + k as i64;
                p.subseed = subseed + k as i64;
                let job = ScriptJob {
                    params: p,
                    init: Some(ScriptInit {
                        image: step.init_image.clone(),
                        mask: Some(step.mask.clone()),
                        latent_mask: Some(step.latent_mask.clone()),
                        color_target: None,
                        deliver: false,
                    }),
                    checkpoint: base.checkpoint.clone(),
                    cell: Vec::new(),
                };
                let done = host.run(&job)?;
                let Some(result) = done.images.first() else {
                    outcome.stopped = true;
                    break 'batches;
                };
                first.get_or_insert_with(|| ScriptImage::of(result));
                *picture = step.finish(&result.image);
                if done.cancelled || done.interrupted {
                    outcome.stopped = true;
                    break 'batches;
                }
            }
        }
        grown.extend(pictures);
    }
    let Some(first) = first else {
        return Ok(outcome);
    };
    if outcome.stopped {
        return Ok(outcome);
    }
    // A1111 returns and saves the grid unless there is one picture (`grid_only_if_multiple`).
    if grown.len() > 1 {
        let grid = image_grid(&grown, batch_rows(grown.len()), GRID_BACKGROUND)
            .map_err(|e| picture_error(TITLE, e))?;
        outcome.grids.push(ScriptImage {
            image: grid,
            ..first.clone()
        });
        outcome.saved_grids = 1;
    }
    outcome.made = grown
        .into_iter()
        .map(|image| ScriptImage {
            image,
            ..first.clone()
        })
        .collect();
    Ok(outcome)
}
