//! Where the interrogation models are, as A1111 keeps them (`modules/interrogate.py`,
//! `modules/deepbooru.py`, `modules/modelloader.py: load_models`): each file given by its own
//! setting, else found under an A1111 `models/` folder, else in the places A1111 downloads it to.
//!
//! | file | setting | searched |
//! |---|---|---|
//! | BLIP captioner | `blip_model` | `models/BLIP/model_base_caption_capfilt_large.pth`, else the first `*.pth` there |
//! | BERT vocabulary | `bert_vocab` | `models/BLIP/vocab.txt`, then the Hugging Face cache of `bert-base-uncased` |
//! | CLIP ViT-L/14 | `clip_model` | `<clip_models_path>/ViT-L-14.pt`, `models/clip/ViT-L-14.pt`, `~/.cache/clip/ViT-L-14.pt` |
//! | category lists | `interrogate_dir` | `models/interrogate/`, `models/../interrogate/` (A1111's install root), sdhost's installed lists |
//! | DeepDanbooru | `deepdanbooru_model` | `models/torch_deepdanbooru/model-resnet_custom_v3.pt`, else the first `*.pt` there or in `models/DeepDanbooru/` |

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::folder_walk::Visited;
use serde::Deserialize;

/// The file BLIP's download is saved as (`modules/interrogate.py: blip_image_eval_size` …).
pub const BLIP_FILE: &str = "model_base_caption_capfilt_large.pth";
/// The file `clip.load("ViT-L/14")` keeps.
pub const CLIP_FILE: &str = "ViT-L-14.pt";
/// The file DeepDanbooru's download is saved as.
pub const DEEPDANBOORU_FILE: &str = "model-resnet_custom_v3.pt";

/// Where A1111 gets the BLIP captioner.
const BLIP_SOURCE: &str = "A1111 downloads it from https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base_caption_capfilt_large.pth";
/// Where A1111 gets BERT's vocabulary.
const VOCAB_SOURCE: &str = "A1111 gets it with `bert-base-uncased` from the Hugging Face hub into ~/.cache/huggingface/hub; copy its vocab.txt (30522 lines) there";
/// Where A1111 gets CLIP ViT-L/14.
const CLIP_SOURCE: &str = "A1111 (through OpenAI's clip package) downloads it from https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt into --clip-models-path (default ~/.cache/clip)";
/// Where A1111 gets the category lists.
const CATEGORIES_SOURCE: &str = "A1111 downloads artists.txt, flavors.txt, mediums.txt and movements.txt of pharmapsychotic/clip-interrogator into <webui>/interrogate; scripts/setup installs the same lists (PyPI clip-interrogator 0.6.0) into sdhost's data folder";
/// Where A1111 gets DeepDanbooru.
const DEEPDANBOORU_SOURCE: &str = "A1111 downloads it from https://github.com/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt";

/// A model file interrogation needs that is not there.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} not found: looked for {}; {source_hint}", looked_in(.expected))]
pub struct MissingFile {
    /// What is missing ("the BLIP captioner").
    pub what: &'static str,
    /// The paths tried, first the one the user would normally put it at.
    pub expected: Vec<PathBuf>,
    /// Where A1111 gets the file.
    pub source_hint: &'static str,
}

fn looked_in(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere (give --models-dir or the file's own flag)".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The settings that place the interrogation files (command-line flags, the daemon's config);
/// each file's own setting wins over `models_dir`, which the front ends share with the
/// checkpoints (`--models-dir`) and so is not one of these flags.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct InterrogateFiles {
    /// An A1111 `models/` folder (`BLIP/`, `clip/`, `torch_deepdanbooru/`, and `../interrogate`).
    #[arg(skip)]
    #[serde(skip)]
    pub models_dir: Option<PathBuf>,
    /// The BLIP captioner [default: models/BLIP/model_base_caption_capfilt_large.pth, else the
    /// first *.pth there].
    #[arg(long, value_name = "FILE")]
    pub blip_model: Option<PathBuf>,
    /// BERT's vocab.txt (bert-base-uncased) [default: models/BLIP/vocab.txt, else the Hugging
    /// Face cache].
    #[arg(long, value_name = "FILE")]
    pub bert_vocab: Option<PathBuf>,
    /// OpenAI CLIP ViT-L/14, the TorchScript archive ViT-L-14.pt [default: in
    /// --clip-models-path, models/clip, ~/.cache/clip].
    #[arg(long, value_name = "FILE")]
    pub clip_model: Option<PathBuf>,
    /// The folder of ViT-L-14.pt (A1111's --clip-models-path).
    #[arg(long, value_name = "DIR")]
    pub clip_models_path: Option<PathBuf>,
    /// The category lists (*.txt, *.topN.txt) [default: interrogate/ in or beside models/,
    /// else the lists scripts/setup installs].
    #[arg(long, value_name = "DIR")]
    pub interrogate_dir: Option<PathBuf>,
    /// DeepDanbooru's model-resnet_custom_v3.pt [default: models/torch_deepdanbooru/ or
    /// models/DeepDanbooru/, the first *.pt there].
    #[arg(long, value_name = "FILE")]
    pub deepdanbooru_model: Option<PathBuf>,
}

