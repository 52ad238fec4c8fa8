//! Where extra-network files are looked for: the folders of an A1111 `models/` tree
//! (`Lora/`, `LyCORIS/`, `hypernetworks/`, `VAE/`; the upscaler models of `ESRGAN/`,
//! `RealESRGAN/`, `SwinIR/`, `DAT/`), each replaceable by its own flag.

use std::path::{Path, PathBuf};

use crate::upscale::UpscalerDirs;

/// The folders each kind of extra network is searched in, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkDirs {
    /// LoRA and LyCORIS files (`models/Lora`, `models/LyCORIS`).
    pub lora: Vec<PathBuf>,
    /// Hypernetworks (`models/hypernetworks`).
    pub hypernetworks: Vec<PathBuf>,
    /// VAE files (`models/VAE`).
    pub vae: Vec<PathBuf>,
    /// Checkpoint folders, where `*.vae.*` files beside checkpoints are VAE candidates too
    /// (`models/Stable-diffusion`).
    pub checkpoints: Vec<PathBuf>,
    /// Upscaler models by A1111 upscaler class (`models/ESRGAN`, `models/RealESRGAN`,
    /// `models/SwinIR`, `models/DAT`), for Hires. fix and the extras.
    pub upscalers: UpscalerDirs,
}

impl NetworkDirs {
    /// The folders of an A1111 `models/` tree (missing ones are searched as empty).
    pub fn from_models_dir(models: &Path) -> Self {
        Self {
            lora: vec![models.join("Lora"), models.join("LyCORIS")],
            hypernetworks: vec![models.join("hypernetworks")],
            vae: vec![models.join("VAE")],
            checkpoints: vec![models.join("Stable-diffusion")],
            upscalers: UpscalerDirs::from_models_dir(models),
        }
    }
}

/// A1111's checkpoint folder inside `models/`.
pub const CHECKPOINT_FOLDER: &str = "Stable-diffusion";

/// The folders a front end was given (`--models-dir` and the per-kind flags, or the daemon's
/// config): an A1111 `models/` tree, each kind's folder replaceable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFolders {
    /// An A1111 `models/` folder, or a folder of checkpoints.
    pub models_dir: Option<PathBuf>,
    /// Textual-inversion embeddings (A1111 `--embeddings-dir`).
    pub embeddings_dir: Option<PathBuf>,
    /// LoRA files instead of `models/Lora` (A1111 `--lora-dir`; `models/LyCORIS` stays).
    pub lora_dir: Option<PathBuf>,
    /// Hypernetworks instead of `models/hypernetworks` (A1111 `--hypernetwork-dir`).
    pub hypernetwork_dir: Option<PathBuf>,
    /// VAE files besides `models/VAE` (A1111 `--vae-dir`, searched after it).
    pub vae_dir: Option<PathBuf>,
}

impl ModelFolders {
    /// Where checkpoints are: `Stable-diffusion/` of an A1111 tree, else the folder itself.
    pub fn checkpoint_dir(&self) -> Option<PathBuf> {
        let models = self.models_dir.as_deref()?;
        let a1111 = models.join(CHECKPOINT_FOLDER);
        Some(if a1111.is_dir() {
            a1111
        } else {
            models.to_path_buf()
        })
    }

    /// The folders each kind of extra network is searched in.
    pub fn network_dirs(&self) -> NetworkDirs {
        let mut dirs = match &self.models_dir {
            Some(models) => NetworkDirs::from_models_dir(models),
            None => NetworkDirs::default(),
        };
        dirs.checkpoints = self.checkpoint_dir().into_iter().collect();
        if let Some(lora) = &self.lora_dir {
            match dirs.lora.first_mut() {
                Some(first) => *first = lora.clone(),
                None => dirs.lora.push(lora.clone()),
            }
        }
        if let Some(hypernetworks) = &self.hypernetwork_dir {
            dirs.hypernetworks = vec![hypernetworks.clone()];
        }
        if let Some(vae) = &self.vae_dir {
            dirs.vae.push(vae.clone());
        }
        dirs
    }

    /// The embeddings folder: the one given, else A1111's `embeddings/` inside or beside the
    /// `models/` folder when there is one.
    pub fn embeddings_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.embeddings_dir {
            return Some(dir.clone());
        }
        let models = self.models_dir.as_deref()?;
        [
            models.join("embeddings"),
            models.parent()?.join("embeddings"),
        ]
        .into_iter()
        .find(|dir| dir.is_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_folder_gives_a1111s_folders() {
        let dirs = NetworkDirs::from_models_dir(Path::new("/srv/webui/models"));
        assert_eq!(
            dirs.lora,
            [
                PathBuf::from("/srv/webui/models/Lora"),
                PathBuf::from("/srv/webui/models/LyCORIS")
            ]
        );
        assert_eq!(dirs.vae, [PathBuf::from("/srv/webui/models/VAE")]);
    }

    #[test]
    fn per_kind_folders_replace_or_join_a1111s_as_its_flags_do() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(models.join("Stable-diffusion")).unwrap();
        std::fs::create_dir_all(dir.path().join("embeddings")).unwrap();
        let folders = ModelFolders {
            models_dir: Some(models.clone()),
            lora_dir: Some("/l".into()),
            hypernetwork_dir: Some("/h".into()),
            vae_dir: Some("/v".into()),
            ..ModelFolders::default()
        };
        let dirs = folders.network_dirs();
        assert_eq!(dirs.lora, [PathBuf::from("/l"), models.join("LyCORIS")]);
        assert_eq!(dirs.hypernetworks, [PathBuf::from("/h")]);
        assert_eq!(dirs.vae, [models.join("VAE"), PathBuf::from("/v")]);
        assert_eq!(dirs.checkpoints, [models.join("Stable-diffusion")]);
        assert_eq!(
            folders.embeddings_dir(),
            Some(dir.path().join("embeddings"))
        );
        // Flags alone, without a models folder.
        let alone = ModelFolders {
            lora_dir: Some("/l".into()),
            ..ModelFolders::default()
        };
        assert_eq!(alone.network_dirs().lora, [PathBuf::from("/l")]);
        assert_eq!(alone.embeddings_dir(), None);
    }
}
