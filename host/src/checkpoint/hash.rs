//! A1111's model hashes: the short sha256 (`Model hash` in infotext) and the legacy 8-hex hash.
//!
//! Hashing a multi-gigabyte checkpoint takes seconds, so results are cached by path, size
//! and modification time in a JSON file, as A1111 caches them in `cache.json`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// File name of the hash cache inside the cache folder.
pub const HASH_CACHE_FILE: &str = "hashes.json";

/// Start and length of the window A1111's legacy hash reads (`sd_models.model_hash`).
const LEGACY_WINDOW: (usize, usize) = (0x10_0000, 0x1_0000);

/// The hashes A1111 shows and matches for a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelHashes {
    /// sha256 of the whole file, lower-case hex.
    pub sha256: String,
    /// sha256 of 64 KiB from offset 1 MiB, first 8 hex characters (pre-1.0 `Model hash`).
    pub legacy: String,
}

impl ModelHashes {
    /// The `Model hash` A1111 writes today: the first 10 hex characters of the sha256.
    pub fn short(&self) -> &str {
        &self.sha256[..10]
    }

    /// Hashes `path`, reading the whole file once.
    pub fn compute(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut full = Sha256::new();
        let mut legacy = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0usize;
        let (window_start, window_len) = LEGACY_WINDOW;
        let window_end = window_start + window_len;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            full.update(chunk);
            let (lo, hi) = (offset.max(window_start), (offset + n).min(window_end));
            if lo < hi {
                legacy.update(&chunk[lo - offset..hi - offset]);
            }
            offset += n;
        }
        Ok(Self {
            sha256: hex(&full.finalize()),
            legacy: hex(&legacy.finalize())[..8].to_string(),
        })
    }

    /// Hashes `path`, using and updating the cache in `cache_dir` when one is given.
    ///
    /// A cache that cannot be read or written only costs time: the hash is still returned.
    pub fn cached(path: &Path, cache_dir: Option<&Path>) -> std::io::Result<Self> {
        let Some(dir) = cache_dir else {
            return Self::compute(path);
        };
        let key = CacheKey::of(path)?;
        let cache_file = dir.join(HASH_CACHE_FILE);
        let mut cache = HashCache::read(&cache_file);
        if let Some(entry) = cache.entries.get(&key.path) {
            if entry.size == key.size && entry.mtime_ns == key.mtime_ns {
                return Ok(entry.hashes.clone());
            }
        }
        let hashes = Self::compute(path)?;
        cache.entries.insert(
            key.path,
            CacheEntry {
                size: key.size,
                mtime_ns: key.mtime_ns,
                hashes: hashes.clone(),
            },
        );
        let _ = cache.write(dir, &cache_file);
        Ok(hashes)
    }
}

/// A1111's legacy 8-hex hash alone (`sd_models.model_hash`): sha256 of the 64 KiB from offset
/// 1 MiB (empty for smaller files), read without hashing the whole file.
pub fn legacy_hash(path: &Path) -> std::io::Result<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let (start, len) = LEGACY_WINDOW;
    file.seek(SeekFrom::Start(start as u64))?;
    let mut window = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut window)?;
    Ok(hex(&Sha256::digest(&window))[..8].to_string())
}

/// How A1111 hashes a network file (`modules/hashes.py: sha256`, `addnet_hash_safetensors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileHashKind {
    /// sha256 of the whole file.
    Sha256,
    /// The "addnet" hash of `.safetensors` LoRAs: sha256 of everything after the header.
    Addnet,
}

/// The addnet hash of a safetensors file: sha256 of the bytes after the 8-byte length and the
/// JSON header, so editing metadata does not change it.
pub fn addnet_hash(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header = u64::from_le_bytes(len);
    std::io::copy(
        &mut std::io::Read::by_ref(&mut file).take(header),
        &mut std::io::sink(),
    )?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(hex(&sha.finalize()))
}

