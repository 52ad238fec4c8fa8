//! The model-folder flags `sdhost img2img` shares with A1111's command line: `--models-dir` (an
//! A1111 `models/` tree) and the per-kind folders that replace or join its folders.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::daemon::ModelCatalog;
use crate::extra_networks::dirs::ModelFolders;

/// `--models-dir` and the per-kind folder flags.
#[derive(Args, Clone, Debug, Default)]
pub struct FolderArgs {
    /// An A1111 models/ folder: checkpoints from Stable-diffusion/ (--model may then be a
    /// name), Lora/, LyCORIS/, hypernetworks/, VAE/, the upscalers of ESRGAN/, RealESRGAN/,
    /// SwinIR/ and DAT/, and embeddings/ inside or beside it.
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Folder of textual-inversion embeddings [default: embeddings/ of --models-dir].
    #[arg(long, value_name = "DIR")]
    pub embeddings_dir: Option<PathBuf>,
    /// Folder of LoRA files instead of models/Lora (A1111's --lora-dir).
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Folder of hypernetworks instead of models/hypernetworks (A1111's --hypernetwork-dir).
    #[arg(long, value_name = "DIR")]
    pub hypernetwork_dir: Option<PathBuf>,
    /// Folder of VAE files searched after models/VAE (A1111's --vae-dir).
    #[arg(long, value_name = "DIR")]
    pub vae_dir: Option<PathBuf>,
}

impl FolderArgs {
    /// The folders as the model and its jobs use them.
    pub fn folders(&self) -> ModelFolders {
        ModelFolders {
            models_dir: self.models_dir.clone(),
            embeddings_dir: self.embeddings_dir.clone(),
            lora_dir: self.lora_dir.clone(),
            hypernetwork_dir: self.hypernetwork_dir.clone(),
            vae_dir: self.vae_dir.clone(),
        }
    }

    /// The checkpoint `model` names: a file, or with --models-dir a checkpoint's name
    /// (`v1-5-pruned-emaonly`, `sd15/inpainting`, or its file name); none: the first one there.
    pub fn checkpoint(&self, model: Option<&Path>) -> anyhow::Result<PathBuf> {
        if let Some(file) = model.filter(|m| m.is_file()) {
            return Ok(file.to_path_buf());
        }
        let Some(models_dir) = &self.models_dir else {
            let model = model.context("give --model FILE, or --models-dir DIR")?;
            anyhow::bail!("{}: no such checkpoint file", model.display());
        };
        let catalog = ModelCatalog::scan(Some(models_dir), None);
        let found = match model {
            Some(name) => catalog.find(&name.to_string_lossy()),
            None => catalog.first().map(Path::to_path_buf),
        };
        found.with_context(|| {
            let known = catalog.names();
            let what = model.map_or("any checkpoint".to_string(), |m| {
                format!("the checkpoint \"{}\"", m.display())
            });
            format!(
                "{} has no {what} (known: {})",
                models_dir.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}
