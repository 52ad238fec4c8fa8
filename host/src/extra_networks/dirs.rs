//! Where extra-network files are looked for: the folders of an A1111 `models/` tree
//! (`Lora/`, `LyCORIS/`, `hypernetworks/`, `VAE/`), each replaceable by its own flag.

use std::path::{Path, PathBuf};

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
}

impl NetworkDirs {
    /// The folders of an A1111 `models/` tree (missing ones are searched as empty).
    pub fn from_models_dir(models: &Path) -> Self {
        Self {
            lora: vec![models.join("Lora"), models.join("LyCORIS")],
            hypernetworks: vec![models.join("hypernetworks")],
            vae: vec![models.join("VAE")],
            checkpoints: vec![models.join("Stable-diffusion")],
        }
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
}
