//! From the X/Y/Z plot's arguments to every cell's job, checked before the first one runs
//! (A1111 `Script.run` up to `draw_xyz_grid`: `fix_seed`, `process_axis` with its `confirm`
//! checks, the grid size limit, seed fixing, and the loop order from the axes' costs). Each
//! cell's request is complete and validated here, so a bad value stops the plot before any
//! sampling, naming the axis and value.

use sdhost_plugin_api::OptionValue;

use super::axes::{Axis, CellDraft, Effect};
use super::values::{csv_values, expand, AxisValue};
use super::{invalid, AxisArg, XyzArgs};
use crate::rng::{fixed_seed, random_seed};
use crate::scripts::{CellAxis, ScriptError, ScriptHost, ScriptJob};

/// A1111's option `img_max_size_mp`: the largest grid, in megapixels.
pub const MAX_GRID_MEGAPIXELS: f64 = 200.0;

/// Every cell of the plot, ready to run.
#[derive(Debug)]
pub struct Plan {
    /// The axes, X, Y, Z.
    pub axes: [&'static Axis; 3],
    /// Each axis's values (one `0` for Nothing).
    pub values: [Vec<AxisValue>; 3],
    /// Each value's legend text.
    pub labels: [Vec<String>; 3],
    /// Each axis's values as the user gave them (the infotext's `X Values`).
    pub texts: [String; 3],
    /// Cell jobs, cell (ix, iy, iz) at `ix + iy·|X| + iz·|X|·|Y|`.
    pub cells: Vec<ScriptJob>,
    /// The order cells run in: the costliest axis outermost.
    pub order: Vec<(usize, usize, usize)>,
    /// Things the user should know (an option the cell's sampler does not take).
    pub warnings: Vec<String>,
}

impl Plan {
    /// Cell (ix, iy, iz)'s index in [`Plan::cells`].
    pub fn index(&self, (ix, iy, iz): (usize, usize, usize)) -> usize {
        let (nx, ny) = (self.values[0].len(), self.values[1].len());
        ix + iy * nx + iz * nx * ny
    }
}

/// Python's `csv.writer().writerow(items)` stripped (A1111 `list_to_csv_string`): how the
/// dropdown's picks are written as the infotext's values.
fn csv_line(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| {
            let needs =
                item.contains([',', '"', '\r', '\n']) || (items.len() == 1 && item.is_empty());
            if needs {
                format!("\"{}\"", item.replace('"', "\"\""))
            } else {
                item.clone()
            }
        })
        .collect();
    quoted.join(",").trim().to_string()
}

/// One axis's values (A1111 `process_axis` and `fix_axis_seeds`), and the values text.
fn axis_values(
    arg: &AxisArg,
    name: char,
    args: &XyzArgs,
    host: &dyn ScriptHost,
) -> Result<(Vec<AxisValue>, String), ScriptError> {
    let axis = arg.axis;
    if let Effect::Unsupported(what) = axis.effect {
        return Err(invalid(format!(
            "{name} axis \"{}\" needs {what}, which sdhost does not do",
            axis.label
        )));
    }
    if axis.effect == Effect::Nothing {
        return Ok((vec![AxisValue::Int(0)], arg.values.clone()));
    }
    let from_dropdown = axis.choices && !args.csv_mode;
    let (items, text) = if from_dropdown {
        (arg.dropdown.clone(), csv_line(&arg.dropdown))
    } else {
        (csv_values(&arg.values), arg.values.clone())
    };
    let mut values = expand(axis.kind, &items)
        .map_err(|e| invalid(format!("{name} values of \"{}\": {e}", axis.label)))?;
    if values.is_empty() {
        return Err(invalid(format!(
            "{name} axis \"{}\" has no values{}",
            axis.label,
            if from_dropdown {
                " (its values come from the dropdown list unless csv_mode is on)"
            } else {
                ""
            }
        )));
    }
    confirm(axis, &values, host).map_err(|m| invalid(format!("{name} values: {m}")))?;
    if axis.is_seed() && !args.no_fixed_seeds {
        for value in &mut values {
            if *value == AxisValue::Int(-1) {
                *value = AxisValue::Int(fixed_seed(-1, random_seed) as i64);
            }
        }
    }
    Ok((values, text))
}

