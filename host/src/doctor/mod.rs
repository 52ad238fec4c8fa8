//! `sdhost doctor`: checks an installation one part at a time (libtorch and CUDA, the device,
//! the config file, models, sampler plugins, the GIMP plug-in, the interrogation lists, the
//! daemon) and says, for each problem, the command or setting that fixes it. Every check
//! reports instead of failing, so the report is complete on a machine with nothing set up.

mod daemon;
mod gimp;
mod libtorch;
mod settings;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::daemon::config::config_dir;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works as it is.
    Ok,
    /// Needs the fix the check names.
    Problem,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked ("libtorch", "models" …).
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// For a problem: what to run or change.
    pub fix: Option<String>,
}

impl Check {
    /// A check that passed.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A problem and its fix.
    pub fn problem(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Problem,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What the doctor looks at besides the per-user defaults (the flags of `sdhost doctor`).
#[derive(Debug, Clone, Default)]
pub struct DoctorOptions {
    /// The config file, as `sdhost serve --config` takes it.
    pub config: Option<PathBuf>,
    /// The daemon's socket, as `sdhost serve --socket` takes it.
    pub socket: Option<PathBuf>,
    /// The third-party plugins folder, as `sdhost serve --plugins-dir` takes it.
    pub plugins_dir: Option<PathBuf>,
}

/// Every check in order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when no check found a problem.
    pub ok: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// The problems found.
    pub fn problems(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Problem)
            .count()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "ok",
                Status::Problem => "problem",
            };
            writeln!(f, "{status:<7}  {:<width$}  {}", check.name, check.detail)?;
            if let Some(fix) = &check.fix {
                writeln!(f, "{:<7}  {:<width$}  fix: {fix}", "", "")?;
            }
        }
        match self.problems() {
            0 => writeln!(f, "no problems found"),
            1 => writeln!(f, "1 problem found"),
            n => writeln!(f, "{n} problems found"),
        }
    }
}

/// The config file `sdhost serve` would read with these options (none: defaults only).
fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => config_dir()
            .map(|d| d.join("config.toml"))
            .filter(|p| p.exists()),
    }
}

/// Where a setting goes: the config file in use, else the per-user one to create.
fn config_target(explicit: Option<&Path>) -> String {
    config_path(explicit)
        .or_else(|| config_dir().map(|d| d.join("config.toml")))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.config/sdhost/config.toml".into())
}

/// Runs one check; a panic inside it (tch raises libtorch errors as panics) becomes a problem
/// line, so the report always completes.
fn guarded(name: &'static str, check: impl FnOnce() -> Vec<Check>) -> Vec<Check> {
    catch_unwind(AssertUnwindSafe(check)).unwrap_or_else(|payload| {
        let message = crate::error::panic_message(payload.as_ref());
        vec![Check::problem(
            name,
            format!("the check failed: {message}"),
            "report this as an sdhost bug, with the output of `sdhost doctor`",
        )]
    })
}

/// Runs every check.
pub fn diagnose(options: &DoctorOptions) -> Report {
    let mut checks = vec![own_binary()];
    checks.extend(guarded("libtorch", libtorch::check));
    let (config_check, config) = settings::config(options.config.as_deref());
    checks.push(config_check);
    let target = config_target(options.config.as_deref());
    checks.extend(guarded("device", || libtorch::device(&config, &target)));
    checks.extend(guarded("models", || settings::models(&config, &target)));
    checks.extend(guarded("samplers", || {
        settings::plugins(options.plugins_dir.clone().or(config.plugins_dir.clone()))
    }));
    checks.extend(guarded("gimp plug-in", gimp::check));
    checks.extend(guarded("interrogate lists", || {
        settings::interrogate_lists(&config)
    }));
    let socket = options.socket.clone().or(config.socket.clone());
    checks.extend(guarded("daemon", || daemon::check(socket)));
    Report {
        ok: checks.iter().all(|c| c.status == Status::Ok),
        checks,
    }
}

/// Which sdhost is answering, and from where.
fn own_binary() -> Check {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(its path is unknown: {e})"));
    Check::ok("sdhost", format!("{} at {exe}", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_print_their_fix_under_them() {
        let report = Report {
            ok: false,
            checks: vec![
                Check::ok("config", "none"),
                Check::problem("models", "none configured", "set models_dir"),
            ],
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok       config  none");
        assert_eq!(lines[1], "problem  models  none configured");
        assert_eq!(lines[2], "                 fix: set models_dir");
        assert_eq!(lines[3], "1 problem found");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][1]["status"], "problem");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
    }

    #[test]
    fn a_panicking_check_becomes_a_problem() {
        let checks = guarded("cuda", || panic!("no driver"));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Problem);
        assert!(checks[0].detail.contains("no driver"), "{:?}", checks[0]);
    }
}
