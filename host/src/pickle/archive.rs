//! The zip format `torch.save` writes since torch 1.6: `<dir>/data.pkl` holds the pickle and
//! `<dir>/data/<key>` each storage's raw bytes (stored, not compressed). Any folder name is
//! accepted, and any other record (`version`, `byteorder`, `.format_version`,
//! `.data/serialization_id`...) is ignored except `byteorder`, which says how the storages'
//! bytes are ordered.
//!
//! `torch.jit.save` writes the same layout for a TorchScript module (OpenAI's `ViT-L-14.pt`)
//! plus `<dir>/code/` (the module's TorchScript source) and `constants.pkl`: when `code/`
//! records are present, `data.pkl` is read as a module tree ([`Dialect::TorchScript`]); the
//! code and constants are never read.

use super::allow_list::Dialect;
use super::machine::{unpickle, Unpickled};
use super::{PickleError, Record};
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

/// The largest `data.pkl` read: a state dict's pickle is a few hundred kilobytes, and a zip
/// entry may claim any size.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// What the archive holds: the unpickled object, each storage's bytes in the file, and
/// whether those bytes are big-endian.
pub(super) struct ZipContents {
    pub unpickled: Unpickled,
    pub records: HashMap<String, Record>,
    pub big_endian: bool,
    /// Whether it is a TorchScript archive (it has `code/` records).
    pub torchscript: bool,
}

/// Reads the archive `bytes` (the whole file) of `path`.
pub(super) fn read(path: &Path, bytes: &[u8]) -> Result<ZipContents, PickleError> {
    let not_torch = |reason: String| PickleError::NotTorchFile {
        path: path.to_path_buf(),
        reason,
    };
    let malformed = |reason: String| PickleError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| not_torch(format!("unreadable zip archive: {e}")))?;
    let pickles: Vec<String> = archive
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .collect();
    let pkl_name = match pickles.as_slice() {
        [one] => one.clone(),
        [] => return Err(not_torch("a zip archive without <folder>/data.pkl".into())),
        _ => return Err(malformed("several data.pkl records".into())),
    };
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let read_record = |archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, limit: u64| {
        let mut out = Vec::new();
        let entry = archive.by_name(name).map_err(|e| e.to_string())?;
        entry
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        if out.len() as u64 > limit {
            return Err(format!("{name} is larger than {limit} bytes"));
        }
        Ok(out)
    };
    let pickle = read_record(&mut archive, &pkl_name, MAX_PICKLE_BYTES).map_err(malformed)?;
    let byteorder_name = format!("{prefix}byteorder");
    let big_endian = if archive.file_names().any(|n| n == byteorder_name) {
        let order = read_record(&mut archive, &byteorder_name, 16).map_err(malformed)?;
        match order.trim_ascii() {
            b"little" => false,
            b"big" => true,
            _ => return Err(malformed("unknown byteorder record".into())),
        }
    } else {
        false
    };

    let code = format!("{prefix}code/");
    let torchscript = archive.file_names().any(|n| n.starts_with(&code));
    let dialect = if torchscript {
        Dialect::TorchScript
    } else {
        Dialect::Checkpoint
    };
    let unpickled = unpickle(path, &pickle, 0, dialect)?;
    let mut records = HashMap::new();
    for (key, decl) in &unpickled.storages {
        let name = format!("{prefix}data/{key}");
        let entry = archive
            .by_name(&name)
            .map_err(|_| PickleError::MissingStorage {
                path: path.to_path_buf(),
                key: key.clone(),
            })?;
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(malformed(format!("storage record {name} is compressed")));
        }
        let start = usize::try_from(entry.data_start()).ok();
        let len = usize::try_from(entry.size()).ok();
        let (start, len) = start
            .zip(len)
            .filter(|(s, l)| s.checked_add(*l).is_some_and(|end| end <= bytes.len()))
            .ok_or_else(|| malformed(format!("storage record {name} lies outside the file")))?;
        records.insert(
            key.clone(),
            Record {
                start,
                len,
                decl: decl.clone(),
            },
        );
    }
    Ok(ZipContents {
        unpickled,
        records,
        big_endian,
        torchscript,
    })
}
