//! Loading sampler plugins and running their samplers.
//!
//! Every sampler, ours included, comes from a dynamic library loaded here: the built-in set is
//! `libsdhost_samplers` next to the executable, third-party ones come from the plugins folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sdhost_plugin_api::abi::{
    HostErrorKind, Host_TO, OptionValue, PluginErrorKind, SampleJob, SamplerInfo, SamplerPluginRef,
};
use sdhost_plugin_api::abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use sdhost_plugin_api::abi_stable::sabi_trait::TD_Opaque;
use sdhost_plugin_api::abi_stable::sabi_types::{VersionNumber, VersionStrings};
use sdhost_plugin_api::abi_stable::std_types::{RStr, Tuple2};
use sdhost_plugin_api::abi_stable::RMut;
use sdhost_plugin_api::Flow;
use tch::Tensor;

use super::session::{Denoise, Noise, Session, StepReport};

/// The file name stem of the built-in sampler plugin.
pub const BUILTIN_PLUGIN: &str = "sdhost_samplers";

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// The file is not a loadable dynamic library.
    #[error("{path}: cannot be loaded as a dynamic library: {reason}")]
    NotALibrary { path: PathBuf, reason: String },
    /// A dynamic library without the sdhost root module.
    #[error("{path}: not an sdhost sampler plugin (it exports no sdhost root module)")]
    NotAPlugin { path: PathBuf },
    /// Built against another version of sdhost-plugin-api.
    #[error(
        "{path}: built for sdhost plugin API {plugin}, this sdhost has plugin API {host}; \
         rebuild the plugin against sdhost-plugin-api {host}"
    )]
    VersionMismatch {
        path: PathBuf,
        plugin: String,
        host: String,
    },
    /// Same version number, but the types differ (or another abi_stable).
    #[error("{path}: its plugin ABI does not match this sdhost's: {detail}")]
    AbiMismatch { path: PathBuf, detail: String },
    /// The plugin failed while initialising.
    #[error("{path}: failed to initialise: {detail}")]
    Init { path: PathBuf, detail: String },
}

/// A sampling failure, named after the plugin and sampler where it happened.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// No loaded plugin offers a sampler of that name.
    #[error("unknown sampler \"{name}\"; available: {available}")]
    UnknownSampler { name: String, available: String },
    /// The job set an option the sampler does not declare, or with the wrong type.
    #[error("sampler {sampler}: {message}")]
    BadOption { sampler: String, message: String },
    /// The user cancelled the job.
    #[error("cancelled")]
    Cancelled,
    /// The device ran out of memory.
    #[error("out of memory while sampling with {sampler}: {message}")]
    OutOfMemory { sampler: String, message: String },
    /// The sampler panicked; the plugin's boundary caught it.
    #[error("sampler {sampler} of plugin {plugin} crashed: {message}")]
    Panic {
        plugin: String,
        sampler: String,
        message: String,
    },
    /// Another failure inside the sampler or the model.
    #[error("sampler {sampler} of plugin {plugin} failed: {message}")]
    Failed {
        plugin: String,
        sampler: String,
        message: String,
    },
}

/// One loaded plugin library.
pub struct LoadedPlugin {
    /// The library file.
    pub path: PathBuf,
    /// The plugin's own name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The samplers it offers.
    pub samplers: Vec<SamplerInfo>,
    module: SamplerPluginRef,
}

impl LoadedPlugin {
    /// Loads and checks one plugin library (it stays mapped for the life of the process).
    pub fn load(path: &Path) -> Result<Self, PluginLoadError> {
        let header = lib_header_from_path(path).map_err(|e| load_error(path, e))?;
        check_api_version(path, header.version_strings())?;
        let module = header
            .init_root_module::<SamplerPluginRef>()
            .map_err(|e| load_error(path, e))?;
        Ok(LoadedPlugin {
            path: path.to_path_buf(),
            name: (module.name())().into_string(),
            version: (module.version())().into_string(),
            samplers: (module.samplers())().into_vec(),
            module,
        })
    }
}

/// Plugins must be built against the same plugin API release line as the host: the same
/// minor version for 0.x (each ABI change bumps it), the same major version after 1.0.
/// abi_stable alone would also accept a newer minor and then fail on the layout, with a
/// report of several hundred lines.
fn check_api_version(path: &Path, plugin: VersionStrings) -> Result<(), PluginLoadError> {
    let mismatch = |plugin: String| PluginLoadError::VersionMismatch {
        path: path.to_path_buf(),
        plugin,
        host: SamplerPluginRef::VERSION_STRINGS.version.to_string(),
    };
    let shown = plugin.version.to_string();
    let (Ok(host), Ok(found)) = (
        VersionNumber::new(SamplerPluginRef::VERSION_STRINGS),
        VersionNumber::new(plugin),
    ) else {
        return Err(mismatch(shown));
    };
    let compatible = if host.major == 0 {
        found.major == 0 && found.minor == host.minor
    } else {
        found.major == host.major
    };
    if compatible {
        Ok(())
    } else {
        Err(mismatch(shown))
    }
}

