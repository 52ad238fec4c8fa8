//! Named-tensor access while building networks: a path-scoped builder over a tensor source,
//! and [`LoadError`], what can go wrong between a file on disk and a built network.
//!
//! Network constructors ask for tensors by the checkpoint's own key names
//! (`model.diffusion_model.input_blocks.1.0.in_layers.0.weight`), so a model file and the code
//! that reads it stay in one-to-one correspondence.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Everything that can go wrong between a file on disk and a built network.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    /// The header or data layout is not valid safetensors (truncated, corrupt, not safetensors).
    #[error("{path}: not a valid .safetensors file ({reason})")]
    InvalidSafetensors { path: PathBuf, reason: String },
    /// A `.ckpt`/`.pt` pickle that the restricted unpickler refused or could not read (a
    /// global outside A1111's allow-list, a malformed or truncated file...).
    #[error(transparent)]
    Pickle(#[from] crate::pickle::PickleError),
    /// The file is valid safetensors but not a Stable Diffusion checkpoint sdhost knows.
    #[error("{path}: not a Stable Diffusion checkpoint: {reason}")]
    NotStableDiffusion { path: PathBuf, reason: String },
    /// A checkpoint of a model family sdhost does not run (SD3, Flux, SD2 depth, …).
    #[error("{path}: {family} checkpoint, which sdhost does not run ({reason})")]
    UnsupportedFamily {
        path: PathBuf,
        family: String,
        reason: String,
    },
    /// A tensor the network needs is absent.
    #[error("{path}: missing tensor `{key}`")]
    MissingTensor { path: PathBuf, key: String },
    /// A tensor has a shape the inferred architecture does not expect.
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    /// A tensor is stored in a dtype libtorch cannot hold.
    #[error("{path}: tensor `{key}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    /// libtorch refused an operation (device unavailable, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result type for loading.
pub type Result<T, E = LoadError> = std::result::Result<T, E>;

/// Where named tensors come from when a network is built.
pub trait TensorSource {
    /// The stored shape of `key`, if the source has stored shapes.
    fn stored_shape(&self, key: &str) -> Option<Vec<i64>>;
    /// The tensor under `key`, which must have `shape`, converted to `kind` on `device`.
    fn tensor(&self, key: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor>;
}

/// The kind of layer a weight belongs to, as much of it as weight patching needs (A1111's LoRA
/// code asks `isinstance(module, nn.Linear)` and so on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `nn.Linear`: weight [out, in].
    Linear,
    /// `nn.Conv2d`: weight [out, in, kh, kw].
    Conv2d {
        /// Stride of the layer (both axes).
        stride: i64,
        /// Zero padding of the layer (both axes).
        padding: i64,
    },
    /// `nn.LayerNorm`: weight [dim].
    LayerNorm,
    /// `nn.GroupNorm`: weight [channels].
    GroupNorm,
}

/// One layer's parameters as the network holds them: shallow clones sharing storage with the
/// layer, so writing into them in place changes what the layer computes (LoRA patching).
pub struct LayerParams {
    /// What kind of layer it is.
    pub kind: LayerKind,
    /// Its weight.
    pub weight: Tensor,
    /// Its bias, when it has one.
    pub bias: Option<Tensor>,
}

/// Every recorded layer, by its checkpoint key without the `.weight` suffix
/// (`model.diffusion_model.input_blocks.1.1.proj_in`).
pub type LayerTable = BTreeMap<String, LayerParams>;

/// Collects the layers networks are built from while a [`VarBuilder`] hands out tensors.
#[derive(Default)]
pub struct LayerRecorder {
    layers: RefCell<LayerTable>,
}

impl LayerRecorder {
    /// The layers recorded so far.
    pub fn into_table(self) -> LayerTable {
        self.layers.into_inner()
    }
}

/// A view of a tensor source under a key prefix, with the dtype and device to build in.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    source: &'a dyn TensorSource,
    prefix: String,
    kind: Kind,
    device: Device,
    recorder: Option<&'a LayerRecorder>,
}

impl<'a> VarBuilder<'a> {
    /// A builder at the root of `source`.
    pub fn new(source: &'a dyn TensorSource, kind: Kind, device: Device) -> Self {
        Self {
            source,
            prefix: String::new(),
            kind,
            device,
            recorder: None,
        }
    }

    /// The same builder, recording every layer built under it into `recorder`.
    pub fn recording(self, recorder: &'a LayerRecorder) -> Self {
        Self {
            recorder: Some(recorder),
            ..self
        }
    }

    /// Records the layer at this builder's path (a no-op unless [`Self::recording`]); layers
    /// call it with the tensors they keep, so patches written into the record reach them.
    pub fn record_layer(&self, kind: LayerKind, weight: &Tensor, bias: Option<&Tensor>) {
        if let Some(recorder) = self.recorder {
            recorder.layers.borrow_mut().insert(
                self.prefix.clone(),
                LayerParams {
                    kind,
                    weight: weight.shallow_clone(),
                    bias: bias.map(Tensor::shallow_clone),
                },
            );
        }
    }

    /// The builder for the sub-path `name` (joined with a dot).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    /// The full key of `name` under this builder.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The dtype networks are built in.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The device networks are built on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.source
            .tensor(&self.key(name), shape, self.kind, self.device)
    }

    /// The tensor `name` in `shape`, also accepting it stored in the `alternative` layout
    /// with the same number of elements (1×1 convolutions saved as linear weights).
    pub fn get_reshaped(&self, name: &str, shape: &[i64], alternative: &[i64]) -> Result<Tensor> {
        let key = self.key(name);
        match self.source.stored_shape(&key) {
            Some(stored) if stored == alternative => Ok(self
                .source
                .tensor(&key, alternative, self.kind, self.device)?
                .reshape(shape)),
            _ => self.get(name, shape),
        }
    }
}

/// A missing-key error for a source at `path`.
pub fn missing(path: &std::path::Path, key: &str) -> LoadError {
    LoadError::MissingTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
    }
}

/// Tensors held in memory by key, as a source for building a network strictly: it remembers
/// which keys were taken, so that the ones left over can be refused as PyTorch's strict
/// `load_state_dict` does (external VAE files, hypernetwork modules).
pub struct TensorMap {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    used: RefCell<BTreeSet<String>>,
}

impl TensorMap {
    /// The tensors of `path` (named in errors).
    pub fn new(path: &Path, tensors: BTreeMap<String, Tensor>) -> Self {
        Self {
            path: path.to_path_buf(),
            tensors,
            used: RefCell::default(),
        }
    }

    /// Every key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The keys no network asked for, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.keys()
            .filter(|k| !used.contains(*k))
            .map(str::to_string)
            .collect()
    }
}

impl TensorSource for TensorMap {
    fn stored_shape(&self, key: &str) -> Option<Vec<i64>> {
        self.tensors.get(key).map(Tensor::size)
    }

    fn tensor(&self, key: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(key)
            .ok_or_else(|| missing(&self.path, key))?;
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