/// The full hex hash of `path` of `kind`, from the cache in `cache_dir` when it holds one for
/// the file as it is now; else computed (and cached) when `compute`, else none.
pub fn cached_file_hash(
    path: &Path,
    kind: FileHashKind,
    cache_dir: Option<&Path>,
    compute: bool,
) -> std::io::Result<Option<String>> {
    if kind == FileHashKind::Sha256 {
        if compute {
            return ModelHashes::cached(path, cache_dir).map(|h| Some(h.sha256));
        }
        let Some(dir) = cache_dir else {
            return Ok(None);
        };
        let key = CacheKey::of(path)?;
        let cache = HashCache::read(&dir.join(HASH_CACHE_FILE));
        return Ok(cache
            .entries
            .get(&key.path)
            .filter(|e| e.size == key.size && e.mtime_ns == key.mtime_ns)
            .map(|e| e.hashes.sha256.clone()));
    }
    let Some(dir) = cache_dir else {
        return if compute {
            addnet_hash(path).map(Some)
        } else {
            Ok(None)
        };
    };
    let key = CacheKey::of(path)?;
    let cache_file = dir.join(HASH_CACHE_FILE);
    let mut cache = HashCache::read(&cache_file);
    if let Some(entry) = cache.addnet.get(&key.path) {
        if entry.size == key.size && entry.mtime_ns == key.mtime_ns {
            return Ok(Some(entry.hash.clone()));
        }
    }
    if !compute {
        return Ok(None);
    }
    let hash = addnet_hash(path)?;
    // Read again: another hasher may have written meanwhile, and its entries must stay.
    cache = HashCache::read(&cache_file);
    cache.addnet.insert(
        key.path,
        AddnetEntry {
            size: key.size,
            mtime_ns: key.mtime_ns,
            hash: hash.clone(),
        },
    );
    let _ = cache.write(dir, &cache_file);
    Ok(Some(hash))
}

/// The default cache folder: `$SDHOST_CACHE_DIR`, else `$XDG_CACHE_HOME/sdhost`, else `~/.cache/sdhost`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SDHOST_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sdhost"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct CacheKey {
    path: String,
    size: u64,
    mtime_ns: u128,
}

impl CacheKey {
    fn of(path: &Path) -> std::io::Result<Self> {
        let canonical = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&canonical)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Self {
            path: canonical.to_string_lossy().into_owned(),
            size: meta.len(),
            mtime_ns,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: u128,
    hashes: ModelHashes,
}

#[derive(Serialize, Deserialize)]
struct AddnetEntry {
    size: u64,
    mtime_ns: u128,
    hash: String,
}

#[derive(Default, Serialize, Deserialize)]
struct HashCache {
    entries: BTreeMap<String, CacheEntry>,
    /// Addnet hashes of LoRA files, apart: a file's sha256 entry says nothing of it.
    #[serde(default)]
    addnet: BTreeMap<String, AddnetEntry>,
}

impl HashCache {
    /// The cache in `file`; entries whose hashes are not the hex digests sdhost writes (a
    /// hand-edited or damaged file) are dropped, so they are computed again: `short()` slices
    /// the sha256 and would panic on a short one.
    fn read(file: &Path) -> Self {
        let mut cache: Self = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let hex_of =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        cache
            .entries
            .retain(|_, e| hex_of(&e.hashes.sha256, 64) && hex_of(&e.hashes.legacy, 8));
        cache.addnet.retain(|_, e| hex_of(&e.hash, 64));
        cache
    }

    /// Writes through a temporary file so that concurrent readers never see half a cache.
    fn write(&self, dir: &Path, file: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_cache_entry_is_computed_again_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, b"weights").unwrap();
        let key = CacheKey::of(&file).unwrap();
        let damaged = serde_json::json!({
            "entries": { key.path.clone(): {
                "size": key.size, "mtime_ns": key.mtime_ns,
                "hashes": { "sha256": "abc", "legacy": "" }
            }},
            "addnet": { key.path: { "size": key.size, "mtime_ns": key.mtime_ns, "hash": "x" }}
        });
        std::fs::write(dir.path().join(HASH_CACHE_FILE), damaged.to_string()).unwrap();
        let hashes = ModelHashes::cached(&file, Some(dir.path())).unwrap();
        assert_eq!(hashes, ModelHashes::compute(&file).unwrap());
        assert_eq!(hashes.short().len(), 10);
        let addnet = cached_file_hash(&file, FileHashKind::Addnet, Some(dir.path()), false);
        assert_eq!(
            addnet.unwrap(),
            None,
            "the damaged addnet entry is not used"
        );
    }
}