/// The few lines of abi_stable's layout report that say what differs.
fn layout_summary(report: &str) -> String {
    let lines: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let summary: Vec<&str> = lines
        .iter()
        .position(|l| l.starts_with("Error:"))
        .map(|start| lines[start..].iter().take(5).copied().collect())
        .unwrap_or_else(|| lines.iter().take(5).copied().collect());
    summary.join(" ")
}

fn load_error(path: &Path, error: LibraryError) -> PluginLoadError {
    let path = path.to_path_buf();
    match error {
        LibraryError::OpenError { err, .. } => PluginLoadError::NotALibrary {
            path,
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => PluginLoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => PluginLoadError::VersionMismatch {
            path,
            plugin: actual_version.to_string(),
            host: expected_version.to_string(),
        },
        LibraryError::RootModule { err, .. } => PluginLoadError::Init {
            path,
            detail: err.to_string(),
        },
        other => PluginLoadError::AbiMismatch {
            path,
            detail: layout_summary(&other.to_string()),
        },
    }
}

/// Where plugins are looked for.
#[derive(Debug, Clone)]
pub struct PluginPaths {
    /// The built-in sampler library, if found.
    pub builtin: Option<PathBuf>,
    /// The folder of third-party plugins.
    pub folder: Option<PathBuf>,
}

impl PluginPaths {
    /// The built-in plugin next to the executable, and `folder` or the default plugins folder
    /// (`$SDHOST_PLUGINS_DIR`, else `$XDG_DATA_HOME/sdhost/plugins`, else
    /// `~/.local/share/sdhost/plugins`).
    pub fn discover(folder: Option<PathBuf>) -> Self {
        PluginPaths {
            builtin: builtin_plugin_path(),
            folder: folder.or_else(default_plugins_folder),
        }
    }
}

/// The library file name of a plugin stem on this platform (`libX.so`, `X.dll`, `libX.dylib`).
pub fn library_file_name(stem: &str) -> String {
    format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn builtin_plugin_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let name = library_file_name(BUILTIN_PLUGIN);
    // Test binaries live one level below the libraries, in target/<profile>/deps.
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(&name))
        .find(|p| p.is_file());
    found
}

fn default_plugins_folder() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SDHOST_PLUGINS_DIR") {
        return Some(PathBuf::from(dir));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("sdhost/plugins"))
}

/// The loaded plugins and the samplers they offer.
#[derive(Default)]
pub struct SamplerRegistry {
    plugins: Vec<LoadedPlugin>,
    /// Libraries that were found but could not be loaded.
    pub skipped: Vec<PluginLoadError>,
}

/// A sampler found by name, with the plugin that offers it.
#[derive(Clone, Copy)]
pub struct FoundSampler<'r> {
    /// The plugin.
    pub plugin: &'r LoadedPlugin,
    /// The sampler's description.
    pub info: &'r SamplerInfo,
}

/// Everything a sampler needs besides the model and noise.
pub struct SampleRequest {
    /// The starting latent at `sigmas[0]`.
    pub x: Tensor,
    /// Decreasing noise levels.
    pub sigmas: Vec<f64>,
    /// Model timesteps for timestep samplers, else empty.
    pub timesteps: Vec<f64>,
    /// The model's ᾱ_t.
    pub alphas_cumprod: Vec<f64>,
    /// Options set by the job.
    pub options: Vec<(String, OptionValue)>,
    /// The job's cancel flag: once set, the sampler's next model call, noise draw or step
    /// fails as cancelled, also in samplers that never report a step.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl SamplerRegistry {
    /// Loads the built-in plugin and every library in the plugins folder.
    ///
    /// Files that fail to load are kept in [`Self::skipped`] with the reason; a missing
    /// folder is not an error.
    pub fn load(paths: &PluginPaths) -> Self {
        let mut registry = SamplerRegistry::default();
        if let Some(builtin) = &paths.builtin {
            registry.add_file(builtin);
        }
        if let Some(folder) = &paths.folder {
            registry.add_folder(folder);
        }
        registry
    }

