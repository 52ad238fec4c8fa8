//! What a network picker shows of each file (A1111's extra-network cards,
//! `modules/ui_extra_networks.py` and `extensions-builtin/Lora/ui_extra_networks_lora.py`,
//! `ui_edit_user_metadata.py`): name, alias, kind, base model, the training set's most frequent
//! tags, the preview image, the user's notes and the hash A1111 shows and writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::catalog::{NetworkCatalog, NetworkFile, NETWORK_EXTENSIONS};
use super::dirs::NetworkDirs;
use crate::checkpoint::FileHashKind;

/// Most tags listed per network (A1111's metadata editor shows 24).
pub const MAX_TRIGGER_WORDS: usize = 24;

/// Preview extensions A1111 looks for (`default_allowed_preview_extensions`), in its order.
const PREVIEW_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "gif"];

/// What kind of network a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// A LoRA (`<lora:NAME:…>`).
    Lora,
    /// A LyCORIS network (LoHa, LoKr, IA³, …; also `<lora:NAME:…>`).
    Lycoris,
    /// A hypernetwork (`<hypernet:NAME:…>`).
    Hypernetwork,
    /// A VAE (`sd_vae`).
    Vae,
}

/// One tag of the training set with how often it was used.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct TriggerWord {
    /// The tag (or, for long caption sentences, a word of them).
    pub tag: String,
    /// Its count over all the training folders.
    pub count: i64,
}

/// What a picker shows of one network file.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct NetworkFacts {
    /// `lora`, `lycoris`, `hypernetwork` or `vae`.
    pub kind: NetworkKind,
    /// The name prompts and `sd_vae` use: the file stem (VAE: the file name with extension).
    pub name: String,
    /// The name a picker's tag uses (A1111's `get_alias`): `ss_output_name` from the
    /// metadata, else the name; the name when another file claims the same alias.
    pub alias: String,
    /// The file under its folder (`styles/detail.safetensors`).
    pub path: String,
    /// The file's absolute path.
    pub file: PathBuf,
    /// A1111's `sd_version`: `SD1`, `SD2`, `SDXL` or `Unknown` (from `ss_base_model_version`,
    /// `ss_v2`, or any metadata at all; the user metadata's `sd version` wins).
    pub base_model: String,
    /// `ss_base_model_version` (`sd_v1`, `sdxl_base_v1-0`), when the metadata has it.
    pub base_model_version: Option<String>,
    /// `ss_sd_model_name`: the checkpoint it was trained on, when the metadata has it.
    pub base_model_name: Option<String>,
    /// The training set's most frequent tags, most frequent first (A1111's `build_tags`).
    pub trigger_words: Vec<TriggerWord>,
    /// `activation text` of A1111's user metadata (`NAME.json`): words to add with it.
    pub activation_text: Option<String>,
    /// `preferred weight` of A1111's user metadata (0 or absent: the default multiplier).
    pub preferred_weight: Option<f64>,
    /// `NAME.txt` or `NAME.description.txt`, else the user metadata's `description`.
    pub description: Option<String>,
    /// The preview image (`NAME.png`, `NAME.preview.png`, … as A1111 looks for them).
    pub preview: Option<PathBuf>,
    /// The hash A1111 shows and writes in infotext: LoRA `sshs_model_hash` or addnet/sha256,
    /// first 12 hex; hypernetwork and VAE sha256, first 10. Null until it is computed.
    pub hash: Option<String>,
}

/// How a hash for a file is found.
pub trait HashSource {
    /// The full hex hash of `path`, if known.
    fn hash(&self, path: &Path, kind: FileHashKind) -> Option<String>;
}

/// A1111's `NetworkOnDisk.detect_version`.
pub(crate) fn sd_version(metadata: &BTreeMap<String, String>) -> &'static str {
    if metadata
        .get("ss_base_model_version")
        .is_some_and(|v| v.starts_with("sdxl_"))
    {
        "SDXL"
    } else if metadata.get("ss_v2").is_some_and(|v| v == "True") {
        "SD2"
    } else if !metadata.is_empty() {
        "SD1"
    } else {
        "Unknown"
    }
}

/// A JSON object with its keys in file order (A1111's `json.loads` keeps it, and tag order
/// decides ties).
struct Ordered<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = map.next_entry()? {
                    items.push(item);
                }
                Ok(Ordered(items))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// Python's `int()` of a count (a number or its text).
