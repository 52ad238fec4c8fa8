//! Reading an external VAE file into an autoencoder (A1111 `sd_vae.load_vae_dict` and
//! `_load_vae_dict`): the autoencoder's own state dict (`encoder.*`, `decoder.*`,
//! `quant_conv.*`, `post_quant_conv.*`), from `.safetensors` or a `torch.save` pickle, optionally
//! under `state_dict`; `loss*` keys and the EMA counters are dropped, and the rest must fit the
//! checkpoint's autoencoder exactly (PyTorch's strict `load_state_dict`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::checkpoint::Checkpoint;
use crate::models::vae::{AutoencoderKl, VaeConfig};
use crate::pickle::{PickleError, TorchFile, Value};
use crate::weights::{LoadError, TensorSource, VarBuilder};

/// Keys A1111 drops besides those starting with `loss` (`vae_ignore_keys`).
const IGNORED_KEYS: [&str; 2] = ["model_ema.decay", "model_ema.num_updates"];

/// How many unexpected keys an error names.
const NAMED_KEYS: usize = 5;

/// Why a VAE file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VaeFileError {
    /// A `.safetensors` file that cannot be read, or a tensor missing or mis-shaped.
    #[error("VAE {}", .0)]
    Load(#[from] LoadError),
    /// A pickle that cannot be read or is refused.
    #[error("VAE {}", .0)]
    Pickle(#[from] PickleError),
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

/// A VAE file's tensors by key, with the keys the autoencoder asked for.
struct VaeStateDict {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    used: RefCell<BTreeSet<String>>,
}

fn kept(key: &str) -> bool {
    !key.starts_with("loss") && !IGNORED_KEYS.contains(&key)
}

impl TensorSource for VaeStateDict {
    fn stored_shape(&self, key: &str) -> Option<Vec<i64>> {
        self.tensors.get(key).map(Tensor::size)
    }

    fn tensor(
        &self,
        key: &str,
        shape: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, LoadError> {
        let tensor = self
            .tensors
            .get(key)
            .ok_or_else(|| crate::weights::missing(&self.path, key))?;
        if tensor.size() != shape {
            return Err(LoadError::ShapeMismatch {
                path: self.path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: tensor.size(),
            });
        }
        self.used.borrow_mut().insert(key.to_string());
        Ok(tensor.f_to_device(device)?.f_to_kind(kind)?)
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The tensors of a `.safetensors` VAE.
fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, VaeFileError> {
    let checkpoint = Checkpoint::open(path)?;
    let keys: Vec<String> = checkpoint.keys().map(str::to_string).collect();
    let mut tensors = BTreeMap::new();
    for key in keys {
        let tensor = checkpoint.raw(&key)?;
        tensors.insert(key, tensor);
    }
    Ok(tensors)
}

/// The tensors of a pickled VAE (`torch.save` of a state dict, or of `{"state_dict": …}`),
/// through the restricted unpickler; entries that are not tensors are skipped.
fn read_pickle(path: &Path) -> Result<BTreeMap<String, Tensor>, VaeFileError> {
    let mut file = TorchFile::open(path)?;
    let root = file.root.clone();
    let dict = root.get("state_dict").unwrap_or(root);
    let items = match &dict {
        Value::Dict(items) => items.borrow().clone(),
        _ => Vec::new(),
    };
    let mut tensors = BTreeMap::new();
    for (key, value) in items {
        if let (Value::Str(key), Value::Tensor(t)) = (key, value) {
            tensors.insert(key, file.tensor(&t)?);
        }
    }
    Ok(tensors)
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
        "safetensors" => read_safetensors(path)?,
        "pt" | "ckpt" => read_pickle(path)?,
        _ => return Err(VaeFileError::UnknownFormat(path.to_path_buf())),
    };
    let source = VaeStateDict {
        path: path.to_path_buf(),
        tensors: tensors.into_iter().filter(|(k, _)| kept(k)).collect(),
        used: RefCell::new(BTreeSet::new()),
    };
    let built = {
        let _guard = tch::no_grad_guard();
        AutoencoderKl::new(&VarBuilder::new(&source, kind, device), config)
    };
    let vae = match built {
        Ok(vae) => vae,
        Err(LoadError::MissingTensor { .. })
            if source
                .tensors
                .keys()
                .any(|k| k.starts_with("first_stage_model.")) =>
        {
            return Err(VaeFileError::WholeCheckpoint(path.to_path_buf()))
        }
        Err(error) => return Err(error.into()),
    };
    let used = source.used.borrow();
    let unexpected: Vec<&String> = source
        .tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .collect();
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
