//! Checkpoint files as users have them: A1111/CompVis single-file `.safetensors`.
//!
//! The file is memory-mapped; only the header is parsed up front and each tensor is copied
//! out of the map once, straight into the dtype and device the network runs in.

mod architecture;
mod hash;
mod verify;

pub use architecture::infer_architecture;
pub use hash::{
    addnet_hash, cached_file_hash, default_cache_dir, FileHashKind, ModelHashes, HASH_CACHE_FILE,
};
pub use verify::verify_structure;

use crate::weights::TensorSource;
use crate::weights::{LoadError, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An opened `.safetensors` checkpoint: the mapped file and its parsed header.
pub struct Checkpoint {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// Maps `path` and parses its safetensors header, refusing pickles and malformed files.
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
        if is_pickle(&path, &mmap) {
            return Err(LoadError::PickleCheckpoint { path });
        }
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
                LoadError::InvalidSafetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            data_start: 8 + header_len,
            tensors: collect_tensors(&metadata),
            path,
            mmap,
        })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The stored shape of `key`.
    pub fn shape(&self, key: &str) -> Option<Vec<i64>> {
        self.tensors
            .get(key)
            .map(|info| info.shape.iter().map(|&d| d as i64).collect())
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
        self.tensors.get(key).map(|info| info.dtype)
    }

    /// Number of floating-point values (parameters) and their bytes under keys starting with
    /// `prefix`; integer buffers such as `position_ids` are not parameters.
    pub fn size_under(&self, prefix: &str) -> (u64, u64) {
        self.tensors
            .iter()
            .filter(|(k, info)| k.starts_with(prefix) && is_float(info.dtype))
            .fold((0, 0), |(n, b), (_, info)| {
                let count: usize = info.shape.iter().product();
                let bytes = info.data_offsets.1 - info.data_offsets.0;
                (n + count as u64, b + bytes as u64)
            })
    }

    /// The raw tensor under `key` in its stored dtype, on the CPU.
    pub fn raw(&self, key: &str) -> Result<Tensor> {
        let info = self
            .tensors
            .get(key)
            .ok_or_else(|| crate::weights::missing(&self.path, key))?;
        let kind = kind_of(info.dtype).ok_or_else(|| LoadError::UnsupportedDtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(bytes, &shape, kind)?)
    }

    /// Drops the mapped pages of `key` from this process once its tensor was copied, so loading
    /// does not hold the file's pages and the converted weights at once (peak memory); the page
    /// cache keeps them, and a later read maps them in again.
    fn release(&self, key: &str) {
        if let Some(info) = self.tensors.get(key) {
            let (start, end) = info.data_offsets;
            // SAFETY: the map is a read-only file mapping: MADV_DONTNEED only unmaps its pages,
            // which fault in again from the file, unchanged, if anything reads them later.
            unsafe {
                let _ = self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.data_start + start,
                    end - start,
                );
            }
        }
    }

    /// A CPU tensor viewing the mapped bytes of `key`, when they are aligned for its dtype.
    fn mapped_view(&self, key: &str) -> Result<Option<Tensor>> {
        let Some(info) = self.tensors.get(key) else {
            return Err(crate::weights::missing(&self.path, key));
        };
        let Some(kind) = kind_of(info.dtype) else {
            return Ok(None);
        };
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        if bytes.is_empty() || (bytes.as_ptr() as usize) % kind.elt_size_in_bytes() != 0 {
            return Ok(None);
        }
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let mut strides = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        // SAFETY: the bytes are in bounds (validated header), aligned (checked above), and the
        // view never escapes: `tensor` copies it before returning.
        let view =
            unsafe { Tensor::f_from_blob(bytes.as_ptr(), &shape, &strides, kind, Device::Cpu)? };
        Ok(Some(view))
    }
}

impl TensorSource for Checkpoint {
    fn stored_shape(&self, key: &str) -> Option<Vec<i64>> {
        self.shape(key)
    }

    fn tensor(&self, key: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        self.expect_shape(key, shape)?;
        let Some(view) = self.mapped_view(key)? else {
            return Ok(self.raw(key)?.f_to_device(device)?.f_to_kind(kind)?);
        };
        // One pass from the page cache into the final dtype and device; a view that would
        // survive unchanged (same dtype, CPU) is copied so no tensor outlives the map.
        let out = view.f_to_device(device)?.f_to_kind(kind)?;
        let out = if out.data_ptr() == view.data_ptr() {
            out.f_detach_copy()?
        } else {
            out
        };
        drop(view);
        self.release(key);
        Ok(out)
    }
}

fn collect_tensors(metadata: &Metadata) -> BTreeMap<String, TensorInfo> {
    metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.clone()))
        .collect()
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

/// Pickle checkpoints are zip archives (torch ≥ 1.6) or raw pickles (protocol 2+, 0x80).
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
