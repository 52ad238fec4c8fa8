//! The script flags of `sdhost img2img` and `sdhost txt2img`: the X/Y/Z plot's axes as
//! `"Label: values"` (`--x-axis "Steps: 10,20" --y-axis "CFG Scale: 5-9 (+2)"`), its
//! checkboxes, and where grids go.

use std::path::PathBuf;

use clap::Args;

use crate::scripts::xyz::{AxisArg, XyzArgs};
use crate::scripts::{Script, Tab};

/// Script flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ScriptFlags {
    /// A script by its A1111 title ("Prompt matrix", "Prompts from file or textbox",
    /// "Loopback", "SD upscale", "Outpainting mk2", "Poor man's outpainting"; any case), with
    /// its arguments in A1111's order as --script-arg (the X/Y/Z plot has its own flags).
    #[arg(long, value_name = "TITLE")]
    pub script: Option<String>,
    /// One of the script's positional arguments (A1111's `script_args`, the info boxes
    /// included as null): JSON (4, 0.5, true, null, ["left","up"]) or else plain text;
    /// missing trailing arguments take A1111's UI defaults.
    #[arg(long = "script-arg", value_name = "VALUE", allow_hyphen_values = true)]
    pub script_args: Vec<String>,
    /// X/Y/Z plot: the X axis as "Label: values" (A1111's labels and value syntax, e.g.
    /// "Steps: 10,20", "CFG Scale: 5-9 (+2)", "Seed: 1-4", "Sampler: Euler, DPM++ 2M").
    #[arg(long, value_name = "AXIS")]
    pub x_axis: Option<String>,
    /// X/Y/Z plot: the Y axis.
    #[arg(long, value_name = "AXIS")]
    pub y_axis: Option<String>,
    /// X/Y/Z plot: the Z axis (one grid per value, side by side).
    #[arg(long, value_name = "AXIS")]
    pub z_axis: Option<String>,
    /// X/Y/Z plot: no labels around the grid (A1111's "Draw legend" off).
    #[arg(long)]
    pub no_legend: bool,
    /// X/Y/Z plot: keep -1 seeds random in every cell (A1111's "Keep -1 for seeds").
    #[arg(long)]
    pub keep_random_seeds: bool,
    /// X/Y/Z plot: add each cell's position along these axes to its seed ("x", "y", "z",
    /// comma-separated; A1111's "Vary seeds for X/Y/Z").
    #[arg(long, value_name = "AXES", value_delimiter = ',')]
    pub vary_seeds: Vec<String>,
    /// X/Y/Z plot: also save each Z value's grid (A1111's "Include Sub Grids").
    #[arg(long)]
    pub include_sub_grids: bool,
    /// X/Y/Z plot: pixels between the grid's cells (A1111's "Grid margins").
    #[arg(long, default_value_t = 0, value_name = "PX")]
    pub grid_margins: u32,
    /// Folder for grids [default: img2img-grids or txt2img-grids beside --out-dir].
    #[arg(long, value_name = "DIR")]
    pub grid_dir: Option<PathBuf>,
}

impl ScriptFlags {
    /// The script the flags ask for on `tab`, if any.
    pub fn script(&self, tab: Tab) -> anyhow::Result<Option<Script>> {
        let given = [&self.x_axis, &self.y_axis, &self.z_axis];
        if let Some(title) = &self.script {
            if given.iter().any(|a| a.is_some()) {
                anyhow::bail!("--script and the X/Y/Z plot's axes are two scripts; choose one");
            }
            let args: Vec<serde_json::Value> = self
                .script_args
                .iter()
                .map(|text| {
                    serde_json::from_str(text)
                        .unwrap_or_else(|_| serde_json::Value::String(text.clone()))
                })
                .collect();
            return Ok(Some(Script::from_api(title, &args, tab)?));
        }
        if !self.script_args.is_empty() {
            anyhow::bail!("--script-arg needs --script");
        }
        if given.iter().all(|a| a.is_none()) {
            let xyz_only = self.no_legend
                || self.keep_random_seeds
                || !self.vary_seeds.is_empty()
                || self.include_sub_grids
                || self.grid_margins != 0;
            if xyz_only {
                anyhow::bail!("the X/Y/Z plot flags need --x-axis, --y-axis or --z-axis");
            }
            return Ok(None);
        }
        let axis = |text: &Option<String>| match text {
            Some(text) => AxisArg::parse(tab, text),
            None => Ok(AxisArg::nothing(tab)),
        };
        let mut args = XyzArgs::new(tab, [axis(given[0])?, axis(given[1])?, axis(given[2])?]);
        args.draw_legend = !self.no_legend;
        args.no_fixed_seeds = self.keep_random_seeds;
        args.include_sub_grids = self.include_sub_grids;
        if self.grid_margins > 500 {
            anyhow::bail!("--grid-margins: at most 500 pixels");
        }
        args.margin_size = self.grid_margins;
        for name in &self.vary_seeds {
            let i = match name.trim().to_lowercase().as_str() {
                "x" => 0,
                "y" => 1,
                "z" => 2,
                other => anyhow::bail!("--vary-seeds: \"{other}\" is not x, y or z"),
            };
            args.vary_seeds[i] = true;
        }
        Ok(Some(Script::XyzPlot(Box::new(args))))
    }
}
