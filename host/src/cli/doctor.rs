//! `sdhost doctor`: the installation checks of `crate::doctor`, printed one line each, with
//! exit status 1 when any found a problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::doctor::{diagnose, DoctorOptions};

/// Arguments of `sdhost doctor`.
#[derive(Args)]
pub struct DoctorArgs {
    /// Config file, as for `sdhost serve` [default: $XDG_CONFIG_HOME/sdhost/config.toml when
    /// it exists].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The daemon's socket [default: the config's, else $XDG_RUNTIME_DIR/sdhost/sdhost.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Folder of third-party sampler plugins [default: the config's, else
    /// $SDHOST_PLUGINS_DIR or ~/.local/share/sdhost/plugins].
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Print the report as JSON ({"ok", "checks": [{"name", "status", "detail", "fix"}]}).
    #[arg(long)]
    json: bool,
}

/// Prints the report; the exit status says whether there were problems.
pub fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = diagnose(&DoctorOptions {
        config: args.config.clone(),
        socket: args.socket.clone(),
        plugins_dir: args.plugins_dir.clone(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
