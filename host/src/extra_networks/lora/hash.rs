//! The hash a LoRA gets in infotext (`Lora hashes`; A1111's `network.py: NetworkOnDisk`
//! with `modules/hashes.py`): the `sshs_model_hash` metadata when the trainer stored one, else
//! for a `.safetensors` the "addnet" hash (sha256 of everything after the JSON header), else the
//! sha256 of the file; 12 hex characters are shown.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::extra_networks::catalog::NetworkFile;

/// The full hash of `file` (lower-case hex) by A1111's rules.
pub fn network_hash(file: &NetworkFile) -> std::io::Result<String> {
    if let Some(hash) = file.metadata.get("sshs_model_hash") {
        if !hash.is_empty() {
            return Ok(hash.clone());
        }
    }
    let skip = if file.is_safetensors() {
        safetensors_data_offset(&file.path)?
    } else {
        0
    };
    sha256_from(&file.path, skip)
}

/// The 12-character form infotext shows.
pub fn short_hash(full: &str) -> String {
    full.chars().take(12).collect()
}

/// Where the tensor data of a `.safetensors` starts: after the 8-byte length and the header.
fn safetensors_data_offset(path: &Path) -> std::io::Result<u64> {
    let mut length = [0u8; 8];
    std::fs::File::open(path)?.read_exact(&mut length)?;
    Ok(8 + u64::from_le_bytes(length))
}

fn sha256_from(path: &Path, offset: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
