//! The legacy format of `torch.save` (torch before 1.6, or
//! `_use_new_zipfile_serialization=False`): five pickles in a row (the magic number, the
//! protocol version, the saver's `sys_info`, the object, and the sorted list of storage keys),
//! then each storage as its element count (int64, little-endian) and its raw bytes.

use super::allow_list::Dialect;
use super::machine::{unpickle, Unpickled};
use super::value::Value;
use super::{PickleError, Record};
use std::collections::HashMap;
use std::path::Path;

/// torch's legacy magic number 0x1950a86a20f9469cfc6c, as a pickle stores it.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The only legacy protocol version torch ever wrote.
const PROTOCOL_VERSION: i64 = 1001;

/// What the file holds: the unpickled object and each storage's bytes in the file.
pub(super) struct LegacyContents {
    pub unpickled: Unpickled,
    pub records: HashMap<String, Record>,
}

/// Reads the legacy-format file `bytes` of `path`.
pub(super) fn read(path: &Path, bytes: &[u8]) -> Result<LegacyContents, PickleError> {
    let malformed = |reason: String| PickleError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    // The first pickle goes through the restricted machine like the others: a hostile raw
    // pickle is refused here, before anything tells it apart from a torch file.
    // A stream that does not even start with a protocol opcode is more likely some other
    // file than a broken pickle.
    let magic = unpickle(path, bytes, 0, Dialect::Checkpoint).map_err(|e| match e {
        PickleError::Malformed { reason, .. } if bytes.first() != Some(&0x80) => {
            PickleError::NotTorchFile {
                path: path.to_path_buf(),
                reason: format!("not a zip archive, and not a pickle: {reason}"),
            }
        }
        other => other,
    })?;
    if !matches!(&magic.root, Value::BigInt(b) if b.as_slice() == MAGIC) {
        return Err(PickleError::NotTorchFile {
            path: path.to_path_buf(),
            reason: "a pickle without torch's magic number".into(),
        });
    }
    let protocol = unpickle(path, bytes, magic.end, Dialect::Checkpoint)?;
    if !matches!(protocol.root, Value::Int(PROTOCOL_VERSION)) {
        return Err(malformed("unsupported legacy protocol version".into()));
    }
    let sys_info = unpickle(path, bytes, protocol.end, Dialect::Checkpoint)?;
    let unpickled = unpickle(path, bytes, sys_info.end, Dialect::Checkpoint)?;
    let key_list = unpickle(path, bytes, unpickled.end, Dialect::Checkpoint)?;
    let Value::List(keys) = &key_list.root else {
        return Err(malformed("the storage key list is not a list".into()));
    };

    let mut records = HashMap::new();
    let mut pos = key_list.end;
    for key in keys.borrow().iter() {
        let Value::Str(key) = key else {
            return Err(malformed("a storage key is not a string".into()));
        };
        let decl = unpickled.storages.get(key).ok_or_else(|| {
            malformed(format!("the storage key list names unknown storage {key}"))
        })?;
        let truncated = || PickleError::Truncated {
            path: path.to_path_buf(),
            what: format!("storage {key}"),
        };
        let count = bytes.get(pos..pos + 8).ok_or_else(truncated)?;
        let numel = i64::from_le_bytes(count.try_into().expect("8 bytes"));
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(decl.kind.elt_size_in_bytes()))
            .ok_or_else(|| malformed(format!("storage {key} has a bad element count")))?;
        let start = pos + 8;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(truncated)?;
        records.insert(
            key.clone(),
            Record {
                start,
                len,
                decl: decl.clone(),
            },
        );
        pos = end;
    }
    Ok(LegacyContents { unpickled, records })
}
