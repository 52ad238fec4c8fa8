//! CLIP text features of the category lists, kept on disk between interrogations.
//!
//! A1111 encodes every candidate line on every click (`modules/interrogate.py:
//! InterrogateModels.rank`; ≈3 300 lines with the default limit). The features depend only on
//! the CLIP weights and the lines, so we store them once per category file, as clip-interrogator
//! does with its `ViT-L-14_openai_<category>.safetensors`. A cached result is the same tensor,
//! bit for bit, as computing it again (fp32 bytes stored as they came from the model).
//!
//! One `.safetensors` file per (category name, CLIP identity) holds the features [N, E] of the
//! lines that were ranked, with metadata naming the CLIP identity and the sha256 of those lines;
//! a file whose key, shape or format does not match is recomputed and replaced. The cache is
//! an optimisation only: unreadable or corrupt files are rewritten and failures to write are
//! reported on stderr, never returned as errors.

use super::ClipFeatures;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Names the layout of the cache files; a different value means "recompute".
const FORMAT: &str = "sdhost-clip-text-features-1";
const TENSOR: &str = "text_features";

/// The folder of cached text features.
#[derive(Clone, Debug)]
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    /// The cache in `dir` (created when the first file is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unnormalised text features [N, E] (fp32, CPU) of `lines`, the ranked lines of the
    /// category `category`: read from the cache when it holds them for `clip`'s identity and
    /// exactly these lines, else computed by `clip` and stored.
    pub fn text_features(
        &self,
        clip: &dyn ClipFeatures,
        category: &str,
        lines: &[String],
    ) -> Tensor {
        let path = self.file_of(clip.identity(), category);
        let lines_sha256 = lines_sha256(lines);
        if let Some(features) = read_cached(&path, clip.identity(), &lines_sha256, lines.len()) {
            return features;
        }
        let features = clip
            .text_features(lines)
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        if let Err(error) = self.write(&path, clip.identity(), &lines_sha256, &features) {
            eprintln!(
                "sdhost: CLIP text features of {category:?} not cached in {}: {error}",
                path.display()
            );
        }
        features
    }

    /// `<category, made file-name safe>-<16 hex of sha256(category, identity)>.safetensors`:
    /// the hash keeps two CLIP models' files (and names that sanitise alike) apart.
    fn file_of(&self, identity: &str, category: &str) -> PathBuf {
        let safe: String = category
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
                _ => '_',
            })
            .collect();
        let safe = safe.trim_start_matches('.');
        let mut hasher = Sha256::new();
        for part in [category, identity] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let hash = hex(&hasher.finalize());
        self.dir.join(format!("{safe}-{}.safetensors", &hash[..16]))
    }

    /// Writes the file whole under a temporary name and renames it into place, so a reader
    /// (another process, a crash mid-write) never sees half a file.
    fn write(
        &self,
        path: &Path,
        identity: &str,
        lines_sha256: &str,
        features: &Tensor,
    ) -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(&self.dir)?;
        let shape: Vec<usize> = features.size().iter().map(|&d| d as usize).collect();
        let numel = features.numel();
        let mut bytes = vec![0u8; numel * 4];
        features.f_copy_data_u8(&mut bytes, numel)?;
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)?;
        let metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("identity", identity.to_string()),
            ("lines_sha256", lines_sha256.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let serialized = safetensors::serialize([(TENSOR, view)], Some(metadata))?;
        let mut temporary = tempfile::NamedTempFile::new_in(&self.dir)?;
        temporary.write_all(&serialized)?;
        temporary.as_file().sync_all()?;
        temporary.persist(path)?;
        Ok(())
    }
}

/// The cached features when `path` holds them for this key, else `None` (missing, corrupt,
/// another key or shape: the caller recomputes and overwrites).
fn read_cached(path: &Path, identity: &str, lines_sha256: &str, count: usize) -> Option<Tensor> {
    let bytes = std::fs::read(path).ok()?;
    let file = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let metadata = header.metadata().as_ref()?;
    let matches = |key: &str, value: &str| metadata.get(key).map(String::as_str) == Some(value);
    if !(matches("format", FORMAT)
        && matches("identity", identity)
        && matches("lines_sha256", lines_sha256))
    {
        return None;
    }
    let view = file.tensor(TENSOR).ok()?;
    let shape = view.shape();
    if view.dtype() != safetensors::Dtype::F32
        || shape.len() != 2
        || shape[0] != count
        || shape[1] == 0
    {
        return None;
    }
    let size = [shape[0] as i64, shape[1] as i64];
    Tensor::f_from_data_size(view.data(), &size, Kind::Float).ok()
}

