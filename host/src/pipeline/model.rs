//! A checkpoint ready for jobs: its networks on a device, its noise levels, the name and hash
//! the infotext gives it, and the textual-inversion embeddings its prompts may use.

use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use crate::checkpoint::{default_cache_dir, infer_architecture, Checkpoint, ModelHashes};
use crate::extra_networks::dirs::NetworkDirs;
use crate::extra_networks::hypernetwork::{ActiveHypernetworks, HypernetworkCache};
use crate::extra_networks::lora::LoraNetworks;
use crate::extra_networks::ExtraNetworkData;
use crate::models::StableDiffusion;
use crate::prompt::embeddings::EmbeddingDatabase;
use crate::sampling::noise_levels::{NoiseLevels, NoiseLevelsError};
use crate::sd_vae::{resolve_vae, ExternalVae, VaeError, VaeList, VaeResolution, VaeSwap};
use crate::weights::LoadError;

/// Why a model could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The checkpoint could not be read or built.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its noise schedule is unusable.
    #[error(transparent)]
    NoiseLevels(#[from] NoiseLevelsError),
    /// The file could not be hashed.
    #[error("{path}: cannot hash: {source}")]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The embeddings folder could not be listed.
    #[error("{path}: cannot read the embeddings folder: {source}")]
    Embeddings {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A loaded checkpoint with what a job needs besides the networks.
pub struct GenerationModel {
    /// Text encoder, UNet and autoencoder.
    pub sd: StableDiffusion,
    /// The model's discrete noise levels (σ table).
    pub levels: NoiseLevels,
    /// Infotext `Model`: the file name without folder and extension.
    pub name: String,
    /// Infotext `Model hash`: A1111's short sha256.
    pub hash: String,
    /// The checkpoint file.
    pub path: PathBuf,
    /// Embeddings available to prompts.
    pub embeddings: EmbeddingDatabase,
    /// Where the prompts' extra networks (`<lora:…>`, `<hypernet:…>`) and VAE files are found.
    pub network_dirs: NetworkDirs,
    /// The LoRAs applied to the networks' weights and their originals (locked by the job
    /// that activates a prompt's set; jobs run one at a time).
    pub lora: std::sync::Mutex<LoraNetworks>,
    /// The hypernetworks of the last job, kept loaded for the next.
    pub hypernetworks: HypernetworkCache,
    /// Where the networks run.
    pub device: Device,
    /// Their dtype.
    pub kind: Kind,
    /// The checkpoint's own autoencoder while an external VAE is in `sd.vae`.
    vae_swap: VaeSwap,
}

impl GenerationModel {
    /// Loads `path` in `kind` on `device`, with the embeddings under `embeddings_dir` if given.
    pub fn load(
        path: &Path,
        device: Device,
        kind: Kind,
        embeddings_dir: Option<&Path>,
    ) -> Result<Self, ModelError> {
        let _guard = tch::no_grad_guard();
        let checkpoint = Checkpoint::open(path)?;
        let architecture = infer_architecture(&checkpoint)?;
        let sd = StableDiffusion::load(&checkpoint, &architecture, kind, device)?;
        let levels = NoiseLevels::from_checkpoint(&checkpoint)?;
        let hashes =
            ModelHashes::cached(path, default_cache_dir().as_deref()).map_err(|source| {
                ModelError::Hash {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let embeddings = match embeddings_dir {
            Some(dir) => EmbeddingDatabase::load_dir(dir, architecture.clip.hidden_size).map_err(
                |source| ModelError::Embeddings {
                    path: dir.to_path_buf(),
                    source,
                },
            )?,
            None => EmbeddingDatabase::default(),
        };
        Ok(GenerationModel {
            sd,
            levels,
            name: model_name(path),
            hash: hashes.short().to_string(),
            path: path.to_path_buf(),
            embeddings,
            network_dirs: NetworkDirs::default(),
            lora: std::sync::Mutex::default(),
            hypernetworks: HypernetworkCache::new(kind, device),
            device,
            kind,
            vae_swap: VaeSwap::default(),
        })
    }

    /// The same model, finding extra networks in `dirs`.
    pub fn with_network_dirs(mut self, dirs: NetworkDirs) -> Self {
        self.network_dirs = dirs;
        self
    }

    /// The VAE files this model can use (A1111's `vae_dict`): those of its network folders and
    /// the `*.vae.*` files beside its checkpoint.
    pub fn vae_list(&self) -> VaeList {
        VaeList::scan(&self.network_dirs, self.path.parent())
    }

    /// Which VAE A1111's option `sd_vae` (`Automatic`, `None`, a VAE name, or a path) means for
    /// this checkpoint.
    pub fn resolve_vae(&self, choice: &str) -> Result<VaeResolution, VaeError> {
        Ok(resolve_vae(choice, &self.path, &self.vae_list())?)
    }

    /// Runs the next jobs with the VAE `choice` means (A1111's `sd_vae.reload_vae_weights`):
    /// an external file is read (or taken from the cache) and put in, `None` and Automatic
    /// without a match put the checkpoint's own back. Returns A1111's warning when a named VAE
    /// does not exist (A1111 goes on with the checkpoint's own, and so does this).
    pub fn select_vae(&mut self, choice: &str) -> Result<Option<String>, VaeError> {
        let resolution = self.resolve_vae(choice)?;
        let _guard = tch::no_grad_guard();
        self.vae_swap
            .apply(&mut self.sd.vae, &resolution, self.kind, self.device)?;
        Ok(match resolution {
            VaeResolution::Own { warning } => warning,
            VaeResolution::File { .. } => None,
        })
    }

    /// The external VAE in use, for the infotext (none: the checkpoint's own).
    pub fn external_vae(&self) -> Option<&ExternalVae> {
        self.vae_swap.active()
    }

    /// Sets the UNet's hypernetworks to those `data`'s `<hypernet:…>` tags name, until the
    /// returned value is dropped.
    pub fn activate_hypernetworks(&self, data: &ExtraNetworkData) -> ActiveHypernetworks {
        self.hypernetworks.activate(
            self.sd.unet.hypernetworks(),
            &self.network_dirs.hypernetworks,
            data,
        )
    }

    /// Pixels per latent pixel (8 for SD).
    pub fn downscale(&self) -> u32 {
        self.sd.architecture.vae.downscale() as u32
    }
}

/// A1111's `Model` value: the checkpoint's file name without folder and extension.
pub fn model_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
