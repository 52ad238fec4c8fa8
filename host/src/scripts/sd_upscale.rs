//! A1111's "SD upscale" script (`scripts/sd_upscale.py`): the picture is enlarged by an
//! upscaler, cut into overlapping tiles of the job's width × height (`split_grid`), each tile
//! is run through img2img (batches of `batch_size` tiles, the seed one higher per batch, as
//! A1111 advances `p.seed = processed.seed + 1`), and the tiles are blended back
//! (`combine_grid`). Batch count repeats it with the seed + n.
//!
//! sdhost runs each tile of a batch as its own job with the seed that tile has in A1111's batch
//! (the batch's seed + its place), which equals the batched image but for a batched
//! convolution's last bits. The upscaler is any of A1111's list: None (no enlargement, as
//! A1111 skips it), Lanczos, Nearest or a model of the upscaler folders (ESRGAN, SwinIR …).

use super::{
    fix_seed, picture_error, plan_jobs, with_extra_params, ScriptError, ScriptHost, ScriptImage,
    ScriptInit, ScriptJob, ScriptOutcome,
};
use crate::pipeline::model::GenerationModel;
use crate::prepare::tiles::{combine_grid, split_grid};
use crate::prepare::upscalers::PixelUpscaler;
use crate::upscale::{ReadyUpscaler, Upscaler};

/// A1111's title.
pub const TITLE: &str = "SD upscale";

/// The upscaler the script's arguments name: an index into A1111's `shared.sd_upscalers`
/// (None, Lanczos, Nearest, then the upscaler folders' models by name) or, since A1111 1.6, a
/// name. Resolved against the host's folders when the script starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpscalerChoice {
    /// Position in the list.
    Index(usize),
    /// Name, any case.
    Name(String),
}

/// The script's arguments (A1111's order after its info box: overlap, upscaler, scale).
#[derive(Debug, Clone, PartialEq)]
pub struct SdUpscaleArgs {
    /// "Tile overlap" in pixels (default 64).
    pub overlap: u32,
    /// "Upscaler" (index 0 "None" enlarges nothing).
    pub upscaler: UpscalerChoice,
    /// "Scale Factor" (1–4, default 2).
    pub scale_factor: f64,
}

/// The upscaler `choice` names among `model`'s upscaler folders (for
/// [`ScriptHost::upscaler`]): its name and the upscaler read on the model's device, so a
/// missing or broken file fails before any tile is sampled.
pub fn ready_upscaler(
    choice: &UpscalerChoice,
    model: &GenerationModel,
) -> Result<(String, ReadyUpscaler), ScriptError> {
    let all = Upscaler::all(&model.network_dirs.upscalers);
    let found = match choice {
        UpscalerChoice::Index(i) => all.get(*i),
        UpscalerChoice::Name(name) => all
            .iter()
            .find(|u| u.name().eq_ignore_ascii_case(name.trim())),
    };
    let upscaler = found.ok_or_else(|| ScriptError::InvalidArgs {
        script: TITLE,
        message: format!(
            "script_args[2]: no upscaler {} (there are: {})",
            match choice {
                UpscalerChoice::Index(i) => i.to_string(),
                UpscalerChoice::Name(name) => format!("\"{name}\""),
            },
            all.iter()
                .map(Upscaler::name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    let ready =
        model
            .upscalers
            .ready(upscaler, model.device)
            .map_err(|e| ScriptError::InvalidArgs {
                script: TITLE,
                message: format!("upscaler \"{}\": {e}", upscaler.name()),
            })?;
    Ok((upscaler.name().to_string(), ready))
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
    let (upscaler_name, upscaler) = host.upscaler(&args.upscaler)?;
    let mut params = base.params.clone();
    fix_seed(&mut params);
    let picture = match upscaler {
        ReadyUpscaler::Pixel(PixelUpscaler::None) => init.image.clone(),
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
                cell: Vec::new(),
            });
        }
    }
    plan_jobs(host, &jobs);
    let keys = [
        ("SD upscale overlap".to_string(), args.overlap.to_string()),
        ("SD upscale upscaler".to_string(), upscaler_name),
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
