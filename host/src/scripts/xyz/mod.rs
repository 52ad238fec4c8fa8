//! A1111's X/Y/Z plot (`scripts/xyz_grid.py`): up to three axes of parameter values, one
//! ordinary job per cell, the cells drawn into a labelled grid per Z value and the Z grids side
//! by side. [`axes`] is the axis table, [`values`] the value syntax, [`plan`] turns the
//! arguments into validated cell jobs before anything runs, [`run`] runs them in A1111's
//! cost order and [`draw`] makes the grids and their infotext.

pub mod axes;
pub mod draw;
pub mod plan;
pub mod run;
pub mod values;

use serde_json::Value;

use super::{ScriptError, Tab};
use axes::Axis;

pub use run::run;

/// The script's title (A1111's `Script.title()`, the API's `script_name`).
pub const TITLE: &str = "X/Y/Z plot";

/// One axis as chosen: its type and its values as typed (or picked from the dropdown).
#[derive(Debug, Clone)]
pub struct AxisArg {
    /// The axis.
    pub axis: &'static Axis,
    /// The values text (`10,20`, `5-9 (+2)`).
    pub values: String,
    /// The values picked from the dropdown, for axes with fixed choices.
    pub dropdown: Vec<String>,
}

impl AxisArg {
    /// The "Nothing" axis.
    pub fn nothing(tab: Tab) -> Self {
        AxisArg {
            axis: axes::tab_axes(tab)[0],
            values: String::new(),
            dropdown: Vec::new(),
        }
    }

    /// An axis from the command line's `"Label: values"` (the label any case).
    pub fn parse(tab: Tab, text: &str) -> Result<Self, ScriptError> {
        let (label, values) = text.split_once(':').unwrap_or((text, ""));
        let axis = axes::find(tab, label).ok_or_else(|| {
            let known: Vec<&str> = axes::tab_axes(tab)
                .iter()
                .filter(|a| !matches!(a.effect, axes::Effect::Unsupported(_)))
                .map(|a| a.label)
                .collect();
            invalid(format!(
                "no axis \"{}\" on the {} tab (axes: {})",
                label.trim(),
                tab.stem(),
                known.join(", ")
            ))
        })?;
        Ok(AxisArg {
            axis,
            values: values.trim().to_string(),
            dropdown: Vec::new(),
        })
    }
}

/// The script's arguments (A1111's `Script.run` parameters after `p`).
#[derive(Debug, Clone)]
pub struct XyzArgs {
    /// The tab it runs on.
    pub tab: Tab,
    /// X, Y and Z axes.
    pub axes: [AxisArg; 3],
    /// Draw legend (labels around the grid).
    pub draw_legend: bool,
    /// Include Sub Images: the cells' images are returned after the grids.
    pub include_lone_images: bool,
    /// Include Sub Grids: each Z value's grid is returned (and saved) too.
    pub include_sub_grids: bool,
    /// Keep -1 for seeds: random seeds stay random per cell.
    pub no_fixed_seeds: bool,
    /// Vary seeds for X, Y, Z: the seed grows with the cell's position along that axis.
    pub vary_seeds: [bool; 3],
    /// Grid margins in pixels.
    pub margin_size: u32,
    /// Use text inputs instead of dropdowns: fixed-choice axes read the values text.
    pub csv_mode: bool,
}

impl XyzArgs {
    /// A1111's UI defaults with the given axes (Draw legend on, text inputs as on the
    /// command line).
    pub fn new(tab: Tab, axes: [AxisArg; 3]) -> Self {
        XyzArgs {
            tab,
            axes,
            draw_legend: true,
            include_lone_images: false,
            include_sub_grids: false,
            no_fixed_seeds: false,
            vary_seeds: [false; 3],
            margin_size: 0,
            csv_mode: true,
        }
    }

