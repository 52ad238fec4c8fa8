//! The checkpoints a daemon can load: an A1111 `models/` tree used as it is
//! (`Stable-diffusion/**.safetensors` and `**.ckpt`, `embeddings/` beside or inside it), or any
//! folder. Shared by the worker (which loads from it) and the front ends (which list it), and
//! rescanned on request (`/sdapi/v1/refresh-checkpoints`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::checkpoint::{cached_file_hash, legacy_hash, FileHashKind};
use crate::extra_networks::dirs::{ModelFolders, CHECKPOINT_FOLDER};
use crate::folder_walk::Visited;

/// The catalog as the worker and the front ends share it.
pub type SharedCatalog = Arc<RwLock<ModelCatalog>>;

/// One checkpoint file of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    /// sdhost's name (path under the checkpoint folder, no extension unless a twin needs it).
    title: String,
    /// The file.
    path: PathBuf,
    /// A1111's `CheckpointInfo.name`: the path under the checkpoint folder with its
    /// extension, or the file name for a file outside it.
    a1111_name: String,
}

/// Checkpoints found, named as A1111 titles them (path under the checkpoint folder, no
/// extension; with it when a `.ckpt` and a `.safetensors` share a name).
#[derive(Debug, Clone, Default)]
pub struct ModelCatalog {
    entries: Vec<Entry>,
    /// What was scanned, for [`ModelCatalog::refresh`].
    models_dir: Option<PathBuf>,
    extra: Option<PathBuf>,
}

/// A checkpoint as A1111 describes it (`modules/sd_models.py: CheckpointInfo`): the names and
/// hashes `/sdapi/v1/sd-models` lists and `sd_model_checkpoint` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Path under the checkpoint folder with extension ("sub/name.safetensors").
    pub name: String,
    /// The file stem ("name").
    pub name_for_extra: String,
    /// `name` without extension, folders joined by `_` ("sub_name").
    pub model_name: String,
    /// The legacy 8-hex hash (A1111 computes it for every file).
    pub legacy_hash: Option<String>,
    /// The full sha256, when known (A1111 lists only cached ones; null until computed).
    pub sha256: Option<String>,
    /// The file.
    pub path: PathBuf,
}

impl CheckpointInfo {
    /// The first 10 hex of the sha256.
    pub fn shorthash(&self) -> Option<&str> {
        self.sha256.as_deref().and_then(|s| s.get(..10))
    }

    /// `name [shorthash]`, or `name` while the sha256 is unknown.
    pub fn title(&self) -> String {
        match self.shorthash() {
            Some(short) => format!("{} [{short}]", self.name),
            None => self.name.clone(),
        }
    }

    /// Every string A1111 accepts for it (`CheckpointInfo.ids`).
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.legacy_hash.iter().cloned().collect();
        ids.extend([
            self.model_name.clone(),
            self.title(),
            self.name.clone(),
            self.name_for_extra.clone(),
        ]);
        if let Some(legacy) = &self.legacy_hash {
            ids.push(format!("{} [{legacy}]", self.name));
        }
        if let (Some(short), Some(sha)) = (self.shorthash(), &self.sha256) {
            ids.extend([
                short.to_string(),
                sha.clone(),
                format!("{} [{short}]", self.name_for_extra),
            ]);
        }
        ids
    }
}

/// A1111's `list_models` filter: `.ckpt` and `.safetensors`, but not the `*.vae.*` files
/// that sit beside checkpoints.
fn is_checkpoint(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    (name.ends_with(".safetensors") || name.ends_with(".ckpt"))
        && !(name.ends_with(".vae.safetensors") || name.ends_with(".vae.ckpt"))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, visited: &mut Visited) {
    if !visited.first_visit(dir) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out, visited);
        } else if is_checkpoint(&path) {
            out.push(path);
        }
    }
}

impl ModelCatalog {
    /// The checkpoints under `models_dir` (its `Stable-diffusion/` folder when it has one) and
    /// `extra` (a model named on the command line), sorted by name.
    pub fn scan(models_dir: Option<&Path>, extra: Option<&Path>) -> Self {
        let mut entries = Vec::new();
        if let Some(dir) = models_dir {
            let root = if dir.join(CHECKPOINT_FOLDER).is_dir() {
                dir.join(CHECKPOINT_FOLDER)
            } else {
                dir.to_path_buf()
            };
            let mut files = Vec::new();
            collect(&root, &mut files, &mut Visited::default());
            let under = |file: &Path| file.strip_prefix(&root).unwrap_or(file).to_path_buf();
            let stem = |file: &Path| under(file).with_extension("");
            for file in &files {
                let shared = files.iter().filter(|f| stem(f) == stem(file)).count() > 1;
                let relative = if shared { under(file) } else { stem(file) };
                entries.push(Entry {
                    title: relative.to_string_lossy().into_owned(),
                    path: file.clone(),
                    a1111_name: under(file).to_string_lossy().into_owned(),
                });
            }
        }
        if let Some(file) = extra {
            if !entries.iter().any(|e| e.path == file) {
                entries.push(Entry {
                    title: crate::pipeline::model::model_name(file),
                    path: file.to_path_buf(),
                    a1111_name: file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                });
            }
        }
        entries.sort();
        ModelCatalog {
            entries,
            models_dir: models_dir.map(Path::to_path_buf),
            extra: extra.map(Path::to_path_buf),
        }
    }