impl InterrogateFiles {
    /// The BLIP captioner.
    pub fn blip_model(&self) -> Result<PathBuf, MissingFile> {
        let mut candidates = Vec::new();
        if let Some(file) = &self.blip_model {
            return exists(file, "the BLIP captioner", BLIP_SOURCE);
        }
        if let Some(models) = &self.models_dir {
            let folder = models.join("BLIP");
            candidates.push(folder.join(BLIP_FILE));
            if let Some(found) = preferred_or_first(&folder, BLIP_FILE, "pth") {
                return Ok(found);
            }
        }
        Err(missing("the BLIP captioner", candidates, BLIP_SOURCE))
    }

    /// BERT's vocabulary for BLIP's tokenizer.
    pub fn bert_vocab(&self) -> Result<PathBuf, MissingFile> {
        if let Some(file) = &self.bert_vocab {
            return exists(file, "BERT's vocab.txt", VOCAB_SOURCE);
        }
        let mut candidates = Vec::new();
        if let Some(models) = &self.models_dir {
            candidates.push(models.join("BLIP").join("vocab.txt"));
        }
        if let Some(hub) = hugging_face_hub() {
            for repo in [
                "models--bert-base-uncased",
                "models--google-bert--bert-base-uncased",
            ] {
                let snapshots = hub.join(repo).join("snapshots");
                candidates.extend(sorted_entries(&snapshots).map(|rev| rev.join("vocab.txt")));
                if candidates.last().is_none_or(|c| !c.starts_with(&snapshots)) {
                    candidates.push(snapshots.join("<revision>").join("vocab.txt"));
                }
            }
        }
        first_file(candidates, "BERT's vocab.txt", VOCAB_SOURCE)
    }

    /// OpenAI CLIP ViT-L/14.
    pub fn clip_model(&self) -> Result<PathBuf, MissingFile> {
        if let Some(file) = &self.clip_model {
            return exists(file, "CLIP ViT-L/14", CLIP_SOURCE);
        }
        let mut folders: Vec<PathBuf> = self.clip_models_path.iter().cloned().collect();
        if let Some(models) = &self.models_dir {
            folders.push(models.join("clip"));
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            folders.push(PathBuf::from(home).join(".cache").join("clip"));
        }
        let candidates = folders.iter().map(|f| f.join(CLIP_FILE)).collect();
        first_file(candidates, "CLIP ViT-L/14", CLIP_SOURCE)
    }

    /// The folder of category lists.
    pub fn categories_dir(&self) -> Result<PathBuf, MissingFile> {
        let what = "the interrogation category lists";
        if let Some(dir) = &self.interrogate_dir {
            return if dir.is_dir() {
                Ok(dir.clone())
            } else {
                Err(missing(what, vec![dir.clone()], CATEGORIES_SOURCE))
            };
        }
        let mut candidates = Vec::new();
        if let Some(models) = &self.models_dir {
            candidates.push(models.join("interrogate"));
            if let Some(root) = models.parent() {
                candidates.push(root.join("interrogate"));
            }
        }
        candidates.extend(installed_categories_dir());
        candidates
            .iter()
            .find(|dir| dir.is_dir())
            .cloned()
            .ok_or_else(|| missing(what, candidates, CATEGORIES_SOURCE))
    }

    /// DeepDanbooru.
    pub fn deepdanbooru_model(&self) -> Result<PathBuf, MissingFile> {
        let what = "the DeepDanbooru model";
        if let Some(file) = &self.deepdanbooru_model {
            return exists(file, what, DEEPDANBOORU_SOURCE);
        }
        let mut candidates = Vec::new();
        if let Some(models) = &self.models_dir {
            for folder in ["torch_deepdanbooru", "DeepDanbooru"] {
                let folder = models.join(folder);
                candidates.push(folder.join(DEEPDANBOORU_FILE));
                if let Some(found) = preferred_or_first(&folder, DEEPDANBOORU_FILE, "pt") {
                    return Ok(found);
                }
            }
        }
        Err(missing(what, candidates, DEEPDANBOORU_SOURCE))
    }
}

/// Where scripts/setup installs clip-interrogator's lists: `$XDG_DATA_HOME/sdhost/interrogate`.
pub fn installed_categories_dir() -> Option<PathBuf> {
    crate::user_dirs::data_dir().map(|d| d.join("interrogate"))
}

