//! What `sdhost serve` would read: the config file, the models it names, the sampler plugins
//! and the interrogation category lists, each found by the code the daemon itself uses.

use std::path::{Path, PathBuf};

use super::{config_path, Check};
use crate::daemon::config::{config_dir, ServeConfig};
use crate::daemon::ModelCatalog;
use crate::sampling::plugins::{library_file_name, PluginPaths, SamplerRegistry, BUILTIN_PLUGIN};

/// The config file's line, and the settings to check the rest with (defaults when it does not
/// parse, so the other checks still run).
pub(super) fn config(explicit: Option<&Path>) -> (Check, ServeConfig) {
    let Some(path) = config_path(explicit) else {
        let looked = config_dir()
            .map(|d| d.join("config.toml").display().to_string())
            .unwrap_or_else(|| "~/.config/sdhost/config.toml".into());
        let detail = format!("none (defaults; sdhost serve reads {looked} when it exists)");
        return (Check::ok("config", detail), ServeConfig::default());
    };
    match ServeConfig::read(&path) {
        Ok(config) => (Check::ok("config", path.display().to_string()), config),
        Err(e) => (
            Check::problem(
                "config",
                e.to_string(),
                format!(
                    "correct {} (its keys are ServeConfig's: models_dir, model, device, dtype, \
                     socket, [limits], [interrogate] …) or move it away to use the defaults",
                    path.display()
                ),
            ),
            ServeConfig::default(),
        ),
    }
}

/// Which checkpoints the daemon would find, through its own catalog.
pub(super) fn models(config: &ServeConfig, config_file: &str) -> Vec<Check> {
    let set_models = format!(
        "set models_dir = \"/path/to/stable-diffusion-webui/models\" in {config_file}, or pass \
         --models-dir to sdhost serve"
    );
    if config.models_dir.is_none() && config.model.is_none() {
        return vec![Check::problem(
            "models",
            "no models_dir or model configured: the daemon serves a random-weight demo model \
             whose pictures are noise",
            set_models,
        )];
    }
    let mut checks = Vec::new();
    for (key, path) in [("model", &config.model), ("models_dir", &config.models_dir)] {
        if let Some(path) = path.as_deref().filter(|p| !p.exists()) {
            checks.push(Check::problem(
                "models",
                format!("{key} {} does not exist", path.display()),
                format!("correct {key} in {config_file}"),
            ));
        }
    }
    if !checks.is_empty() {
        return checks;
    }
    let catalog = ModelCatalog::scan(config.models_dir.as_deref(), config.model.as_deref());
    let names = catalog.names();
    let place = config
        .models_dir
        .as_deref()
        .or(config.model.as_deref())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match names.first() {
        None => vec![Check::problem(
            "models",
            format!("no checkpoints (*.safetensors, *.ckpt) in {place}"),
            format!(
                "put checkpoints in {place} (an A1111 models/ folder: models/Stable-diffusion), \
                 or {set_models}"
            ),
        )],
        Some(first) => vec![Check::ok(
            "models",
            format!(
                "{} checkpoint(s) in {place}; the daemon loads {}",
                names.len(),
                config
                    .model
                    .as_deref()
                    .map(|m| m.display().to_string())
                    .unwrap_or_else(|| first.clone())
            ),
        )],
    }
}

/// The built-in sampler plugin and the third-party ones, loaded as the daemon loads them.
pub(super) fn plugins(folder: Option<PathBuf>) -> Vec<Check> {
    let paths = PluginPaths::discover(folder);
    let registry = SamplerRegistry::load(&paths);
    let mut checks = Vec::new();
    let builtin = paths
        .builtin
        .as_ref()
        .and_then(|path| registry.plugins().iter().find(|p| &p.path == path));
    match (&paths.builtin, builtin) {
        (_, Some(plugin)) => checks.push(Check::ok(
            "samplers",
            format!(
                "built-in plugin {} {}: {} samplers ({})",
                plugin.name,
                plugin.version,
                plugin.samplers.len(),
                plugin.path.display()
            ),
        )),
        (Some(path), None) => checks.push(Check::problem(
            "samplers",
            format!("the built-in plugin {} did not load", path.display()),
            "rebuild and reinstall: `make install` in the sdhost clone (scripts/install)",
        )),
        (None, None) => checks.push(Check::problem(
            "samplers",
            format!(
                "the built-in plugin {} is not next to the sdhost executable",
                library_file_name(BUILTIN_PLUGIN)
            ),
            "reinstall: `make install` in the sdhost clone (scripts/install), which puts it \
             beside the binary",
        )),
    }
    let others: Vec<_> = registry
        .plugins()
        .iter()
        .filter(|p| Some(&p.path) != paths.builtin.as_ref())
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    if let Some(folder) = &paths.folder {
        let listed = if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        };
        checks.push(Check::ok(
            "samplers",
            format!("third-party plugins in {}: {listed}", folder.display()),
        ));
    }
    for skipped in &registry.skipped {
        checks.push(Check::problem(
            "samplers",
            format!("skipped: {skipped}"),
            "rebuild that plugin against this sdhost's plugin API (sdhost-plugin-api), or \
             remove it from the plugins folder",
        ));
    }
    checks
}

/// Interrogate CLIP's category lists, found where the daemon finds them.
pub(super) fn interrogate_lists(config: &ServeConfig) -> Vec<Check> {
    let fix = "run `make setup` in the sdhost clone (scripts/setup installs clip-interrogator's \
               lists into $XDG_DATA_HOME/sdhost/interrogate), or set interrogate_dir under \
               [interrogate] in the config";
    let check = match config.interrogate_files().categories_dir() {
        Ok(dir) => {
            let lists = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
                        .count()
                })
                .unwrap_or(0);
            if lists == 0 {
                Check::problem(
                    "interrogate lists",
                    format!("no *.txt in {}", dir.display()),
                    fix,
                )
            } else {
                Check::ok("interrogate lists", format!("{lists} in {}", dir.display()))
            }
        }
        Err(missing) => {
            let looked: Vec<String> = missing
                .expected
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let detail = format!("not found; looked in {}", looked.join(", "));
            Check::problem("interrogate lists", detail, fix)
        }
    };
    vec![check]
}
