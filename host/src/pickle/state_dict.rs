//! A checkpoint's tensors by key, as A1111 reads a `.ckpt`: `torch.load`, then
//! `sd_models.get_state_dict_from_checkpoint` (unwrap Lightning's `state_dict`, rename the
//! keys of checkpoints saved with old `transformers`).

use super::value::{TensorRef, Value};
use super::{script_module, PickleError, TorchFile};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// A1111's `checkpoint_dict_replacements_sd1`: CLIP keys of old `transformers` versions.
const SD1_REPLACEMENTS: &[(&str, &str)] = &[
    (
        "cond_stage_model.transformer.embeddings.",
        "cond_stage_model.transformer.text_model.embeddings.",
    ),
    (
        "cond_stage_model.transformer.encoder.",
        "cond_stage_model.transformer.text_model.encoder.",
    ),
    (
        "cond_stage_model.transformer.final_layer_norm.",
        "cond_stage_model.transformer.text_model.final_layer_norm.",
    ),
];

/// A1111's `checkpoint_dict_replacements_sd2_turbo`: SD 2.1 Turbo's SGM keys to LDM keys.
const SD2_TURBO_REPLACEMENTS: &[(&str, &str)] =
    &[("conditioner.embedders.0.", "cond_stage_model.")];

/// The key whose width tells SD 2.1 Turbo apart (A1111's `is_sd2_turbo`).
const SD2_TURBO_PROBE: &str = "conditioner.embedders.0.model.ln_final.weight";

/// The tensors of a pickled checkpoint by key, read lazily from the mapped file.
pub struct StateDict {
    file: TorchFile,
    tensors: BTreeMap<String, TensorRef>,
    global_step: Option<i64>,
}

/// Loads the state dict of a `.ckpt`/`.pt`/`.bin` file through the restricted unpickler.
pub fn load_state_dict(path: &Path) -> Result<StateDict, PickleError> {
    StateDict::open(path)
}

impl StateDict {
    /// Unpickles `path` and collects its tensors as A1111 does; a TorchScript archive gives
    /// its module tree's tensors by dotted path, as its `state_dict()` would.
    pub fn open(path: &Path) -> Result<Self, PickleError> {
        let file = TorchFile::open(path)?;
        let root = file.root.clone();
        let (tensors, global_step) =
            if file.is_torchscript() && script_module::is_script_object(&root) {
                let items = script_module::flatten(path, &root)?;
                (items.into_iter().collect(), None)
            } else {
                checkpoint_tensors(path, root)?
            };
        for t in tensors.values() {
            file.check(t)?;
        }
        if tensors.is_empty() {
            return Err(PickleError::NotStateDict {
                path: path.to_path_buf(),
                reason: "it holds no tensors".into(),
            });
        }
        Ok(Self {
            file,
            tensors,
            global_step,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether it holds no tensor (never true for an opened state dict).
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The stored shape of `key`.
    pub fn shape(&self, key: &str) -> Option<&[i64]> {
        self.tensors.get(key).map(TensorRef::shape)
    }

    /// The stored dtype of `key`.
    pub fn kind(&self, key: &str) -> Option<Kind> {
        self.tensors.get(key).map(TensorRef::kind)
    }

    /// Lightning's `global_step` from the wrapper, when the file has one.
    pub fn global_step(&self) -> Option<i64> {
        self.global_step
    }

    /// The tensor under `key` in its stored dtype, on the CPU; `None` when absent.
    pub fn tensor(&self, key: &str) -> Option<Result<Tensor, PickleError>> {
        self.tensors.get(key).map(|t| self.file.tensor(t))
    }

    /// Every tensor, by key, in its stored dtype on the CPU.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>, PickleError> {
        self.tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), self.file.tensor(t)?)))
            .collect()
    }

    /// Drops the mapped pages of `key` once its tensor was read (see [`TorchFile::release`]).
    pub fn release(&self, key: &str) {
        if let Some(t) = self.tensors.get(key) {
            self.file.release(t);
        }
    }
}

/// A1111's `transform_checkpoint_dict_key`: each matching prefix in turn is replaced.
fn rename(mut key: String, replacements: &[(&str, &str)]) -> String {
    for (from, to) in replacements {
        if let Some(rest) = key.strip_prefix(from) {
            key = format!("{to}{rest}");
        }
    }
    key
}

/// The tensors of a checkpoint's root dict (unwrapped from Lightning's `state_dict`, keys
/// renamed as A1111 does) and its `global_step`.
fn checkpoint_tensors(
    path: &Path,
    root: Value,
) -> Result<(BTreeMap<String, TensorRef>, Option<i64>), PickleError> {
    let Value::Dict(_) = root else {
        return Err(PickleError::NotStateDict {
            path: path.to_path_buf(),
            reason: format!("the file holds a {}, not a dict", root.type_name()),
        });
    };
    let global_step = match root.get("global_step") {
        Some(Value::Int(n)) => Some(n),
        _ => None,
    };
    let inner = match root.get("state_dict") {
        Some(inner @ Value::Dict(_)) => inner,
        _ => root,
    };
    let Value::Dict(items) = &inner else {
        unreachable!("checked above")
    };
    let items: Vec<(String, TensorRef)> = items
        .borrow()
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) if k != "state_dict" => Some((k.clone(), t.clone())),
            _ => None,
        })
        .collect();
    let turbo = items
        .iter()
        .any(|(k, t)| k == SD2_TURBO_PROBE && t.shape().first() == Some(&1024));
    let replacements = if turbo {
        SD2_TURBO_REPLACEMENTS
    } else {
        SD1_REPLACEMENTS
    };
    let tensors = items
        .into_iter()
        .map(|(k, t)| (rename(k, replacements), t))
        .collect();
    Ok((tensors, global_step))
}
