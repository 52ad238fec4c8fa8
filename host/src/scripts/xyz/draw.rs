//! The X/Y/Z plot's pictures and their infotext (A1111 `draw_xyz_grid` after its loop, and
//! `Script.run`'s grid infotexts): a grid per Z value with the X and Y labels, the Z grids
//! side by side under the Z labels, then what "Include Sub Grids" and "Include Sub Images"
//! add. The drawing itself is [`crate::scripts::grid`].

use image::RgbImage;

use super::plan::Plan;
use super::XyzArgs;
use crate::infotext::{Infotext, TRAILING_KEYS};
use crate::pipeline::img2img::GeneratedImage;
use crate::scripts::grid::{
    combine_z_grids, draw_grid_annotations, image_grid, GridAnnotation, GRID_BACKGROUND,
};
use crate::scripts::{ScriptError, ScriptImage, ScriptOutcome};

/// One cell's picture.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Its image: the job's image, or the grid of its images when it made several.
    pub image: RgbImage,
    /// The job's first image's infotext.
    pub infotext: Infotext,
    /// Its seed.
    pub seed: u64,
}

/// A1111's `image_grid` rows for a batch's own grid (option `n_rows` −1: `round(√n)`).
pub fn batch_rows(count: usize) -> usize {
    ((count as f64).sqrt().round() as usize).clamp(1, count.max(1))
}

impl Cell {
    /// The cell of a job's images (None when it made none). Several images become their grid,
    /// as A1111's `process_images` puts a batch's grid first and the plot takes the first.
    pub fn of(images: Vec<GeneratedImage>) -> Option<Cell> {
        let first = images.first()?;
        let (infotext, seed) = (first.infotext.clone(), first.seed);
        let image = if images.len() == 1 {
            images.into_iter().next()?.image
        } else {
            let pictures: Vec<RgbImage> = images.into_iter().map(|i| i.image).collect();
            image_grid(&pictures, batch_rows(pictures.len()), GRID_BACKGROUND).ok()?
        };
        Some(Cell {
            image,
            infotext,
            seed,
        })
    }
}

/// `infotext` with the plot's keys added where A1111 adds `extra_generation_params`: after
/// the job's own keys, before `Version` and `User`.
fn with_plot_keys(infotext: &Infotext, keys: Vec<(String, String)>) -> Infotext {
    let mut grid = infotext.clone();
    let at = grid
        .params
        .iter()
        .position(|(k, _)| TRAILING_KEYS.contains(&k.as_str()))
        .unwrap_or(grid.params.len());
    for (offset, pair) in keys.into_iter().enumerate() {
        grid.params.insert(at + offset, pair);
    }
    grid
}

/// The plot's infotext keys for axes `which` (0 X, 1 Y, 2 Z): `Script` first when asked,
/// then `X Type`, `X Values` and, for seed axes with fixed seeds, `Fixed X Values`.
fn plot_keys(args: &XyzArgs, plan: &Plan, which: &[usize], script: bool) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    if script {
        keys.push(("Script".to_string(), super::TITLE.to_string()));
    }
    for &i in which {
        let axis = plan.axes[i];
        if axis.effect == super::axes::Effect::Nothing {
            continue;
        }
        let name = ["X", "Y", "Z"][i];
        keys.push((format!("{name} Type"), axis.label.to_string()));
        keys.push((format!("{name} Values"), plan.texts[i].clone()));
        if axis.is_seed() && !args.no_fixed_seeds {
            let fixed: Vec<String> = plan.values[i].iter().map(|v| v.display()).collect();
            keys.push((format!("Fixed {name} Values"), fixed.join(", ")));
        }
    }
    keys
}

fn grid_error(error: impl std::fmt::Display) -> ScriptError {
    super::invalid(format!("grid: {error}"))
}

