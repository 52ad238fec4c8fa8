//! The daemon's settings: a TOML file (`$XDG_CONFIG_HOME/sdhost/config.toml` or `--config`)
//! overridden by command-line flags, and the per-user paths it uses.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::extra_networks::dirs::{ModelFolders, NetworkDirs};
use crate::interrogate::InterrogateFiles;

/// Settings of `sdhost serve`; every field is optional in the file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// TCP address to listen on as well (`127.0.0.1:7861`); clients need the token.
    pub listen: Option<String>,
    /// The checkpoint loaded at start.
    pub model: Option<PathBuf>,
    /// An A1111 `models/` folder (`Stable-diffusion/`, `embeddings/` …) or any folder of
    /// checkpoints.
    pub models_dir: Option<PathBuf>,
    /// Textual-inversion embeddings (default: `embeddings/` next to or inside `models_dir`).
    pub embeddings_dir: Option<PathBuf>,
    /// LoRA files instead of `models_dir`'s `Lora/` (its `LyCORIS/` stays).
    pub lora_dir: Option<PathBuf>,
    /// A1111 hypernetworks for `<hypernet:…>`, instead of `models_dir`'s `hypernetworks/`.
    pub hypernetwork_dir: Option<PathBuf>,
    /// VAE files, searched after `models_dir`'s `VAE/`.
    pub vae_dir: Option<PathBuf>,
    /// Third-party sampler plugins.
    pub plugins_dir: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N.
    pub device: Option<String>,
    /// Compute dtype: fp32, fp16, bf16.
    pub dtype: Option<String>,
    /// libtorch intra-op threads (0: its default).
    pub threads: Option<i32>,
    /// Serve A1111's HTTP API on this `HOST:PORT` as well (`--api`: 127.0.0.1:7860).
    pub api_addr: Option<String>,
    /// HTTP Basic credentials of the API, `user:pass[,user2:pass2]` (A1111's `--api-auth`);
    /// required when `api_addr` is not a loopback address.
    pub api_auth: Option<String>,
    /// Origins allowed to call the API from a browser, `a,b` (A1111's
    /// `--cors-allow-origins`; none: no CORS).
    pub cors_allow_origins: Option<String>,
    /// How many checkpoints stay loaded, the one in use counted (A1111's
    /// `sd_checkpoints_limit`, 1 … 10; default 1): switching to a loaded one is immediate.
    pub checkpoints_limit: Option<usize>,
    /// Most images in one batch of queued jobs run together (jobs that differ only in
    /// prompts, seeds and batch size share every UNet call; 1: each job alone; default 8 on
    /// CUDA, 1 on the CPU, where a larger batch gains little and delays the first job).
    pub joint_batch: Option<usize>,
    /// Limits on what a client may ask.
    #[serde(default)]
    pub limits: Limits,
    /// Where the interrogation models are (`[interrogate]`: `blip_model`, `bert_vocab`,
    /// `clip_model`, `clip_models_path`, `interrogate_dir`, `deepdanbooru_model`), each
    /// overriding what `models_dir` gives.
    #[serde(default)]
    pub interrogate: InterrogateFiles,
}

/// What one request may ask for, and how many clients may be connected.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame payload in bytes (all attachments).
    pub max_frame_bytes: u64,
    /// Largest image (input or output) in pixels.
    pub max_pixels: u64,
    /// Most images per job (batch count × batch size).
    pub max_images: usize,
    /// Longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Most jobs waiting at once (over all clients).
    pub queue_capacity: usize,
    /// Most connections open at once; one more gets an error `limit` and is closed. Not sent
    /// to clients (`welcome` tells per-request limits): a client can do nothing with it.
    #[serde(skip_serializing)]
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 256 << 20,
            max_pixels: 4096 * 4096,
            max_images: 64,
            max_prompt_chars: 20_000,
            queue_capacity: 64,
            // Editors hold one connection each; a few dozen covers scripts beside them while
            // a runaway client cannot take every thread and file descriptor.
            max_connections: 64,
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl ServeConfig {
    /// The model folders these settings name.
    pub fn folders(&self) -> ModelFolders {
        ModelFolders {
            models_dir: self.models_dir.clone(),
            embeddings_dir: self.embeddings_dir.clone(),
            lora_dir: self.lora_dir.clone(),
            hypernetwork_dir: self.hypernetwork_dir.clone(),
            vae_dir: self.vae_dir.clone(),
        }
    }

    /// Where the interrogation files are: the `[interrogate]` settings over `models_dir`.
    pub fn interrogate_files(&self) -> InterrogateFiles {
        InterrogateFiles {
            models_dir: self.models_dir.clone(),
            ..self.interrogate.clone()
        }
    }

    /// The folders of `models_dir`'s A1111 layout, each replaced or joined by its own setting.
    pub fn network_dirs(&self) -> NetworkDirs {
        self.folders().network_dirs()
    }

    /// Reads a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The file named by `--config`, else the per-user file when it exists, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match explicit {
            Some(path) => Self::read(path),
            None => match config_dir().map(|d| d.join("config.toml")) {
                Some(path) if path.exists() => Self::read(&path),
                _ => Ok(Self::default()),
            },
        }
    }
}

use crate::user_dirs::env_dir;
pub use crate::user_dirs::{config_dir, data_dir};

/// The default socket: `$XDG_RUNTIME_DIR/sdhost/sdhost.sock`, else
/// `/tmp/sdhost-<uid>/sdhost.sock`.
pub fn default_socket() -> PathBuf {
    let dir = env_dir("XDG_RUNTIME_DIR")
        .map(|d| d.join("sdhost"))
        .unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir().join(format!("sdhost-{uid}"))
        });
    dir.join("sdhost.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_parse_and_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "models_dir = \"/srv/webui/models\"\nvae_dir = \"/srv/vae\"\ndevice = \"cuda\"\n[limits]\nmax_images = 8\nmax_connections = 3\n",
        )
        .unwrap();
        let config = ServeConfig::read(&path).unwrap();
        assert_eq!(config.models_dir, Some(PathBuf::from("/srv/webui/models")));
        assert_eq!(config.vae_dir, Some(PathBuf::from("/srv/vae")));
        assert_eq!(config.folders().network_dirs().vae.len(), 2);
        assert_eq!(config.limits.max_images, 8);
        assert_eq!(config.limits.max_connections, 3);
        assert_eq!(
            config.limits.queue_capacity,
            Limits::default().queue_capacity
        );
        assert_eq!(
            config.network_dirs().lora,
            [
                PathBuf::from("/srv/webui/models/Lora"),
                PathBuf::from("/srv/webui/models/LyCORIS")
            ]
        );
        assert_eq!(
            config.network_dirs().hypernetworks,
            [PathBuf::from("/srv/webui/models/hypernetworks")]
        );
        let own = ServeConfig {
            hypernetwork_dir: Some("/data/hn".into()),
            ..config
        };
        assert_eq!(
            own.network_dirs().hypernetworks,
            [PathBuf::from("/data/hn")]
        );
        std::fs::write(&path, "modle = \"x\"\n").unwrap();
        let error = ServeConfig::read(&path).unwrap_err().to_string();
        assert!(error.contains("modle"), "{error}");
    }
}