    /// Scans the same folders again (files added or removed since).
    pub fn refresh(&mut self) {
        *self = Self::scan(self.models_dir.as_deref(), self.extra.as_deref());
    }

    /// The models folder it scans, if any.
    pub fn models_dir(&self) -> Option<&Path> {
        self.models_dir.as_deref()
    }

    /// This catalog, shareable.
    pub fn shared(self) -> SharedCatalog {
        Arc::new(RwLock::new(self))
    }

    /// Names in order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.title.clone()).collect()
    }

    /// The file of a model named by its title, file stem or file name, by A1111's short
    /// title (`name [hash]`, what infotext `Refiner` holds), or by any other id A1111 accepts
    /// (hashes as far as they are cached, `sub_name`, [`CheckpointInfo::ids`]).
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.find_exact(name)
            .or_else(|| {
                let (stem, hash) = name.strip_suffix(']')?.rsplit_once(" [")?;
                (!hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()))
                    .then(|| self.find_exact(stem))
                    .flatten()
            })
            .map(Path::to_path_buf)
            .or_else(|| {
                let cache = crate::checkpoint::default_cache_dir();
                self.checkpoints(cache.as_deref())
                    .into_iter()
                    .find(|info| info.ids().iter().any(|id| id == name))
                    .map(|info| info.path)
            })
    }

    fn find_exact(&self, name: &str) -> Option<&Path> {
        self.entries
            .iter()
            .find(|e| {
                e.title == name
                    || e.path.file_stem().is_some_and(|s| s == name)
                    || e.path.file_name().is_some_and(|s| s == name)
            })
            .map(|e| e.path.as_path())
    }

    /// sdhost's name of the catalog's file `path` (what `select_model` takes).
    pub fn name_of(&self, path: &Path) -> Option<String> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| e.title.clone())
    }

    /// The first model, if any.
    pub fn first(&self) -> Option<&Path> {
        self.entries.first().map(|e| e.path.as_path())
    }

    /// Every checkpoint as A1111 describes it, with the sha256s cached in `cache_dir` (none
    /// is computed here: hashing a checkpoint takes seconds; loading one caches its hash).
    pub fn checkpoints(&self, cache_dir: Option<&Path>) -> Vec<CheckpointInfo> {
        self.entries
            .iter()
            .map(|e| checkpoint_info(&e.path, &e.a1111_name, cache_dir))
            .collect()
    }

    /// A1111's description of the catalog's file `path`, or of a file outside it (named by
    /// its file name, as A1111 names those).
    pub fn checkpoint_of(&self, path: &Path, cache_dir: Option<&Path>) -> CheckpointInfo {
        let name = self
            .entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| e.a1111_name.clone())
            .unwrap_or_else(|| {
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        checkpoint_info(path, &name, cache_dir)
    }
}

/// A1111's `CheckpointInfo` of `path` named `name`.
fn checkpoint_info(path: &Path, name: &str, cache_dir: Option<&Path>) -> CheckpointInfo {
    let without_extension = Path::new(name).with_extension("");
    CheckpointInfo {
        name: name.to_string(),
        name_for_extra: crate::pipeline::model::model_name(path),
        model_name: without_extension
            .to_string_lossy()
            .replace(['/', '\\'], "_"),
        legacy_hash: legacy_hash(path).ok(),
        sha256: cached_file_hash(path, FileHashKind::Sha256, cache_dir, false)
            .ok()
            .flatten(),
        path: path.to_path_buf(),
    }
}

