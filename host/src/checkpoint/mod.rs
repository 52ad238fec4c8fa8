//! Checkpoint files as users have them: A1111/CompVis single-file `.safetensors`, and the
//! `.ckpt`/`.pt` pickles of older models, read through the restricted unpickler
//! ([`crate::pickle::load_state_dict`]: tensors and A1111's allow-list only, nothing executed).
//!
//! Either way a [`Checkpoint`] is a tensor source by key: `.safetensors` files are
//! memory-mapped and only their header is parsed up front; pickles are unpickled up front (a
//! few hundred kilobytes) and their storages stay in the mapped file. Each tensor is copied out
//! once, straight into the dtype and device the network runs in.

mod architecture;
mod family;
mod hash;
mod prediction;
mod safetensors_file;
mod verify;

pub use architecture::{infer_architecture, infer_architecture_with_reason, SIZE_EMBEDDING_DIM};
pub use family::{detect_family, FamilyDetection};
pub use hash::{
    addnet_hash, cached_file_hash, default_cache_dir, legacy_hash, FileHashKind, ModelHashes,
    HASH_CACHE_FILE,
};
pub use prediction::{
    detect_prediction, needs_v_test, prediction_from_file, v_prediction_test, v_test_mean,
    PredictionDetection,
};
pub use verify::verify_structure;

use crate::pickle::StateDict;
use crate::weights::TensorSource;
use crate::weights::{LoadError, Result};
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use safetensors_file::SafetensorsFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An opened checkpoint: its tensors by key, from either file format.
pub struct Checkpoint {
    path: PathBuf,
    store: Store,
}

/// Where a checkpoint's tensors come from.
enum Store {
    Safetensors(SafetensorsFile),
    Pickle(StateDict),
}

impl Checkpoint {
    /// Opens `path`: a `.safetensors` file (header parsed, data mapped), or a `.ckpt`/`.pt`
    /// pickle (zip or legacy `torch.save`) through the restricted unpickler. Hostile pickles
    /// and malformed files give typed errors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| LoadError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(LoadError::Empty { path });
        }
        // SAFETY: the map is read-only; a file truncated by another process while mapped is
        // outside what any mmap-based loader (A1111's included) can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let store = if is_pickle(&path, &mmap) {
            drop(mmap);
            Store::Pickle(StateDict::open(&path)?)
        } else {
            Store::Safetensors(SafetensorsFile::new(&path, mmap)?)
        };
        Ok(Self { path, store })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it was read from a pickle (`.ckpt`/`.pt`) rather than `.safetensors`.
    pub fn is_pickle(&self) -> bool {
        matches!(self.store, Store::Pickle(_))
    }

    /// The `.safetensors` header's `__metadata__` entry `key` (pickles have none).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        match &self.store {
            Store::Safetensors(file) => file.metadata(key),
            Store::Pickle(_) => None,
        }
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.store {
            Store::Safetensors(file) => Box::new(file.keys()),
            Store::Pickle(sd) => Box::new(sd.keys()),
        }
    }

    /// The stored shape of `key`.
    pub fn shape(&self, key: &str) -> Option<Vec<i64>> {
        match &self.store {
            Store::Safetensors(file) => file.shape(key),
            Store::Pickle(sd) => sd.shape(key).map(<[i64]>::to_vec),
        }
    }

    /// Checks that `key` exists with exactly `shape`, naming the file and key otherwise.
    pub fn expect_shape(&self, key: &str, shape: &[i64]) -> Result<()> {
        let found = self
            .shape(key)
            .ok_or_else(|| crate::weights::missing(&self.path, key))?;
        if found != shape {
            return Err(LoadError::ShapeMismatch {
                path: self.path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        Ok(())
    }

    /// The stored dtype of `key`.
    pub fn dtype(&self, key: &str) -> Option<Dtype> {
        match &self.store {
            Store::Safetensors(file) => file.dtype(key),
            Store::Pickle(sd) => sd.kind(key).and_then(dtype_of),
        }
    }

    /// Number of floating-point values (parameters) and their bytes under keys starting with
    /// `prefix`; integer buffers such as `position_ids` are not parameters.
    pub fn size_under(&self, prefix: &str) -> (u64, u64) {
        self.keys()
            .filter(|k| k.starts_with(prefix))
            .filter(|k| self.dtype(k).is_some_and(is_float))
            .fold((0, 0), |(n, b), key| {
                let count: i64 = self.shape(key).unwrap_or_default().iter().product();
                let bytes = match &self.store {
                    Store::Safetensors(file) => file.stored_bytes(key).unwrap_or(0),
                    Store::Pickle(sd) => sd
                        .kind(key)
                        .map_or(0, |k| (count as usize * k.elt_size_in_bytes()) as u64),
                };
                (n + count as u64, b + bytes)
            })
    }

    /// Every tensor in its stored dtype, on the CPU: the whole file in memory, for the small
    /// files read whole (LoRA, VAE).
    pub fn read_all(&self) -> Result<BTreeMap<String, Tensor>> {
        self.keys()
            .map(|key| Ok((key.to_string(), self.raw(key)?)))
            .collect()
    }

    /// The raw tensor under `key` in its stored dtype, on the CPU.
    pub fn raw(&self, key: &str) -> Result<Tensor> {
        match &self.store {
            Store::Safetensors(file) => file.raw(key),
            Store::Pickle(sd) => Ok(sd
                .tensor(key)
                .ok_or_else(|| crate::weights::missing(&self.path, key))??),
        }
    }
}

impl TensorSource for Checkpoint {
    fn stored_shape(&self, key: &str) -> Option<Vec<i64>> {
        self.shape(key)
    }

    fn tensor(&self, key: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        self.expect_shape(key, shape)?;
        match &self.store {
            Store::Safetensors(file) => file.tensor(key, kind, device),
            Store::Pickle(sd) => {
                let out = self.raw(key)?.f_to_device(device)?.f_to_kind(kind)?;
                sd.release(key);
                Ok(out)
            }
        }
    }
}

fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// The libtorch dtype for a safetensors dtype, where one exists.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// The safetensors dtype for a libtorch dtype, where one exists.
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// Pickle checkpoints are zip archives (torch ≥ 1.6) or raw pickles (protocol 2+ starts with
/// 0x80); a pickle extension sends any other content to the unpickler too, whose error then
/// says what the file is not.
fn is_pickle(path: &Path, bytes: &[u8]) -> bool {
    let by_extension = matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("ckpt" | "pt" | "pth" | "bin")
    );
    by_extension || bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80)
}