    /// Loads every dynamic library in `folder`, in name order.
    pub fn add_folder(&mut self, folder: &Path) {
        let Ok(entries) = std::fs::read_dir(folder) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name().is_some_and(|n| {
                        n.to_string_lossy().ends_with(std::env::consts::DLL_SUFFIX)
                    })
            })
            .collect();
        files.sort();
        for file in files {
            self.add_file(&file);
        }
    }

    /// Loads one library; failures go to [`Self::skipped`].
    pub fn add_file(&mut self, path: &Path) -> bool {
        match LoadedPlugin::load(path) {
            Ok(plugin) => {
                self.plugins.push(plugin);
                true
            }
            Err(error) => {
                self.skipped.push(error);
                false
            }
        }
    }

    /// The loaded plugins, in load order (the built-in one first).
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// Every sampler, in plugin order; a name offered twice resolves to the first.
    pub fn samplers(&self) -> impl Iterator<Item = FoundSampler<'_>> {
        self.plugins.iter().flat_map(|plugin| {
            plugin
                .samplers
                .iter()
                .map(move |info| FoundSampler { plugin, info })
        })
    }

    /// The sampler with this name or alias (case-insensitive).
    pub fn find(&self, name: &str) -> Result<FoundSampler<'_>, SamplingError> {
        let wanted = name.trim();
        self.samplers()
            .find(|found| {
                found.info.name.as_str().eq_ignore_ascii_case(wanted)
                    || found
                        .info
                        .aliases
                        .iter()
                        .any(|alias| alias.as_str().eq_ignore_ascii_case(wanted))
            })
            .ok_or_else(|| SamplingError::UnknownSampler {
                name: name.to_string(),
                available: self
                    .samplers()
                    .map(|f| f.info.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Runs a sampler over the model and noise of a job; returns the final latent.
    pub fn sample(
        &self,
        sampler: FoundSampler<'_>,
        request: SampleRequest,
        denoiser: &mut dyn Denoise,
        noise: &mut dyn Noise,
        on_step: &mut dyn FnMut(StepReport<'_>) -> Flow,
    ) -> Result<Tensor, SamplingError> {
        let sampler_name = sampler.info.name.to_string();
        check_options(sampler.info, &request.options)?;
        let mut session = Session::new(request.x.device(), denoiser, noise, on_step);
        if let Some(flag) = request.cancel {
            session.cancel_when_set(flag);
        }
        let shape = request.x.size();
        let x = session.insert(request.x);
        let outcome = {
            let job = SampleJob {
                host: Host_TO::from_ptr(RMut::new(&mut session), TD_Opaque),
                x,
                sigmas: request.sigmas.into(),
                timesteps: request.timesteps.into(),
                alphas_cumprod: request.alphas_cumprod.into(),
                options: request
                    .options
                    .into_iter()
                    .map(|(name, value)| Tuple2(name.into(), value))
                    .collect(),
            };
            (sampler.plugin.module.sample())(RStr::from(sampler_name.as_str()), job)
        };
        let plugin = sampler.plugin.name.clone();
        match outcome.into_result() {
            Ok(result) => {
                let failed = |message: String| SamplingError::Failed {
                    plugin: plugin.clone(),
                    sampler: sampler_name.clone(),
                    message,
                };
                let latent = session.take(result).ok_or_else(|| {
                    failed("returned a tensor handle the host does not know".into())
                })?;
                check_result(&latent, &shape).map_err(failed)?;
                Ok(latent)
            }
            Err(error) => {
                let message = error.message.into_string();
                Err(match (error.kind, error.host_kind.into_option()) {
                    (_, Some(HostErrorKind::Cancelled)) => SamplingError::Cancelled,
                    (_, Some(HostErrorKind::OutOfMemory)) => SamplingError::OutOfMemory {
                        sampler: sampler_name,
                        message,
                    },
                    (PluginErrorKind::Panic, _) => SamplingError::Panic {
                        plugin,
                        sampler: sampler_name,
                        message,
                    },
                    (PluginErrorKind::BadOption, _) => SamplingError::BadOption {
                        sampler: sampler_name,
                        message,
                    },
                    _ => SamplingError::Failed {
                        plugin,
                        sampler: sampler_name,
                        message,
                    },
                })
            }
        }
    }
}

/// Refuses a sampler's result that is not a latent of the input's shape with finite values:
/// decoded, NaN or infinity would become a black or garbage image reported as done (A1111
/// raises its `NansException` here too).
fn check_result(latent: &Tensor, shape: &[i64]) -> Result<(), String> {
    if latent.size() != shape {
        return Err(format!(
            "returned a latent of shape {:?}, not the input's {shape:?}",
            latent.size()
        ));
    }
    let finite = latent
        .f_isfinite()
        .and_then(|t| t.f_all())
        .and_then(|t| t.f_int64_value(&[]))
        .map_err(|e| format!("its result could not be checked: {e}"))?;
    if finite != 1 {
        return Err("returned a latent with NaN or infinite values".into());
    }
    Ok(())
}

/// Refuses options the sampler does not declare, or of the wrong kind, before it runs.
fn check_options(
    info: &SamplerInfo,
    options: &[(String, OptionValue)],
) -> Result<(), SamplingError> {
    for (name, value) in options {
        let Some(declared) = info.options.iter().find(|o| o.name.as_str() == name) else {
            let known: Vec<&str> = info.options.iter().map(|o| o.name.as_str()).collect();
            return Err(SamplingError::BadOption {
                sampler: info.name.to_string(),
                message: format!(
                    "unknown option \"{name}\" (it accepts: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        };
        let same_kind = matches!(
            (&declared.default, value),
            (OptionValue::Number(_), OptionValue::Number(_))
                | (OptionValue::Text(_), OptionValue::Text(_))
        );
        if !same_kind {
            return Err(SamplingError::BadOption {
                sampler: info.name.to_string(),
                message: format!(
                    "option \"{name}\" takes a {}",
                    match declared.default {
                        OptionValue::Number(_) => "number",
                        OptionValue::Text(_) => "word",
                    }
                ),
            });
        }
    }
    Ok(())
}
