//! A restricted reader for PyTorch's pickle files: `.ckpt`, `.pt`, `.pth` and `.bin`, in both
//! `torch.save` formats (the zip archive of torch ≥ 1.6, [`archive`], and the legacy stream,
//! [`legacy`]).
//!
//! Pickles are programs: a hostile one can name any Python function and call it. This reader
//! runs the pickle opcodes itself ([`machine`]) and only ever resolves the globals of A1111's
//! allow-list (`modules/safe.py`, `RestrictedUnpickler`; [`allow_list`]), each rebuilt as an
//! inert [`Value`]: tensors, storages, `OrderedDict`, `set`, `torch.Size`, numpy scalars,
//! `ParameterDict`, Lightning's `ModelCheckpoint` (and, only inside a TorchScript archive,
//! `__torch__.` module objects). Any other global, call, object or state change is refused
//! with a [`PickleError`] naming it, and nothing is executed. Sizes are checked against the
//! file before anything is allocated, so a crafted file gives an error, not a crash.
//!
//! Two ways in:
//! * [`load_state_dict`] (or [`StateDict::open`]): a checkpoint's tensors by key, unwrapped as
//!   A1111's `sd_models.get_state_dict_from_checkpoint` does (the Lightning `state_dict`
//!   wrapper, the key renames of old checkpoints). Tensors are read lazily from the mapped
//!   file. Checkpoints, VAEs and LoRA `.pt` files use this.
//!   TorchScript archives (`torch.jit.save`, OpenAI's CLIP `ViT-L-14.pt`) open the same way:
//!   their module tree is flattened to the keys `state_dict()` would give ([`script_module`]).
//! * [`TorchFile::open`]: the raw unpickled object ([`TorchFile::root`]) with int keys,
//!   tuples and metadata, and [`TorchFile::tensor`] for each [`TensorRef`] in it. Textual
//!   inversion embeddings ([`embedding_vectors`]) and hypernetworks use this.

mod allow_list;
mod archive;
mod legacy;
mod machine;
mod script_module;
mod state_dict;
#[cfg(test)]
mod tests;
mod text;
mod value;

pub use machine::MAX_DEPTH;
pub use state_dict::{load_state_dict, StateDict};
pub use value::{NumpyDtype, TensorRef, Value};

use machine::StorageDecl;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Errors of the restricted unpickler.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is neither a torch zip archive nor a legacy `torch.save` stream.
    #[error("{path}: not a PyTorch file ({reason})")]
    NotTorchFile { path: PathBuf, reason: String },
    /// The pickle names a Python global outside the allow-list.
    #[error("{path}: refused to load: the pickle names the Python global `{module}.{name}`, which is not a tensor or container type (the file may be malicious; nothing was run)")]
    RefusedGlobal {
        path: PathBuf,
        module: String,
        name: String,
    },
    /// The pickle asks for a call, object or operation outside what tensors need.
    #[error("{path}: refused to load: the pickle asks for {what} (the file may be malicious; nothing was run)")]
    Refused { path: PathBuf, what: String },
    /// The pickle stream or archive is malformed.
    #[error("{path}: malformed PyTorch file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// The file ends before `what` does.
    #[error("{path}: truncated: the file ends inside {what}")]
    Truncated { path: PathBuf, what: String },
    /// A storage the pickle refers to has no data record.
    #[error("{path}: storage `{key}` has no data in the file")]
    MissingStorage { path: PathBuf, key: String },
    /// A storage holds fewer elements than declared or than a tensor views.
    #[error("{path}: storage `{key}` is too short: {reason}")]
    BadStorage {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// The file holds no state dict (a mapping of names to tensors).
    #[error("{path}: not a state dict: {reason}")]
    NotStateDict { path: PathBuf, reason: String },
    /// A TorchScript module tree too large to flatten (shared submodules reached too often).
    #[error("{path}: the TorchScript module tree has more than {limit} tensors or objects")]
    ModuleTreeTooLarge { path: PathBuf, limit: usize },
    /// The pickle has no recognisable embedding in it.
    #[error("{path}: no embedding tensor found (expected `string_to_param` or a single tensor)")]
    NoEmbedding { path: PathBuf },
    /// libtorch refused to build a tensor.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Where one storage's bytes lie in the file.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    start: usize,
    len: usize,
    decl: StorageDecl,
}

/// A parsed `torch.save` file: the unpickled root and the mapped file its storages are in.
pub struct TorchFile {
    path: PathBuf,
    mmap: Mmap,
    records: HashMap<String, Record>,
    big_endian: bool,
    torchscript: bool,
    /// The unpickled root object.
    pub root: Value,
}