/// The plot's outcome from its cells (None: not run or no image): grids with legends and
/// infotexts; nothing when no cell made an image.
pub fn outcome(
    args: &XyzArgs,
    plan: &Plan,
    cells: Vec<Option<Cell>>,
    stopped: bool,
) -> Result<ScriptOutcome, ScriptError> {
    let mut result = ScriptOutcome {
        grid_basename: "xyz_grid",
        warnings: plan.warnings.clone(),
        stopped,
        ..ScriptOutcome::default()
    };
    if cells.iter().all(Option::is_none) {
        return Ok(result);
    }
    let [nx, ny, nz] = [0, 1, 2].map(|i| plan.values[i].len());
    // Cells that made nothing are blank, the size of the first cell (A1111 `Image.new`).
    let blank_size = cells[0].as_ref().map_or(
        (plan.cells[0].params.width, plan.cells[0].params.height),
        |c| c.image.dimensions(),
    );
    let images: Vec<RgbImage> = cells
        .iter()
        .map(|c| match c {
            Some(cell) => cell.image.clone(),
            None => RgbImage::new(blank_size.0, blank_size.1),
        })
        .collect();
    let first_made = cells.iter().flatten().next().expect("a cell made an image");
    let labels = |i: usize| -> Vec<Vec<GridAnnotation>> {
        plan.labels[i]
            .iter()
            .map(|text| vec![GridAnnotation::new(text.as_str())])
            .collect()
    };
    let mut sub_grids = Vec::with_capacity(nz);
    for iz in 0..nz {
        let slice = &images[iz * nx * ny..(iz + 1) * nx * ny];
        let mut grid = image_grid(slice, ny, GRID_BACKGROUND).map_err(grid_error)?;
        if args.draw_legend {
            // A1111 passes the first cell's size; the largest is the same whenever A1111's
            // legend fits (a smaller first cell fails its column count assertion).
            let w = slice.iter().map(RgbImage::width).max().unwrap_or(1);
            let h = slice.iter().map(RgbImage::height).max().unwrap_or(1);
            grid = draw_grid_annotations(&grid, w, h, &labels(0), &labels(1), args.margin_size)
                .map_err(grid_error)?;
        }
        // Each Z grid's infotext is its first cell's (or the first image's) with the X and
        // Y keys.
        let base = cells[iz * nx * ny].as_ref().unwrap_or(first_made);
        sub_grids.push(ScriptImage {
            image: grid,
            infotext: with_plot_keys(&base.infotext, plot_keys(args, plan, &[0, 1], true)),
            seed: base.seed,
        });
    }
    let z_labels = args.draw_legend.then(|| plan.labels[2].clone());
    let pictures: Vec<RgbImage> = sub_grids.iter().map(|g| g.image.clone()).collect();
    let z_grid =
        combine_z_grids(&pictures, z_labels.as_deref(), GRID_BACKGROUND).map_err(grid_error)?;
    let base = cells[0].as_ref().unwrap_or(first_made);
    let main = ScriptImage {
        image: z_grid,
        infotext: with_plot_keys(&base.infotext, plot_keys(args, plan, &[0, 1, 2], true)),
        seed: base.seed,
    };
    result.saved_grids = if args.include_sub_grids && nz > 1 {
        1 + nz
    } else {
        1
    };
    result.grids.push(main);
    if args.include_sub_grids {
        result.grids.extend(sub_grids);
    }
    if args.include_lone_images {
        result.images = cells
            .into_iter()
            .zip(images)
            .map(|(cell, image)| ScriptImage {
                infotext: cell
                    .as_ref()
                    .map_or_else(Infotext::default, |c| c.infotext.clone()),
                seed: cell.as_ref().map_or(0, |c| c.seed),
                image,
            })
            .collect();
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_keys_go_before_version() {
        let cell = Infotext {
            prompt: "a".into(),
            negative_prompt: String::new(),
            params: vec![
                ("Steps".into(), "10".into()),
                ("Version".into(), "v1".into()),
            ],
        };
        let grid = with_plot_keys(&cell, vec![("Script".into(), "X/Y/Z plot".into())]);
        assert_eq!(grid.params[1].0, "Script");
        assert_eq!(grid.params[2].0, "Version");
    }

    #[test]
    fn batch_grids_have_a1111s_rows() {
        assert_eq!(batch_rows(1), 1);
        assert_eq!(batch_rows(2), 1);
        assert_eq!(batch_rows(3), 2);
        assert_eq!(batch_rows(4), 2);
    }
}
