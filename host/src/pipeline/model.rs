//! A checkpoint ready for jobs: its networks on a device, its noise levels, the name and hash
//! the infotext gives it, and the textual-inversion embeddings its prompts may use.

use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use super::decode::{decode_latents, decode_latents_unless_nan};
use crate::checkpoint::{
    default_cache_dir, detect_prediction, infer_architecture, Checkpoint, ModelHashes,
    PredictionDetection,
};
use crate::extra_networks::dirs::NetworkDirs;
use crate::extra_networks::hypernetwork::{ActiveHypernetworks, HypernetworkCache};
use crate::extra_networks::lora::LoraNetworks;
use crate::extra_networks::ExtraNetworkData;
use crate::models::vae::{AutoencoderKl, VaeTiling};
use crate::models::{StableDiffusion, VAE_PREFIX};
use crate::prompt::cache::ConditioningCache;
use crate::prompt::embeddings::EmbeddingDatabase;
use crate::sampling::noise_levels::{NoiseLevels, NoiseLevelsError};
use crate::sd_vae::load_vae_file;
use crate::sd_vae::{
    resolve_vae_for, ExternalVae, VaeChooser, VaeError, VaeList, VaeResolution, VaeSwap,
};
use crate::upscale::UpscalerCache;
use crate::weights::LoadError;
use crate::weights::VarBuilder;
use image::RgbImage;
use tch::Tensor;

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
    /// What its UNet predicts, and why sdhost thinks so.
    pub prediction: PredictionDetection,
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
    /// The last model upscaler Hires. fix used, kept loaded for the next job.
    pub upscalers: UpscalerCache,
    /// The prompt conditioning of recent jobs (dropped with the model, whose weights it
    /// reflects).
    pub conditionings: std::sync::Mutex<ConditioningCache>,
    /// Where the networks run.
    pub device: Device,
    /// Their dtype.
    pub kind: Kind,
    /// The checkpoint's own autoencoder while an external VAE is in `sd.vae`.
    vae_swap: VaeSwap,
    /// The refiner jobs hand over to (`refiner_checkpoint`), kept loaded for the next job.
    pub refiner: Option<Box<GenerationModel>>,
    /// The VAE in fp32, made when an fp16 decode gave NaN and used for every decode after
    /// (A1111's `auto_vae_precision`, which also keeps the switch until restart).
    vae_upcast: std::sync::Mutex<Option<AutoencoderKl>>,
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
        let prediction = detect_prediction(&checkpoint, &architecture, &sd.unet);
        let hashes =
            ModelHashes::cached(path, default_cache_dir().as_deref()).map_err(|source| {
                ModelError::Hash {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let embeddings = match embeddings_dir {
            Some(dir) => EmbeddingDatabase::load_dir(dir, architecture.text.embedding_width())
                .map_err(|source| ModelError::Embeddings {
                    path: dir.to_path_buf(),
                    source,
                })?,
            None => EmbeddingDatabase::default(),
        };
        Ok(GenerationModel {
            sd,
            levels,
            prediction,
            name: model_name(path),
            hash: hashes.short().to_string(),
            path: path.to_path_buf(),
            embeddings,
            network_dirs: NetworkDirs::default(),
            lora: std::sync::Mutex::default(),
            hypernetworks: HypernetworkCache::new(kind, device),
            upscalers: UpscalerCache::default(),
            conditionings: std::sync::Mutex::default(),
            device,
            kind,
            vae_swap: VaeSwap::default(),
            vae_upcast: std::sync::Mutex::default(),
            refiner: None,
        })
    }

    /// The same model with its prediction type set by the user (A1111's yaml beside the
    /// file, as a setting).
    pub fn with_prediction(mut self, prediction: crate::models::Prediction) -> Self {
        self.prediction = PredictionDetection {
            prediction,
            reason: "set by the user".into(),
        };
        self
    }

    /// Loads the checkpoint at `path` as this model's refiner (in its dtype, on its device,
    /// with its network folders), unless it is the refiner already.
    pub fn select_refiner(
        &mut self,
        path: &Path,
        embeddings_dir: Option<&Path>,
    ) -> Result<&GenerationModel, ModelError> {
        let loaded = self.refiner.as_ref().is_some_and(|r| r.path == path);
        if !loaded {
            // The old one goes first: two refiners never share memory.
            self.refiner = None;
            let refiner = GenerationModel::load(path, self.device, self.kind, embeddings_dir)?
                .with_network_dirs(self.network_dirs.clone());
            self.refiner = Some(Box::new(refiner));
        }
        Ok(self.refiner.as_deref().expect("loaded above"))
    }

    /// A1111's short title of the model (`name [hash]`), as infotext `Refiner` writes it.
    pub fn short_title(&self) -> String {
        format!("{} [{}]", self.name, self.hash)
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
        self.resolve_vae_for(VaeChooser::User, choice)
    }

    /// [`Self::resolve_vae`] for `chooser` (a client may name listed VAEs only).
    pub fn resolve_vae_for(
        &self,
        chooser: VaeChooser,
        choice: &str,
    ) -> Result<VaeResolution, VaeError> {
        // Every job resolves its VAE; a path or `None` does not depend on the VAE files, so
        // the folders are walked only for a name or Automatic.
        let choice_word = choice.trim();
        let list =
            if choice_word == crate::sd_vae::NONE || crate::sd_vae::list::is_path(choice_word) {
                VaeList::default()
            } else {
                self.vae_list()
            };
        Ok(resolve_vae_for(chooser, choice, &self.path, &list)?)
    }

    /// Runs the next jobs with the VAE `choice` means (A1111's `sd_vae.reload_vae_weights`):
    /// an external file is read (or taken from the cache) and put in, `None` and Automatic
    /// without a match put the checkpoint's own back. Returns A1111's warning when a named VAE
    /// does not exist (A1111 goes on with the checkpoint's own, and so does this).
    pub fn select_vae(&mut self, choice: &str) -> Result<Option<String>, VaeError> {
        self.select_vae_for(VaeChooser::User, choice)
    }

    /// [`Self::select_vae`] for `chooser`: the daemon's jobs select as [`VaeChooser::Client`].
    pub fn select_vae_for(
        &mut self,
        chooser: VaeChooser,
        choice: &str,
    ) -> Result<Option<String>, VaeError> {
        let resolution = self.resolve_vae_for(chooser, choice)?;
        let _guard = tch::no_grad_guard();
        *self.vae_upcast.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        self.vae_swap
            .apply(&mut self.sd.vae, &resolution, self.kind, self.device)?;
        Ok(match resolution {
            VaeResolution::Own { warning } => warning,
            VaeResolution::File { .. } => None,
        })
    }

    /// Decodes scaled latents to images. In fp16 a NaN in the first decoded value (the SDXL
    /// VAE overflows there) makes an fp32 copy of the VAE that decodes this batch again and
    /// every one after, with a warning once (A1111 `decode_latent_batch` with
    /// `auto_vae_precision`, its `--no-half-vae` fallback).
    pub fn decode(
        &self,
        samples: &Tensor,
        tiling: Option<VaeTiling>,
    ) -> Result<(Vec<RgbImage>, Option<String>), ModelError> {
        // Jobs run one at a time; the lock is held for the decode.
        let mut upcast = self.vae_upcast.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(vae) = upcast.as_ref() {
            return Ok((
                decode_latents(vae, &samples.to_kind(Kind::Float), tiling),
                None,
            ));
        }
        let check_nan = self.kind == Kind::Half;
        if let Some(images) =
            decode_latents_unless_nan(&self.sd.vae, &samples.to_kind(self.kind), tiling, check_nan)
        {
            return Ok((images, None));
        }
        let vae = upcast.insert(self.load_vae_fp32()?);
        let images = decode_latents(vae, &samples.to_kind(Kind::Float), tiling);
        Ok((
            images,
            Some(
                "the VAE produced NaN in fp16; it decodes in fp32 from now on (A1111's automatic --no-half-vae)"
                    .into(),
            ),
        ))
    }

    /// The VAE in use, read again from its file in fp32.
    fn load_vae_fp32(&self) -> Result<AutoencoderKl, ModelError> {
        let _guard = tch::no_grad_guard();
        let config = self.sd.vae.config();
        match self.external_vae() {
            Some(external) => load_vae_file(&external.path, config, Kind::Float, self.device)
                .map_err(|e| {
                    ModelError::Load(LoadError::NotStableDiffusion {
                        path: external.path.clone(),
                        reason: e.to_string(),
                    })
                }),
            None => {
                let checkpoint = Checkpoint::open(&self.path)?;
                let vb = VarBuilder::new(&checkpoint, Kind::Float, self.device);
                Ok(AutoencoderKl::new(&vb.pp(VAE_PREFIX), config)?)
            }
        }
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