impl TorchFile {
    /// Maps and unpickles `path` (zip or legacy format), refusing anything outside the
    /// allow-list.
    pub fn open(path: &Path) -> Result<Self, PickleError> {
        let io = |source| PickleError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: a read-only map; as for safetensors checkpoints, a file truncated by another
        // process while mapped is outside what a loader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        // A zip archive, or a file cut inside the zip signature (an error from the zip reader
        // describes that best).
        let zip_magic = b"PK\x03\x04";
        let is_zip =
            zip_magic.starts_with(&mmap[..mmap.len().min(4)]) || mmap.starts_with(zip_magic);
        let (unpickled, records, big_endian, torchscript) = if is_zip {
            let zip = archive::read(path, &mmap)?;
            (zip.unpickled, zip.records, zip.big_endian, zip.torchscript)
        } else {
            let old = legacy::read(path, &mmap)?;
            (old.unpickled, old.records, false, false)
        };
        for (key, record) in &records {
            let needed = record
                .decl
                .numel
                .checked_mul(record.decl.kind.elt_size_in_bytes() as i64);
            if needed.is_none_or(|n| n > record.len as i64) {
                return Err(PickleError::BadStorage {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    reason: format!(
                        "{} bytes for {} declared elements",
                        record.len, record.decl.numel
                    ),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            records,
            big_endian,
            torchscript,
            root: unpickled.root,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file is a TorchScript archive (`torch.jit.save`), whose root is the module
    /// object (see [`script_module`]).
    pub fn is_torchscript(&self) -> bool {
        self.torchscript
    }

    fn bytes_of(&self, t: &TensorRef) -> Result<(&[u8], i64), PickleError> {
        let record = self
            .records
            .get(&t.key)
            .ok_or_else(|| PickleError::MissingStorage {
                path: self.path.clone(),
                key: t.key.clone(),
            })?;
        let elem = t.kind.elt_size_in_bytes();
        if record.decl.kind != t.kind {
            return Err(PickleError::Malformed {
                path: self.path.clone(),
                reason: format!("a tensor views storage {} as another dtype", t.key),
            });
        }
        let numel = (record.len / elem) as i64;
        let (first, end) =
            value::view_span(t, numel).map_err(|reason| PickleError::BadStorage {
                path: self.path.clone(),
                key: t.key.clone(),
                reason,
            })?;
        let start = record.start + first as usize * elem;
        Ok((&self.mmap[start..record.start + end as usize * elem], first))
    }

    /// Checks that the view `t` fits in its storage, without reading any data.
    pub fn check(&self, t: &TensorRef) -> Result<(), PickleError> {
        self.bytes_of(t).map(drop)
    }

    /// Reads the data of a tensor reference into a contiguous CPU tensor in its stored dtype.
    pub fn tensor(&self, t: &TensorRef) -> Result<Tensor, PickleError> {
        let (bytes, first) = self.bytes_of(t)?;
        if bytes.is_empty() {
            return Ok(Tensor::f_zeros(&t.size, (t.kind, tch::Device::Cpu))?);
        }
        let elem = t.kind.elt_size_in_bytes();
        let span = (bytes.len() / elem) as i64;
        let storage = if self.big_endian && elem > 1 {
            let mut swapped = bytes.to_vec();
            swapped.chunks_mut(elem).for_each(<[u8]>::reverse);
            Tensor::f_from_data_size(&swapped, &[span], t.kind)?
        } else {
            Tensor::f_from_data_size(bytes, &[span], t.kind)?
        };
        Ok(storage
            .f_as_strided(&t.size, &t.stride, t.offset - first)?
            .f_contiguous()?)
    }

    /// Drops the mapped pages of `t` from this process once its tensor was read, so loading a
    /// large checkpoint does not hold the file's pages and the converted weights at once.
    pub fn release(&self, t: &TensorRef) {
        if let Ok((bytes, _)) = self.bytes_of(t) {
            if bytes.is_empty() {
                return;
            }
            let offset = bytes.as_ptr() as usize - self.mmap.as_ptr() as usize;
            // SAFETY: a read-only file mapping: MADV_DONTNEED only unmaps its pages, which
            // fault in again, unchanged, if anything reads them later.
            unsafe {
                let _ = self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    offset,
                    bytes.len(),
                );
            }
        }
    }
}

/// The vectors of an A1111/textual-inversion `.pt` embedding.
pub fn embedding_vectors(path: &Path) -> Result<Tensor, PickleError> {
    let file = TorchFile::open(path)?;
    let root = file.root.clone();
    // SDXL embeddings: one part per text encoder, CLIP-L's first.
    if let (Some(Value::Tensor(l)), Some(Value::Tensor(g))) =
        (root.get("clip_l"), root.get("clip_g"))
    {
        let (l, g) = (file.tensor(&l)?, file.tensor(&g)?);
        // Parts of different lengths are not one embedding.
        return Tensor::f_cat(&[l, g], -1).map_err(|_| PickleError::NoEmbedding {
            path: path.to_path_buf(),
        });
    }
    let candidate = match root.get("string_to_param") {
        Some(params) => params.dict_values().into_iter().next(),
        None => {
            let values = root.dict_values();
            (values.len() == 1).then(|| values[0].clone())
        }
    };
    match candidate {
        Some(Value::Tensor(t)) => file.tensor(&t),
        _ => Err(PickleError::NoEmbedding {
            path: path.to_path_buf(),
        }),
    }
}
