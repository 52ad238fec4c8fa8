//! A memory-mapped `.safetensors` file: only the header is parsed up front and each tensor is
//! copied out of the map once, straight into the dtype and device the network runs in.

use super::kind_of;
use crate::weights::{LoadError, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A mapped `.safetensors` file and its parsed header.
pub(super) struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Parses the header of the mapped file `mmap` of `path`.
    pub(super) fn new(path: &Path, mmap: Mmap) -> Result<Self> {
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
                LoadError::InvalidSafetensors {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        let text = metadata
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            data_start: 8 + header_len,
            tensors,
            metadata: text,
            mmap,
        })
    }

    /// The header's `__metadata__` entry `key`.
    pub(super) fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub(super) fn shape(&self, key: &str) -> Option<Vec<i64>> {
        self.tensors
            .get(key)
            .map(|info| info.shape.iter().map(|&d| d as i64).collect())
    }

    pub(super) fn dtype(&self, key: &str) -> Option<Dtype> {
        self.tensors.get(key).map(|info| info.dtype)
    }

    pub(super) fn stored_bytes(&self, key: &str) -> Option<u64> {
        self.tensors
            .get(key)
            .map(|info| (info.data_offsets.1 - info.data_offsets.0) as u64)
    }

    fn info(&self, key: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(key)
            .ok_or_else(|| crate::weights::missing(&self.path, key))
    }

    pub(super) fn raw(&self, key: &str) -> Result<Tensor> {
        let info = self.info(key)?;
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
        let info = self.info(key)?;
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

    /// `key` converted to `kind` on `device` (its shape already checked).
    pub(super) fn tensor(&self, key: &str, kind: Kind, device: Device) -> Result<Tensor> {
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