/// sha256 of the lines, each as its byte length (u64 little-endian) then its UTF-8 bytes, so
/// no two different lists share an encoding.
fn lines_sha256(lines: &[String]) -> String {
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update((line.len() as u64).to_le_bytes());
        hasher.update(line.as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrogate::seeded_features::SeededClipFeatures;

    fn lines(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        Vec::<f32>::try_from(t.reshape([-1]))
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    fn only_file(dir: &Path) -> PathBuf {
        let files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    #[test]
    fn a_hit_is_bit_identical_to_computing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path().join("cache"));
        let clip = SeededClipFeatures::new(48, "model-a");
        let items = lines(&["Alice", "", "José ’quoted’", "Alice"]);
        let direct = clip.text_features(&items);
        let miss = cache.text_features(&clip, "artists", &items);
        assert_eq!(clip.encoded_lines(), 8);
        let hit = cache.text_features(&clip, "artists", &items);
        assert_eq!(clip.encoded_lines(), 8, "a hit encodes nothing");
        assert_eq!(hit.size(), [4, 48]);
        assert_eq!(bits(&hit), bits(&direct));
        assert_eq!(bits(&miss), bits(&direct));
        // No temporary file left behind.
        let file = only_file(&dir.path().join("cache"));
        assert!(file.to_string_lossy().ends_with(".safetensors"));
        assert!(file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("artists-"));
    }

    #[test]
    fn other_lines_or_models_are_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let clip = SeededClipFeatures::new(16, "model-a");
        let all = lines(&["a", "b", "c"]);
        let _ = cache.text_features(&clip, "x", &all);
        // The dict limit changed: the first two lines only.
        let two = cache.text_features(&clip, "x", &all[..2]);
        assert_eq!(clip.encoded_lines(), 5);
        assert_eq!(bits(&two), bits(&clip.text_features(&all[..2])));
        // An edited line.
        let edited = lines(&["a", "B"]);
        let features = cache.text_features(&clip, "x", &edited);
        assert_eq!(bits(&features), bits(&clip.text_features(&edited)));
        // Moving lines between entries changes the key too.
        assert_ne!(
            lines_sha256(&lines(&["ab", ""])),
            lines_sha256(&lines(&["a", "b"]))
        );
        // Another model: its own file, its own features.
        let other = SeededClipFeatures::new(16, "model-b");
        let features = cache.text_features(&other, "x", &edited);
        assert_eq!(other.encoded_lines(), 2);
        assert_eq!(bits(&features), bits(&other.text_features(&edited)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // And the first model's file still hits.
        let before = clip.encoded_lines();
        let _ = cache.text_features(&clip, "x", &edited);
        assert_eq!(clip.encoded_lines(), before);
    }

    #[test]
    fn corrupt_or_foreign_files_are_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let clip = SeededClipFeatures::new(8, "m");
        let items = lines(&["one", "two"]);
        let expected = bits(&clip.text_features(&items));
        let _ = cache.text_features(&clip, "cat", &items);
        let path = only_file(dir.path());
        let good = std::fs::read(&path).unwrap();

        let wrong_shape = {
            let data = vec![0u8; 3 * 8 * 4];
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 8], &data)
                    .unwrap();
            let metadata = safetensors::SafeTensors::read_metadata(&good)
                .unwrap()
                .1
                .metadata()
                .clone();
            safetensors::serialize([(TENSOR, view)], metadata).unwrap()
        };
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 5);
        for (what, content) in [
            ("garbage", b"not a safetensors file".to_vec()),
            ("empty", Vec::new()),
            ("truncated", truncated),
            ("wrong shape", wrong_shape),
        ] {
            std::fs::write(&path, &content).unwrap();
            let encoded = clip.encoded_lines();
            let features = cache.text_features(&clip, "cat", &items);
            assert_eq!(bits(&features), expected, "{what}");
            assert_eq!(clip.encoded_lines(), encoded + 2, "{what}: recomputed");
            // Rewritten: the next call is a hit.
            let features = cache.text_features(&clip, "cat", &items);
            assert_eq!(bits(&features), expected, "{what}");
            assert_eq!(clip.encoded_lines(), encoded + 2, "{what}: rewritten");
        }
    }

    #[test]
    fn an_unwritable_cache_still_gives_the_features() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the cache folder should be: nothing can be written under it.
        let blocked = dir.path().join("cache");
        std::fs::write(&blocked, b"").unwrap();
        let cache = FeatureCache::new(&blocked);
        let clip = SeededClipFeatures::new(8, "m");
        let items = lines(&["one"]);
        let features = cache.text_features(&clip, "cat", &items);
        assert_eq!(bits(&features), bits(&clip.text_features(&items)));
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        let cache = FeatureCache::new("/c");
        let a = cache.file_of("m", "a b");
        let b = cache.file_of("m", "a_b");
        assert_ne!(a, b);
        assert!(a.file_name().unwrap().to_string_lossy().starts_with("a_b-"));
        let hidden = cache.file_of("m", "../.x");
        assert_eq!(hidden.parent().unwrap(), Path::new("/c"));
        assert!(!hidden
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with('.'));
    }
}
