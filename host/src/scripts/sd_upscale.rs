//! A1111's "SD upscale" script (`scripts/sd_upscale.py`): the picture is enlarged by an
//! upscaler, cut into overlapping tiles of the job's width × height (`split_grid`), each tile
//! is run through img2img (batches of `batch_size` tiles, the seed one higher per batch, as
//! A1111 advances `p.seed = processed.seed + 1`), and the tiles are blended back
//! (`combine_grid`). Batch count repeats it with the seed + n.
//!
//! sdhost runs each tile of a batch as its own job with the seed that tile has in A1111's batch
//! (the batch's seed + its place), which equals the batched image but for a batched
//! convolution's last bits. The upscalers are the pixel ones sdhost has (None: no enlargement,
//! as A1111 skips it; Lanczos; Nearest).

use super::{
    fix_seed, picture_error, plan_jobs, with_extra_params, ScriptError, ScriptHost, ScriptImage,
    ScriptInit, ScriptJob, ScriptOutcome,
};
use crate::prepare::tiles::{combine_grid, split_grid};
use crate::prepare::upscalers::PixelUpscaler;

/// A1111's title.
pub const TITLE: &str = "SD upscale";

/// The upscalers in A1111's `shared.sd_upscalers` order, as far as sdhost has them.
pub const UPSCALERS: [&str; 3] = ["None", "Lanczos", "Nearest"];

/// The script's arguments (A1111's order after its info box: overlap, upscaler, scale).
#[derive(Debug, Clone, PartialEq)]
pub struct SdUpscaleArgs {
    /// "Tile overlap" in pixels (default 64).
    pub overlap: u32,
    /// "Upscaler" (index 0 "None" enlarges nothing).
    pub upscaler: PixelUpscaler,
    /// "Scale Factor" (1–4, default 2).
    pub scale_factor: f64,
}

/// The upscaler at A1111's index.
pub fn upscaler_by_index(index: usize) -> Option<PixelUpscaler> {
    UPSCALERS.get(index).and_then(|n| PixelUpscaler::named(n))
}

/// The upscaler by name, any case (A1111 accepts a name since 1.6).
pub fn upscaler_by_name(name: &str) -> Option<PixelUpscaler> {
    UPSCALERS
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name.trim()))
        .and_then(|n| PixelUpscaler::named(n))
}

fn upscaler_name(upscaler: PixelUpscaler) -> &'static str {
    UPSCALERS
        .iter()
        .copied()
        .find(|n| PixelUpscaler::named(n) == Some(upscaler))
        .unwrap_or("None")
}

/// Runs SD upscale over `base`'s init image.
pub fn run(
    args: &SdUpscaleArgs,
    host: &mut dyn ScriptHost,
    base: &ScriptJob,
) -> Result<ScriptOutcome, ScriptError> {
    let init = base.init.as_ref().ok_or_else(|| ScriptError::InvalidArgs {
        script: TITLE,
        message: "needs an init image".into(),
    })?;
    let mut params = base.params.clone();
    fix_seed(&mut params);
    let picture = match args.upscaler {
        PixelUpscaler::None => init.image.clone(),
        upscaler => upscaler.upscale(&init.image, args.scale_factor),
    };
    let mut grid = split_grid(&picture, params.width, params.height, args.overlap)
        .map_err(|e| picture_error(TITLE, e))?;
    let batch_size = params.batch_size.max(1);
    let tiles: Vec<_> = grid
        .rows
        .iter()
        .flat_map(|row| row.tiles.iter().map(|t| t.image.clone()))
        .collect();
    let mut jobs = Vec::new();
    for n in 0..params.n_iter {
        for (t, tile) in tiles.iter().enumerate() {
            let (batch, place) = (t / batch_size, t % batch_size);
            let mut p = params.clone();
            p.n_iter = 1;
            p.batch_size = 1;
            p.seed = params.seed + (n + batch + place) as i64;
            let mut tile_init = ScriptInit::new(tile.clone(), None);
            tile_init.deliver = false;
            jobs.push(ScriptJob {
                params: p,
                init: Some(tile_init),
                checkpoint: base.checkpoint.clone(),
            });
        }
    }
    plan_jobs(host, &jobs);
    let keys = [
        ("SD upscale overlap".to_string(), args.overlap.to_string()),
        (
            "SD upscale upscaler".to_string(),
            upscaler_name(args.upscaler).to_string(),
        ),
    ];
    let mut outcome = ScriptOutcome::default();
    let mut first_info = None;
    'upscales: for n in 0..params.n_iter {
        let mut results = Vec::with_capacity(tiles.len());
        for job in &jobs[n * tiles.len()..(n + 1) * tiles.len()] {
            if host.stopped() {
                outcome.stopped = true;
                break 'upscales;
            }
            let done = host.run(job)?;
            let Some(image) = done.images.first() else {
                outcome.stopped = true;
                break 'upscales;
            };
            first_info.get_or_insert_with(|| image.infotext.clone());
            results.push(image.image.clone());
            if done.cancelled || done.interrupted {
                outcome.stopped = true;
                break 'upscales;
            }
        }
        let mut place = results.into_iter();
        for row in &mut grid.rows {
            for tile in &mut row.tiles {
                if let Some(result) = place.next() {
                    tile.image = result;
                }
            }
        }
        let Some(info) = &first_info else {
            break;
        };
        let combined = combine_grid(&grid);
        let infotext = with_extra_params(info, &keys);
        outcome.made.push(ScriptImage {
            image: combined,
            infotext,
            seed: (params.seed + n as i64) as u64,
        });
    }
    Ok(outcome)
}