/// The Hugging Face hub cache as transformers finds it: `$HF_HUB_CACHE`
/// (`$HUGGINGFACE_HUB_CACHE`, `$TRANSFORMERS_CACHE`), else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
fn hugging_face_hub() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_CACHE",
    ]
    .iter()
    .find_map(|name| var(name).map(PathBuf::from))
    .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
    .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")))
}

fn missing(what: &'static str, expected: Vec<PathBuf>, source_hint: &'static str) -> MissingFile {
    MissingFile {
        what,
        expected,
        source_hint,
    }
}

fn exists(file: &Path, what: &'static str, hint: &'static str) -> Result<PathBuf, MissingFile> {
    if file.is_file() {
        Ok(file.to_path_buf())
    } else {
        Err(missing(what, vec![file.to_path_buf()], hint))
    }
}

fn first_file(
    candidates: Vec<PathBuf>,
    what: &'static str,
    hint: &'static str,
) -> Result<PathBuf, MissingFile> {
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| missing(what, candidates, hint))
}

/// `folder/preferred` when it is there, else the first file with `extension` (any case) in
/// A1111's natural-sorted recursive walk (`modules/util.py: walk_files`), as `load_models`
/// takes it.
fn preferred_or_first(folder: &Path, preferred: &str, extension: &str) -> Option<PathBuf> {
    let exact = folder.join(preferred);
    if exact.is_file() {
        return Some(exact);
    }
    walk_files(folder, extension, &mut Visited::default())
        .into_iter()
        .next()
}

fn sorted_entries(dir: &Path) -> impl Iterator<Item = PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    entries.into_iter()
}

/// The files under `dir` with `extension` (compared lower-case), depth first, each folder's
/// entries in natural order.
fn walk_files(dir: &Path, extension: &str, visited: &mut Visited) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if !visited.first_visit(dir) {
        return found;
    }
    for path in sorted_entries(dir) {
        if path.is_dir() {
            found.extend(walk_files(&path, extension, visited));
        } else if path
            .extension()
            .is_some_and(|e| e.to_string_lossy().to_lowercase() == extension)
        {
            found.push(path);
        }
    }
    found
}

/// A1111's `natural_sort_key`: runs of digits compare as numbers, the rest case-insensitively.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (ka, kb) = (natural_key(a), natural_key(b));
    ka.cmp(&kb)
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Text(String),
    Number(u128),
}

fn natural_key(s: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            parts.push(Part::Number(rest[..digits].parse().unwrap_or(u128::MAX)));
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            parts.push(Part::Text(rest[..text].to_lowercase()));
            rest = &rest[text..];
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn the_download_name_wins_else_the_first_file_in_natural_order() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        touch(&models.join("BLIP/b10.pth"));
        touch(&models.join("BLIP/B9.PTH"));
        let files = InterrogateFiles {
            models_dir: Some(models.clone()),
            ..Default::default()
        };
        assert_eq!(files.blip_model().unwrap(), models.join("BLIP/B9.PTH"));
        touch(&models.join(format!("BLIP/{BLIP_FILE}")));
        assert_eq!(
            files.blip_model().unwrap(),
            models.join("BLIP").join(BLIP_FILE)
        );
        touch(&models.join("DeepDanbooru/sub/ddb.pt"));
        assert_eq!(
            files.deepdanbooru_model().unwrap(),
            models.join("DeepDanbooru/sub/ddb.pt")
        );
    }

    #[test]
    fn a_missing_file_names_where_it_was_looked_for_and_where_a1111_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = InterrogateFiles {
            models_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let error = files.deepdanbooru_model().unwrap_err().to_string();
        assert!(
            error.contains("torch_deepdanbooru/model-resnet_custom_v3.pt"),
            "{error}"
        );
        assert!(error.contains("TorchDeepDanbooru/releases"), "{error}");
        let error = files.blip_model().unwrap_err().to_string();
        assert!(
            error.contains("BLIP/model_base_caption_capfilt_large.pth"),
            "{error}"
        );
        let given = InterrogateFiles {
            clip_model: Some(dir.path().join("nope.pt")),
            ..Default::default()
        };
        assert!(given
            .clip_model()
            .unwrap_err()
            .to_string()
            .contains("nope.pt"));
    }

    #[test]
    fn categories_next_to_the_models_folder_as_in_an_a1111_install() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::create_dir_all(dir.path().join("interrogate")).unwrap();
        let files = InterrogateFiles {
            models_dir: Some(models),
            ..Default::default()
        };
        assert_eq!(
            files.categories_dir().unwrap(),
            dir.path().join("interrogate")
        );
    }

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        let mut names = vec!["a10", "A2", "a1b", "b"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["a1b", "A2", "a10", "b"]);
    }
}
