//! Running the X/Y/Z plot (A1111 `draw_xyz_grid`'s loop and `Script.run`'s `cell`): every
//! cell's job in the planned order (the costliest axis outermost, so a checkpoint or VAE is
//! loaded once per value), stopping between jobs when the user stops the plot; then the
//! grids ([`super::draw`]).

use super::draw::{self, Cell};
use super::plan::plan;
use super::XyzArgs;
use crate::scripts::{ScriptError, ScriptHost, ScriptJob, ScriptOutcome};

/// Runs the X/Y/Z plot over `base` on `host`.
pub fn run(
    args: &XyzArgs,
    host: &mut dyn ScriptHost,
    base: &ScriptJob,
) -> Result<ScriptOutcome, ScriptError> {
    let plan = plan(args, host, base)?;
    let total: usize = plan.cells.iter().map(ScriptJob::planned_steps).sum();
    host.plan(total, plan.cells.len());
    let mut cells: Vec<Option<Cell>> = (0..plan.cells.len()).map(|_| None).collect();
    let mut stopped = false;
    for &at in &plan.order {
        if host.stopped() {
            stopped = true;
            break;
        }
        let index = plan.index(at);
        let outcome = host.run(&plan.cells[index])?;
        let ended_early = outcome.cancelled || outcome.interrupted;
        // A cell whose job made no image stays empty (A1111 pastes a blank image there).
        cells[index] = Cell::of(outcome.images);
        if ended_early {
            stopped = true;
            break;
        }
    }
    draw::outcome(args, &plan, cells, stopped)
}
