//! The hash a LoRA gets in infotext (`Lora hashes`; A1111's `network.py: NetworkOnDisk`
//! with `modules/hashes.py`): the `sshs_model_hash` metadata when the trainer stored one, else
//! for a `.safetensors` the "addnet" hash (sha256 of everything after the JSON header), else the
//! sha256 of the file; 12 hex characters are shown.

use crate::checkpoint::{cached_file_hash, default_cache_dir};
use crate::extra_networks::catalog::NetworkFile;

/// The full hash of `file` (lower-case hex) by A1111's rules, cached with the model hashes.
pub fn network_hash(file: &NetworkFile) -> std::io::Result<String> {
    if let Some(hash) = file.stored_hash() {
        return Ok(hash.to_string());
    }
    let cache = default_cache_dir();
    Ok(
        cached_file_hash(&file.path, file.lora_hash_kind(), cache.as_deref(), true)?
            .unwrap_or_default(),
    )
}

/// The 12-character form infotext shows.
pub fn short_hash(full: &str) -> String {
    full.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::path::Path;

    fn file(path: &Path, metadata: &[(&str, &str)]) -> NetworkFile {
        NetworkFile {
            name: "n".into(),
            alias: "n".into(),
            path: path.to_path_buf(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn safetensors_hash_skips_the_header_and_metadata_wins() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("a.safetensors");
        let mut bytes = 4u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}  abc");
        std::fs::write(&st, &bytes).unwrap();
        let expected: String = Sha256::digest(b"abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(network_hash(&file(&st, &[])).unwrap(), expected);
        assert_eq!(
            network_hash(&file(&st, &[("sshs_model_hash", "beef")])).unwrap(),
            "beef"
        );
        let pt = dir.path().join("a.pt");
        std::fs::write(&pt, b"abc").unwrap();
        assert_eq!(network_hash(&file(&pt, &[])).unwrap(), expected);
        assert_eq!(short_hash(&expected).len(), 12);
    }
}
