//! Typed errors for loading checkpoints and building networks from them.

use std::path::PathBuf;

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
    /// A pickle-based checkpoint, which is never unpickled here.
    #[error("{path}: .ckpt/.pt checkpoints are pickles and are not loaded; convert it to .safetensors (for example with A1111's checkpoint merger, or `safetensors.torch.save_file` on its state_dict)")]
    PickleCheckpoint { path: PathBuf },
    /// The file is valid safetensors but not a Stable Diffusion 1.x checkpoint.
    #[error("{path}: not a Stable Diffusion checkpoint: {reason}")]
    NotStableDiffusion { path: PathBuf, reason: String },
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

/// The message of a caught panic (tch reports libtorch errors, out-of-memory included, as
/// panics carrying the error text).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".to_string())
}