/// A1111's embeddings folder for a `models/` folder: `embeddings/` inside it or beside it.
pub fn embeddings_dir(models_dir: &Path) -> Option<PathBuf> {
    ModelFolders {
        models_dir: Some(models_dir.to_path_buf()),
        ..ModelFolders::default()
    }
    .embeddings_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_folders_are_followed_once_and_names_never_leave_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        // The models live on "another disk"; the folder given is a link to them, with a
        // linked subfolder and a link looping back to the top.
        let real = dir.path().join("disk/models");
        let elsewhere = dir.path().join("disk/more");
        std::fs::create_dir_all(real.join("Stable-diffusion")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(real.join("Stable-diffusion/a.safetensors"), b"x").unwrap();
        std::fs::write(elsewhere.join("b.safetensors"), b"x").unwrap();
        std::fs::write(dir.path().join("outside.safetensors"), b"x").unwrap();
        let sd = real.join("Stable-diffusion");
        std::os::unix::fs::symlink(&elsewhere, sd.join("more")).unwrap();
        std::os::unix::fs::symlink(&sd, sd.join("loop")).unwrap();
        let models = dir.path().join("models");
        std::os::unix::fs::symlink(&real, &models).unwrap();
        let catalog = ModelCatalog::scan(Some(&models), None);
        assert_eq!(catalog.names(), ["a", "more/b"]);
        let outside = dir.path().join("outside.safetensors");
        for escape in [
            "../outside",
            "../outside.safetensors",
            "../../outside.safetensors",
            outside.to_str().unwrap(),
            "/etc/passwd",
        ] {
            assert_eq!(catalog.find(escape), None, "{escape}");
        }
        assert_eq!(
            catalog.find("more/b"),
            Some(models.join("Stable-diffusion/more/b.safetensors"))
        );
    }

    #[test]
    fn an_a1111_tree_is_read_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(models.join("Stable-diffusion/sd15")).unwrap();
        std::fs::create_dir_all(models.join("VAE")).unwrap();
        std::fs::create_dir_all(dir.path().join("embeddings")).unwrap();
        for file in [
            "Stable-diffusion/v1-5.safetensors",
            "Stable-diffusion/sd15/inpainting.safetensors",
            "Stable-diffusion/old.ckpt",
            "Stable-diffusion/twin.ckpt",
            "Stable-diffusion/twin.safetensors",
            "Stable-diffusion/v1-5.vae.safetensors",
            "VAE/vae.safetensors",
        ] {
            std::fs::write(models.join(file), b"x").unwrap();
        }
        let catalog = ModelCatalog::scan(Some(&models), None);
        assert_eq!(
            catalog.names(),
            [
                "old",
                "sd15/inpainting",
                "twin.ckpt",
                "twin.safetensors",
                "v1-5"
            ]
        );
        assert!(catalog.find("old.ckpt").is_some());
        assert!(catalog.find("inpainting").is_some());
        assert!(catalog.find("v1-5.safetensors").is_some());
        assert!(catalog.find("vae").is_none());
        assert_eq!(embeddings_dir(&models), Some(dir.path().join("embeddings")));
    }

    #[test]
    fn a1111_names_hashes_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Stable-diffusion");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/model.safetensors"), b"x").unwrap();
        let mut catalog = ModelCatalog::scan(Some(dir.path()), None);
        let cache = tempfile::tempdir().unwrap();
        let infos = catalog.checkpoints(Some(cache.path()));
        let info = &infos[0];
        assert_eq!(info.name, "sub/model.safetensors");
        assert_eq!(info.model_name, "sub_model");
        assert_eq!(info.name_for_extra, "model");
        // sha256 of no bytes: the window past 1 MiB of a small file is empty.
        assert_eq!(info.legacy_hash.as_deref(), Some("e3b0c442"));
        assert_eq!(info.sha256, None, "not hashed until loaded");
        assert_eq!(info.title(), "sub/model.safetensors");
        let hashes = crate::checkpoint::ModelHashes::cached(
            &root.join("sub/model.safetensors"),
            Some(cache.path()),
        )
        .unwrap();
        let info = catalog.checkpoint_of(&root.join("sub/model.safetensors"), Some(cache.path()));
        let short = &hashes.sha256[..10];
        assert_eq!(info.title(), format!("sub/model.safetensors [{short}]"));
        for alias in [
            "e3b0c442",
            "sub_model",
            "sub/model.safetensors",
            "model",
            "sub/model.safetensors [e3b0c442]",
        ] {
            assert!(info.ids().iter().any(|id| id == alias), "{alias}");
            assert!(catalog.find(alias).is_some(), "{alias}");
        }
        assert!(info.ids().contains(&format!("model [{short}]")));
        assert!(info.ids().contains(&hashes.sha256));
        assert!(catalog.find("nothing").is_none());
        std::fs::write(root.join("new.ckpt"), b"y").unwrap();
        catalog.refresh();
        assert_eq!(catalog.names(), ["new", "sub/model"]);
        assert_eq!(
            catalog.name_of(&root.join("new.ckpt")).as_deref(),
            Some("new")
        );
    }
}
