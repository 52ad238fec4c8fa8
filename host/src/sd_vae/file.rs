//! Reading an external VAE file into an autoencoder (A1111 `sd_vae.load_vae_dict` and
//! `_load_vae_dict`): the autoencoder's own state dict (`encoder.*`, `decoder.*`,
//! `quant_conv.*`, `post_quant_conv.*`), from `.safetensors` or a `torch.save` pickle, optionally
//! under `state_dict`; `loss*` keys and the EMA counters are dropped, and the rest must fit the
//! checkpoint's autoencoder exactly (PyTorch's strict `load_state_dict`).

use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use crate::checkpoint::Checkpoint;
use crate::models::vae::{AutoencoderKl, VaeConfig};
use crate::weights::{LoadError, TensorMap, VarBuilder};

/// Keys A1111 drops besides those starting with `loss` (`vae_ignore_keys`).
const IGNORED_KEYS: [&str; 2] = ["model_ema.decay", "model_ema.num_updates"];

/// How many unexpected keys an error names.
const NAMED_KEYS: usize = 5;

/// Why a VAE file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VaeFileError {
    /// A file that cannot be read (or a pickle refused), or a tensor missing or mis-shaped.
    #[error("VAE {}", .0)]
    Load(#[from] LoadError),
    /// The file holds tensors the autoencoder has no place for (strict loading).
    #[error("VAE {path}: {count} unexpected key(s) for the checkpoint's autoencoder, e.g. {first}; expected the autoencoder's own state dict (encoder.*, decoder.*, quant_conv.*, post_quant_conv.*)")]
    UnexpectedKeys {
        path: PathBuf,
        count: usize,
        first: String,
    },
    /// A whole checkpoint (its autoencoder under `first_stage_model.`) where a VAE file goes.
    #[error("VAE {0}: this is a whole checkpoint, not a VAE file (its autoencoder is under `first_stage_model.`); A1111 refuses it too")]
    WholeCheckpoint(PathBuf),
    /// The file's extension is none of `.safetensors`, `.pt`, `.ckpt`.
    #[error("VAE {0}: not a .safetensors, .pt or .ckpt file")]
    UnknownFormat(PathBuf),
}

fn kept(key: &str) -> bool {
    !key.starts_with("loss") && !IGNORED_KEYS.contains(&key)
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Builds the autoencoder of `config` from the VAE file `path` in `kind` on `device`, strictly:
/// a missing or mis-shaped tensor or a tensor the autoencoder does not have is an error.
pub fn load_vae_file(
    path: &Path,
    config: &VaeConfig,
    kind: Kind,
    device: Device,
) -> Result<AutoencoderKl, VaeFileError> {
    let tensors = match extension(path).as_str() {
        "safetensors" | "pt" | "ckpt" => Checkpoint::open(path)?.read_all()?,
        _ => return Err(VaeFileError::UnknownFormat(path.to_path_buf())),
    };
    let source = TensorMap::new(path, tensors.into_iter().filter(|(k, _)| kept(k)).collect());
    let built = {
        let _guard = tch::no_grad_guard();
        AutoencoderKl::new(&VarBuilder::new(&source, kind, device), config)
    };
    let vae = match built {
        Ok(vae) => vae,
        Err(LoadError::MissingTensor { .. })
            if source.keys().any(|k| k.starts_with("first_stage_model.")) =>
        {
            return Err(VaeFileError::WholeCheckpoint(path.to_path_buf()))
        }
        Err(error) => return Err(error.into()),
    };
    let unexpected = source.unused();
    if !unexpected.is_empty() {
        let first = unexpected
            .iter()
            .take(NAMED_KEYS)
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(VaeFileError::UnexpectedKeys {
            path: path.to_path_buf(),
            count: unexpected.len(),
            first,
        });
    }
    Ok(vae)
}