fn count(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A1111's `re_word`.
static WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[-_\w']+").expect("valid regex"));

/// A1111's `build_tags`: `ss_tag_frequency`'s counts summed over the training folders; when the
/// tags are long (captions, 16 characters or more on average) their words of three letters or
/// more instead; most frequent first, ties in first-seen order.
pub fn trigger_words(metadata: &BTreeMap<String, String>) -> Vec<TriggerWord> {
    let Some(text) = metadata.get("ss_tag_frequency") else {
        return Vec::new();
    };
    let Ok(folders) = serde_json::from_str::<Ordered<Ordered<serde_json::Value>>>(text) else {
        return Vec::new();
    };
    let mut tags: Vec<(String, i64)> = Vec::new();
    let add = |tags: &mut Vec<(String, i64)>, tag: &str, n: i64| match tags
        .iter_mut()
        .find(|(t, _)| t == tag)
    {
        Some(entry) => entry.1 += n,
        None => tags.push((tag.to_string(), n)),
    };
    for (_, counts) in folders.0 {
        for (tag, value) in counts.0 {
            if let Some(n) = count(&value) {
                add(&mut tags, tag.trim(), n);
            }
        }
    }
    let average = if tags.is_empty() {
        0.0
    } else {
        tags.iter().map(|(t, _)| t.chars().count()).sum::<usize>() as f64 / tags.len() as f64
    };
    if average >= 16.0 {
        let mut words = Vec::new();
        for (text, n) in &tags {
            for word in WORD.find_iter(text) {
                if word.as_str().chars().count() >= 3 {
                    add(&mut words, word.as_str(), *n);
                }
            }
        }
        tags = words;
    }
    // A stable sort, as Python's `sorted(..., reverse=True)`: ties keep their order.
    tags.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    tags.into_iter()
        .take(MAX_TRIGGER_WORDS)
        .map(|(tag, count)| TriggerWord { tag, count })
        .collect()
}

/// The file without its extension, as A1111 builds preview and description names.
fn base(path: &Path) -> String {
    path.with_extension("").to_string_lossy().into_owned()
}

/// A1111's `find_preview`: `NAME.EXT` then `NAME.preview.EXT` for each preview extension.
pub fn find_preview(path: &Path) -> Option<PathBuf> {
    let base = base(path);
    PREVIEW_EXTENSIONS
        .iter()
        .flat_map(|ext| [format!("{base}.{ext}"), format!("{base}.preview.{ext}")])
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A1111's `find_description`: `NAME.txt` or `NAME.description.txt`.
fn find_description(path: &Path) -> Option<String> {
    let base = base(path);
    [format!("{base}.txt"), format!("{base}.description.txt")]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// A1111's user metadata of a network: `NAME.json` beside it.
fn user_metadata(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read_to_string(path.with_extension("json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Whether the tensor names of a safetensors file are LyCORIS's (LoHa, LoKr, IA³, GLoRA, OFT).
fn has_lycoris_keys(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: read-only map of a file the user pointed at; see `checkpoint::Checkpoint::open`.
    let Ok(mmap) = (unsafe { memmap2::Mmap::map(&file) }) else {
        return false;
    };
    let Ok((_, metadata)) = safetensors::SafeTensors::read_metadata(&mmap) else {
        return false;
    };
    const MARKERS: [&str; 6] = [
        ".hada_w1_a",
        ".lokr_w1",
        ".on_input",
        ".a1.weight",
        ".oft_",
        ".oft_blocks",
    ];
    metadata
        .tensors()
        .keys()
        .any(|k| MARKERS.iter().any(|m| k.contains(m)))
}

fn relative(path: &Path, dirs: &[PathBuf]) -> String {
    dirs.iter()
        .find_map(|d| path.strip_prefix(d).ok())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

impl NetworkFacts {
    /// The facts of one network file of `kind` found under one of `dirs` (the hash from
    /// `hashes`).
    pub fn of(
        file: &NetworkFile,
        kind: NetworkKind,
        dirs: &[PathBuf],
        hashes: &dyn HashSource,
    ) -> NetworkFacts {
        let metadata = &file.metadata;
        let user = user_metadata(&file.path);
        let text = |key: &str| {
            user.get(key)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let base_model = match text("sd version") {
            Some(v) if ["SD1", "SD2", "SDXL", "Unknown"].contains(&v.as_str()) => v,
            _ => sd_version(metadata).to_string(),
        };
        let (hash, short) = match kind {
            NetworkKind::Lora | NetworkKind::Lycoris => {
                let hash = file
                    .stored_hash()
                    .map(str::to_string)
                    .or_else(|| hashes.hash(&file.path, file.lora_hash_kind()));
                (hash, 12)
            }
            NetworkKind::Hypernetwork | NetworkKind::Vae => {
                (hashes.hash(&file.path, FileHashKind::Sha256), 10)
            }
        };
        let name = match kind {
            // A1111 names VAEs by their file name with its extension.
            NetworkKind::Vae => file
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            _ => file.name.clone(),
        };
        NetworkFacts {
            kind,
            alias: if kind == NetworkKind::Vae {
                name.clone()
            } else {
                file.alias.clone()
            },
            name,
            path: relative(&file.path, dirs),
            file: std::path::absolute(&file.path).unwrap_or_else(|_| file.path.clone()),
            base_model,
            base_model_version: metadata.get("ss_base_model_version").cloned(),
            base_model_name: metadata.get("ss_sd_model_name").cloned(),
            trigger_words: trigger_words(metadata),
            activation_text: text("activation text"),
            preferred_weight: user
                .get("preferred weight")
                .and_then(serde_json::Value::as_f64)
                .filter(|w| *w != 0.0),
            description: find_description(&file.path).or_else(|| text("description")),
            preview: find_preview(&file.path),
            hash: hash.map(|h| h.chars().take(short).collect()),
        }
    }
}

/// Every LoRA, LyCORIS and hypernetwork file under `dirs` with its facts (VAE files are
/// listed by `sd_vae`'s list). Unreadable files are left out.
pub fn list_networks(dirs: &NetworkDirs, hashes: &dyn HashSource) -> Vec<NetworkFacts> {
    let mut out = Vec::new();
    let lycoris_dirs: Vec<&PathBuf> = dirs
        .lora
        .iter()
        .filter(|d| {
            d.file_name()
                .is_some_and(|n| n.eq_ignore_ascii_case("LyCORIS"))
        })
        .collect();
    let catalog = NetworkCatalog::scan(&dirs.lora, NETWORK_EXTENSIONS);
    for file in catalog.files() {
        let lycoris = lycoris_dirs.iter().any(|d| file.path.starts_with(d))
            || file
                .metadata
                .get("ss_network_module")
                .is_some_and(|m| m.starts_with("lycoris"))
            || (file.is_safetensors() && has_lycoris_keys(&file.path));
        let kind = if lycoris {
            NetworkKind::Lycoris
        } else {
            NetworkKind::Lora
        };
        let mut facts = NetworkFacts::of(file, kind, &dirs.lora, hashes);
        facts.alias = catalog.prompt_name(file).to_string();
        out.push(facts);
    }
    // A1111 lists hypernetworks as `.pt` files.
    for file in NetworkCatalog::scan(&dirs.hypernetworks, &["pt"]).files() {
        out.push(NetworkFacts::of(
            file,
            NetworkKind::Hypernetwork,
            &dirs.hypernetworks,
            hashes,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tags_are_counted_and_ordered_as_a1111s_editor_shows_them() {
        let m = metadata(&[(
            "ss_tag_frequency",
            r#"{"10_a": {"1girl": 5, " smile": 2, "hat": 3}, "5_b": {"smile": 4, "hat": "1", "cat": 5}}"#,
        )]);
        let words: Vec<(String, i64)> = trigger_words(&m)
            .into_iter()
            .map(|t| (t.tag, t.count))
            .collect();
        // smile 6; 1girl and cat tie at 5 and keep their first-seen order; hat 4.
        assert_eq!(
            words,
            [
                ("smile".into(), 6),
                ("1girl".into(), 5),
                ("cat".into(), 5),
                ("hat".into(), 4)
            ]
        );
        // Long captions: their words of three letters or more.
        let m = metadata(&[(
            "ss_tag_frequency",
            r#"{"x": {"a photo of a red fox in snow": 2, "a photo of a cat on a mat": 1}}"#,
        )]);
        let words: Vec<String> = trigger_words(&m).into_iter().map(|t| t.tag).collect();
        assert_eq!(words, ["photo", "red", "fox", "snow", "cat", "mat"]);
        assert!(trigger_words(&metadata(&[("ss_tag_frequency", "not json")])).is_empty());
    }

    #[test]
    fn versions_follow_a1111s_detection() {
        assert_eq!(
            sd_version(&metadata(&[("ss_base_model_version", "sdxl_base_v1-0")])),
            "SDXL"
        );
        assert_eq!(sd_version(&metadata(&[("ss_v2", "True")])), "SD2");
        assert_eq!(
            sd_version(&metadata(&[("ss_sd_model_name", "v1-5")])),
            "SD1"
        );
        assert_eq!(sd_version(&BTreeMap::new()), "Unknown");
    }
}
