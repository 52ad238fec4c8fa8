//! `sdhost samplers`: every loaded sampler with its default schedule and its plugin.

use std::path::PathBuf;

use clap::Args;
use sdhost_plugin_api::{OptionValue, ScheduleInput};

use crate::sampling::plan::LCM_SCHEDULE;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::sampling::schedule::Schedule;

/// Arguments of `sdhost samplers`.
#[derive(Args)]
pub struct SamplersArgs {
    /// Folder of third-party sampler plugins [default: $SDHOST_PLUGINS_DIR or
    /// ~/.local/share/sdhost/plugins].
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Also list each sampler's options with defaults.
    #[arg(long)]
    options: bool,
}

/// Lists the samplers; libraries that failed to load are reported after the list.
pub fn run(args: &SamplersArgs) -> anyhow::Result<()> {
    let paths = PluginPaths::discover(args.plugins_dir.clone());
    let registry = SamplerRegistry::load(&paths);
    if paths.builtin.is_none() {
        eprintln!(
            "warning: the built-in sampler plugin ({}) was not found next to sdhost",
            crate::sampling::plugins::library_file_name(crate::sampling::plugins::BUILTIN_PLUGIN)
        );
    }
    let rows: Vec<[String; 4]> = registry
        .samplers()
        .map(|found| {
            let info = found.info;
            let schedule = match (info.input, info.default_schedule.as_ref().into_option()) {
                (ScheduleInput::Timesteps, _) => "DDIM timesteps".to_string(),
                (_, Some(name)) if name.as_str() == LCM_SCHEDULE => "LCM's own".to_string(),
                (_, Some(name)) => Schedule::from_name(name.as_str())
                    .map(|s| s.label().to_string())
                    .unwrap_or_else(|_| format!("{name} (unknown to this sdhost)")),
                (_, None) => "Automatic (Uniform)".to_string(),
            };
            let aliases: Vec<&str> = info.aliases.iter().map(|a| a.as_str()).collect();
            [
                info.name.to_string(),
                schedule,
                found.plugin.name.clone(),
                aliases.join(", "),
            ]
        })
        .collect();
    let header = ["SAMPLER", "DEFAULT SCHEDULE", "PLUGIN", "ALIASES"];
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 4]| {
        let text = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        println!("{}", text.trim_end());
    };
    line(header);
    for (row, found) in rows.iter().zip(registry.samplers()) {
        line([&row[0], &row[1], &row[2], &row[3]]);
        if args.options {
            for option in found.info.options.iter() {
                let default = match &option.default {
                    OptionValue::Number(n) => n.to_string(),
                    OptionValue::Text(t) => t.to_string(),
                };
                println!("    {} = {}  ({})", option.name, default, option.help);
            }
        }
    }
    println!();
    for plugin in registry.plugins() {
        println!(
            "plugin {} {}: {}",
            plugin.name,
            plugin.version,
            plugin.path.display()
        );
    }
    for skipped in &registry.skipped {
        eprintln!("skipped: {skipped}");
    }
    Ok(())
}
