//! Putting an external VAE into a loaded model and taking it out again (A1111 `sd_vae.load_vae`,
//! `store_base_vae`, `restore_base_vae`): the checkpoint's own autoencoder is kept aside while an
//! external one runs, so switching back costs nothing and never rereads the checkpoint; the
//! external VAE last taken out is kept too, by path, so alternating between two is free.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tch::{Device, Kind};

use super::file::load_vae_file;
use super::list::{vae_name, VaeResolution};
use super::VaeError;
use crate::checkpoint::{default_cache_dir, ModelHashes};
use crate::models::vae::AutoencoderKl;

/// An external VAE file in use, as the infotext names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalVae {
    /// Its file.
    pub path: PathBuf,
    /// Infotext `VAE`: the file name with its extension.
    pub name: String,
    /// Infotext `VAE hash`: the first 10 hex characters of its sha256.
    pub hash: String,
}

/// Size and modification time: a file changed on disk is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp(u64, Option<SystemTime>);

impl FileStamp {
    fn of(path: &Path) -> Self {
        let meta = std::fs::metadata(path).ok();
        FileStamp(
            meta.as_ref().map_or(0, |m| m.len()),
            meta.and_then(|m| m.modified().ok()),
        )
    }
}

/// A loaded external VAE with where it came from.
struct Loaded {
    info: ExternalVae,
    stamp: FileStamp,
    vae: AutoencoderKl,
}

/// Which autoencoder a model runs with, and the ones kept aside.
#[derive(Default)]
pub struct VaeSwap {
    /// The checkpoint's own autoencoder while an external one is in the model.
    own: Option<AutoencoderKl>,
    /// The external VAE in the model, if any.
    active: Option<(ExternalVae, FileStamp)>,
    /// The external VAE taken out last.
    cached: Option<Loaded>,
}

impl VaeSwap {
    /// The external VAE in use (none: the checkpoint's own).
    pub fn active(&self) -> Option<&ExternalVae> {
        self.active.as_ref().map(|(info, _)| info)
    }

    /// Makes `model_vae` (the model's autoencoder slot) the one `resolution` names. A file is
    /// read, checked and hashed before anything changes, so a bad file leaves the model as it
    /// was.
    pub fn apply(
        &mut self,
        model_vae: &mut AutoencoderKl,
        resolution: &VaeResolution,
        kind: Kind,
        device: Device,
    ) -> Result<(), VaeError> {
        match resolution {
            VaeResolution::Own { .. } => {
                if let (Some(own), Some((info, stamp))) = (self.own.take(), self.active.take()) {
                    let vae = std::mem::replace(model_vae, own);
                    self.cached = Some(Loaded { info, stamp, vae });
                }
                Ok(())
            }
            VaeResolution::File { path, .. } => {
                if self.active().is_some_and(|a| a.path == *path) {
                    return Ok(());
                }
                let incoming = self.take_or_load(path, model_vae, kind, device)?;
                let outgoing = std::mem::replace(model_vae, incoming.vae);
                match self.active.take() {
                    Some((info, stamp)) => {
                        self.cached = Some(Loaded {
                            info,
                            stamp,
                            vae: outgoing,
                        })
                    }
                    None => self.own = Some(outgoing),
                }
                self.active = Some((incoming.info, incoming.stamp));
                Ok(())
            }
        }
    }

    /// The cached VAE of `path` when the file is unchanged, else the file read afresh.
    fn take_or_load(
        &mut self,
        path: &Path,
        like: &AutoencoderKl,
        kind: Kind,
        device: Device,
    ) -> Result<Loaded, VaeError> {
        let stamp = FileStamp::of(path);
        if let Some(cached) = self.cached.take() {
            if cached.info.path == path && cached.stamp == stamp {
                return Ok(cached);
            }
            self.cached = Some(cached);
        }
        let vae = load_vae_file(path, like.config(), kind, device)?;
        let hashes =
            ModelHashes::cached(path, default_cache_dir().as_deref()).map_err(|source| {
                VaeError::Hash {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Ok(Loaded {
            info: ExternalVae {
                path: path.to_path_buf(),
                name: vae_name(path),
                hash: hashes.short().to_string(),
            },
            stamp,
            vae,
        })
    }
}
