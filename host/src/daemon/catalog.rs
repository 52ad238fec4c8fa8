//! The checkpoints a daemon can load: an A1111 `models/` tree used as it is
//! (`Stable-diffusion/**.safetensors` and `**.ckpt`, `embeddings/` beside or inside it), or any
//! folder.

use std::path::{Path, PathBuf};

use crate::extra_networks::dirs::{ModelFolders, CHECKPOINT_FOLDER};

/// Checkpoints found, named as A1111 titles them (path under the checkpoint folder, no
/// extension; with it when a `.ckpt` and a `.safetensors` share a name).
#[derive(Debug, Clone, Default)]
pub struct ModelCatalog {
    entries: Vec<(String, PathBuf)>,
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

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
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
            collect(&root, &mut files);
            let stem = |file: &Path| file.strip_prefix(&root).unwrap_or(file).with_extension("");
            for file in &files {
                let shared = files.iter().filter(|f| stem(f) == stem(file)).count() > 1;
                let relative = if shared {
                    file.strip_prefix(&root).unwrap_or(file).to_path_buf()
                } else {
                    stem(file)
                };
                entries.push((relative.to_string_lossy().into_owned(), file.clone()));
            }
        }
        if let Some(file) = extra {
            let name = crate::pipeline::model::model_name(file);
            if !entries.iter().any(|(_, path)| path == file) {
                entries.push((name, file.to_path_buf()));
            }
        }
        entries.sort();
        ModelCatalog { entries }
    }

    /// Names in order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(name, _)| name.clone()).collect()
    }

    /// The file of a model named by its title, file stem or file name, or by A1111's short
    /// title (`name [hash]`, what infotext `Refiner` holds).
    pub fn find(&self, name: &str) -> Option<&Path> {
        self.find_exact(name).or_else(|| {
            let (stem, hash) = name.strip_suffix(']')?.rsplit_once(" [")?;
            (!hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| self.find_exact(stem))
                .flatten()
        })
    }

    fn find_exact(&self, name: &str) -> Option<&Path> {
        self.entries
            .iter()
            .find(|(title, path)| {
                title == name
                    || path.file_stem().is_some_and(|s| s == name)
                    || path.file_name().is_some_and(|s| s == name)
            })
            .map(|(_, path)| path.as_path())
    }

    /// The first model, if any.
    pub fn first(&self) -> Option<&Path> {
        self.entries.first().map(|(_, path)| path.as_path())
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
}