    /// A1111's positional `script_args`: `x_type, x_values, x_values_dropdown, y_type, …,
    /// z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    /// vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode`. Types are indices
    /// into the tab's axis list (labels are accepted too); missing trailing arguments take
    /// the UI's defaults.
    pub fn from_api(args: &[Value], tab: Tab) -> Result<Self, ScriptError> {
        let arg = |i: usize| args.get(i).filter(|v| !v.is_null());
        let list = axes::tab_axes(tab);
        let axis_at = |i: usize, default: usize| -> Result<AxisArg, ScriptError> {
            let axis = match arg(i) {
                None => list[default],
                Some(Value::Number(n)) => {
                    let index = n
                        .as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .filter(|i| *i < list.len())
                        .ok_or_else(|| {
                            invalid(format!(
                                "script_args[{i}]: axis type {n} is not an index below {}",
                                list.len()
                            ))
                        })?;
                    list[index]
                }
                Some(Value::String(label)) => axes::find(tab, label)
                    .ok_or_else(|| invalid(format!("script_args[{i}]: no axis \"{label}\"")))?,
                Some(other) => {
                    return Err(invalid(format!(
                        "script_args[{i}]: axis type {other} is not an index"
                    )))
                }
            };
            let values = match arg(i + 1) {
                None => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(other @ Value::Number(_)) => other.to_string(),
                Some(other) => {
                    return Err(invalid(format!(
                        "script_args[{}]: values {other} are not text",
                        i + 1
                    )))
                }
            };
            let dropdown = match arg(i + 2) {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
                Some(other) => {
                    return Err(invalid(format!(
                        "script_args[{}]: dropdown values {other} are not a list",
                        i + 2
                    )))
                }
            };
            Ok(AxisArg {
                axis,
                values,
                dropdown,
            })
        };
        let flag = |i: usize, default: bool| -> Result<bool, ScriptError> {
            match arg(i) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(Value::Number(n)) => Ok(n.as_f64().is_some_and(|v| v != 0.0)),
                Some(other) => Err(invalid(format!(
                    "script_args[{i}]: {other} is not true or false"
                ))),
            }
        };
        let margin_size = match arg(16) {
            None => 0,
            Some(value) => value
                .as_f64()
                .filter(|m| (0.0..=500.0).contains(m))
                .ok_or_else(|| {
                    invalid(format!(
                        "script_args[16]: grid margins {value} must be 0 to 500 pixels"
                    ))
                })? as u32,
        };
        if args.len() > 18 {
            return Err(invalid(format!(
                "script_args has {} values; the X/Y/Z plot takes 18",
                args.len()
            )));
        }
        Ok(XyzArgs {
            tab,
            axes: [axis_at(0, 1)?, axis_at(3, 0)?, axis_at(6, 0)?],
            draw_legend: flag(9, true)?,
            include_lone_images: flag(10, false)?,
            include_sub_grids: flag(11, false)?,
            no_fixed_seeds: flag(12, false)?,
            vary_seeds: [flag(13, false)?, flag(14, false)?, flag(15, false)?],
            margin_size,
            csv_mode: flag(17, false)?,
        })
    }
}

/// An argument error of this script.
pub(crate) fn invalid(message: String) -> ScriptError {
    ScriptError::InvalidArgs {
        script: TITLE,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn positional_args_as_a1111_lists_them() {
        let args = json!([
            4,
            "10,20",
            [],
            5,
            "5-9 (+2)",
            null,
            0,
            "",
            [],
            false,
            true,
            false,
            true,
            false,
            true,
            false,
            4,
            true
        ]);
        let parsed = XyzArgs::from_api(args.as_array().unwrap(), Tab::Img2img).unwrap();
        assert_eq!(parsed.axes[0].axis.label, "Steps");
        assert_eq!(parsed.axes[1].axis.label, "CFG Scale");
        assert_eq!(parsed.axes[1].values, "5-9 (+2)");
        assert_eq!(parsed.axes[2].axis.label, "Nothing");
        assert!(!parsed.draw_legend && parsed.include_lone_images && parsed.no_fixed_seeds);
        assert_eq!(parsed.vary_seeds, [false, true, false]);
        assert_eq!(parsed.margin_size, 4);
        assert!(parsed.csv_mode);
    }

    #[test]
    fn missing_args_are_the_ui_defaults_and_bad_ones_are_named() {
        let parsed = XyzArgs::from_api(&[], Tab::Txt2img).unwrap();
        assert_eq!(parsed.axes[0].axis.label, "Seed");
        assert!(parsed.draw_legend && !parsed.csv_mode);
        let error = XyzArgs::from_api(&[json!(99)], Tab::Txt2img).unwrap_err();
        assert!(error.to_string().contains("script_args[0]"), "{error}");
        let error = AxisArg::parse(Tab::Img2img, "Hires steps: 1,2").unwrap_err();
        assert!(
            error.to_string().contains("no axis \"Hires steps\""),
            "{error}"
        );
    }
}