/// A1111's `confirm` of the axes that have one: samplers and checkpoints must exist.
fn confirm(axis: &Axis, values: &[AxisValue], host: &dyn ScriptHost) -> Result<(), String> {
    for value in values {
        let text = value.display();
        match axis.effect {
            Effect::Field("sampler_name" | "hr_sampler_name") => {
                host.registry()
                    .find_with_schedule(&text)
                    .map_err(|_| format!("Unknown sampler: {text}"))?;
            }
            Effect::Checkpoint if !host.has_checkpoint(&text) => {
                return Err(format!("Unknown checkpoint: {text}"))
            }
            Effect::Refiner if !super::axes::is_none(&text) && !host.has_checkpoint(&text) => {
                return Err(format!("Unknown checkpoint: {text}"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Which axes run outermost and next (A1111: the strictly costliest first, else z, y).
fn loop_order(costs: [f64; 3]) -> (usize, usize) {
    let [x, y, z] = costs;
    if x > y && x > z {
        (0, if y > z { 1 } else { 2 })
    } else if y > x && y > z {
        (1, if x > z { 0 } else { 2 })
    } else if z > x && z > y {
        (2, if x > y { 0 } else { 1 })
    } else {
        (2, 1)
    }
}

/// The cells in run order.
fn cell_order(sizes: [usize; 3], costs: [f64; 3]) -> Vec<(usize, usize, usize)> {
    let (first, second) = loop_order(costs);
    let third = 3 - first - second;
    let mut order = Vec::with_capacity(sizes.iter().product());
    for a in 0..sizes[first] {
        for b in 0..sizes[second] {
            for c in 0..sizes[third] {
                let mut at = [0; 3];
                at[first] = a;
                at[second] = b;
                at[third] = c;
                order.push((at[0], at[1], at[2]));
            }
        }
    }
    order
}

/// Checks the arguments and makes every cell's job over `base`.
pub fn plan(args: &XyzArgs, host: &dyn ScriptHost, base: &ScriptJob) -> Result<Plan, ScriptError> {
    let mut base = base.clone();
    if !args.no_fixed_seeds {
        // A1111 `fix_seed(p)`: one seed and variation seed for the whole grid.
        base.params.seed = fixed_seed(base.params.seed, random_seed) as i64;
        base.params.subseed = fixed_seed(base.params.subseed, random_seed) as i64;
    }
    let names = ['X', 'Y', 'Z'];
    let mut values: [Vec<AxisValue>; 3] = Default::default();
    let mut texts: [String; 3] = Default::default();
    for (i, arg) in args.axes.iter().enumerate() {
        (values[i], texts[i]) = axis_values(arg, names[i], args, host)?;
    }
    let sizes = [values[0].len(), values[1].len(), values[2].len()];
    let cell_count: usize = sizes.iter().product();
    let (w, h) = (base.params.width as f64, base.params.height as f64);
    let megapixels = (cell_count as f64 * w * h / 1e6).round();
    if megapixels >= MAX_GRID_MEGAPIXELS {
        return Err(invalid(format!(
            "Resulting grid would be too large ({megapixels} MPixels) (max configured size is \
             {MAX_GRID_MEGAPIXELS} MPixels)"
        )));
    }
    let axes = [args.axes[0].axis, args.axes[1].axis, args.axes[2].axis];
    let mut warnings = Vec::new();
    let mut cells = Vec::with_capacity(cell_count);
    for iz in 0..sizes[2] {
        for iy in 0..sizes[1] {
            for ix in 0..sizes[0] {
                let at = [ix, iy, iz];
                let job = cell(args, &axes, &values, at, &base, host, &mut warnings)?;
                cells.push(job);
            }
        }
    }
    let labels = [0, 1, 2].map(|i| values[i].iter().map(|v| axes[i].legend_text(v)).collect());
    Ok(Plan {
        axes,
        order: cell_order(sizes, axes.map(|a| a.cost)),
        values,
        labels,
        texts,
        cells,
        warnings,
    })
}

/// Cell `at`'s job: the axes applied X, Y, Z in turn, seeds varied, sampler options set for
/// the cell's sampler, the whole request validated.
fn cell(
    args: &XyzArgs,
    axes: &[&'static Axis; 3],
    values: &[Vec<AxisValue>; 3],
    at: [usize; 3],
    base: &ScriptJob,
    host: &dyn ScriptHost,
    warnings: &mut Vec<String>,
) -> Result<ScriptJob, ScriptError> {
    let mut draft = CellDraft {
        params: base.params.clone(),
        checkpoint: base.checkpoint.clone(),
        options: Vec::new(),
    };
    let describe = || {
        (0..3)
            .filter(|i| axes[*i].effect != Effect::Nothing)
            .map(|i| axes[i].legend_text(&values[i][at[i]]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for i in 0..3 {
        axes[i]
            .apply(&mut draft, &values[i][at[i]], &values[i])
            .map_err(|e| invalid(format!("cell {}: {e}", describe())))?;
    }
    // "Vary seeds for X/Y/Z": A1111 multiplies by an axis's length only when that axis varies.
    let [vx, vy, vz] = args.vary_seeds;
    let xdim = if vx { values[0].len() } else { 1 } as i64;
    let ydim = if vy { values[1].len() } else { 1 } as i64;
    let seed = &mut draft.params.seed;
    if vx {
        *seed += at[0] as i64;
    }
    if vy {
        *seed += at[1] as i64 * xdim;
    }
    if vz {
        *seed += at[2] as i64 * xdim * ydim;
    }
    let mut params = draft.params;
    if !draft.options.is_empty() {
        let found = host
            .registry()
            .find_with_schedule(&params.sampler.sampler)
            .map_err(|e| invalid(format!("cell {}: {e}", describe())))?
            .0;
        for (option, value) in draft.options {
            if found.info.options.iter().any(|o| o.name.as_str() == option) {
                params.sampler.options.retain(|(name, _)| name != option);
                params
                    .sampler
                    .options
                    .push((option.to_string(), OptionValue::Number(value)));
            } else {
                let warning = format!(
                    "sampler {} does not take {option}: the axis does not change its cells",
                    found.info.name
                );
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
    }
    params
        .validate(8)
        .map_err(|e| invalid(format!("cell {}: {e}", describe())))?;
    let cell = (0..3)
        .filter(|i| axes[*i].effect != Effect::Nothing)
        .map(|i| CellAxis {
            axis: axes[i].label.to_string(),
            value: axes[i].value_text(&values[i][at[i]]),
        })
        .collect();
    Ok(ScriptJob {
        params,
        init: base.init.clone(),
        checkpoint: draft.checkpoint,
        cell,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costliest_axis_runs_outermost() {
        assert_eq!(loop_order([0.0, 0.0, 0.0]), (2, 1));
        assert_eq!(loop_order([1.0, 0.0, 0.0]), (0, 2));
        assert_eq!(loop_order([0.0, 0.7, 1.0]), (2, 1));
        assert_eq!(loop_order([0.7, 1.0, 0.0]), (1, 0));
        let order = cell_order([2, 1, 2], [1.0, 0.0, 0.0]);
        assert_eq!(order, [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]);
    }

    #[test]
    fn dropdown_picks_are_written_as_csv() {
        assert_eq!(
            csv_line(&["Euler".into(), "DPM++ 2M".into()]),
            "Euler,DPM++ 2M"
        );
        assert_eq!(csv_line(&["a,b".into()]), "\"a,b\"");
    }
}
