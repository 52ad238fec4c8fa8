//! The VAE files A1111 offers (`modules/sd_vae.py: refresh_vae_list`, its `vae_dict`) and the
//! choice of one for a checkpoint (`resolve_vae`).

use std::path::{Path, PathBuf};

use crate::extra_networks::dirs::NetworkDirs;
use crate::folder_walk::Visited;

/// A1111's `sd_vae` value that picks a VAE named like the checkpoint, else the checkpoint's own.
pub const AUTOMATIC: &str = "Automatic";
/// A1111's `sd_vae` value for the checkpoint's own VAE.
pub const NONE: &str = "None";

/// Extensions of VAE files, in the order A1111 globs them.
const EXTENSIONS: [&str; 3] = ["ckpt", "pt", "safetensors"];

/// A1111's `vae_dict`: VAE files by name (the file name with its extension), in A1111's order:
/// `*.vae.*` files of the checkpoint folders first, then every file of the VAE folders; within
/// a folder tree, by extension (`.ckpt`, `.pt`, `.safetensors`), then top folder first and
/// paths sorted (A1111's glob order, which follows the file system, made deterministic).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VaeList {
    entries: Vec<(String, PathBuf)>,
}

/// Every file under `dir` (hidden files and folders skipped, as Python's glob skips them),
/// files of a folder before its subfolders', each sorted.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, visited: &mut Visited) {
    if !visited.first_visit(dir) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = paths.into_iter().partition(|p| p.is_dir());
    out.extend(files);
    for sub in dirs {
        walk(&sub, out, visited);
    }
}

/// The file name of `path` as A1111 names VAEs (`get_filename`).
pub fn vae_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn has_suffix(path: &Path, suffix: &str) -> bool {
    vae_name(path).to_ascii_lowercase().ends_with(suffix)
}

impl VaeList {
    /// Scans the VAE and checkpoint folders of `dirs`, plus `extra_checkpoint_dir` (the folder
    /// of a checkpoint given by path, whose `*.vae.*` files beside it count too).
    pub fn scan(dirs: &NetworkDirs, extra_checkpoint_dir: Option<&Path>) -> Self {
        let mut list = VaeList::default();
        let mut checkpoint_files = Vec::new();
        for dir in &dirs.checkpoints {
            walk(dir, &mut checkpoint_files, &mut Visited::default());
        }
        if let Some(dir) =
            extra_checkpoint_dir.filter(|d| !dirs.checkpoints.iter().any(|c| d.starts_with(c)))
        {
            // Only the folder itself: the checkpoint's parent may be any large folder.
            if let Ok(entries) = std::fs::read_dir(dir) {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                checkpoint_files.extend(files);
            }
        }
        for ext in EXTENSIONS {
            let suffix = format!(".vae.{ext}");
            for file in checkpoint_files.iter().filter(|f| has_suffix(f, &suffix)) {
                list.insert(file);
            }
        }
        let mut vae_files = Vec::new();
        for dir in &dirs.vae {
            walk(dir, &mut vae_files, &mut Visited::default());
        }
        for ext in EXTENSIONS {
            let suffix = format!(".{ext}");
            for file in vae_files.iter().filter(|f| has_suffix(f, &suffix)) {
                list.insert(file);
            }
        }
        list
    }

    /// A later file of the same name replaces an earlier one in its place (a Python dict).
    fn insert(&mut self, path: &Path) {
        let name = vae_name(path);
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = path.to_path_buf(),
            None => self.entries.push((name, path.to_path_buf())),
        }
    }

    /// Names and files, in order.
    pub fn entries(&self) -> &[(String, PathBuf)] {
        &self.entries
    }

    /// The file named `name`.
    pub fn get(&self, name: &str) -> Option<&Path> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }

    /// A1111's `sd_vae` choices (`shared_items.sd_vae_items`): Automatic, None, then the names.
    pub fn choices(&self) -> Vec<String> {
        [AUTOMATIC.to_string(), NONE.to_string()]
            .into_iter()
            .chain(self.entries.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    /// A1111's `find_vae_near_checkpoint`: the first VAE whose file name starts with the
    /// checkpoint's file name up to its last dot.
    pub fn near_checkpoint(&self, checkpoint: &Path) -> Option<&Path> {
        let name = vae_name(checkpoint);
        let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
        self.entries
            .iter()
            .find(|(n, _)| n.starts_with(stem))
            .map(|(_, p)| p.as_path())
    }
}

/// Which VAE a job runs with.
#[derive(Clone, Debug, PartialEq)]
pub enum VaeResolution {
    /// The checkpoint's own; `warning` says why when a named VAE was not found.
    Own { warning: Option<String> },
    /// An external file, and why it was picked (A1111's `vae_source`).
    File { path: PathBuf, source: &'static str },
}

/// Why a VAE choice cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VaeChoiceError {
    /// A path was given and there is no file there (A1111's `--vae-path` asserts the same).
    #[error("VAE file {0} does not exist")]
    MissingFile(PathBuf),
    /// A client named a file by path: clients choose among the listed VAE names only, so
    /// that no request reads a file outside the VAE folders.
    #[error("sd_vae \"{0}\" is a path; a client may name only a listed VAE (Automatic, None or a file name from the VAE list)")]
    PathFromClient(String),
}

/// Who chose a VAE: the machine's user (command line, config) may give any path; a client
/// (socket, HTTP API, a script's axis) only a listed name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeChooser {
    /// The user running sdhost.
    User,
    /// A client of the daemon.
    Client,
}

/// Whether `choice` is a path rather than an A1111 VAE name (names never hold a folder).
pub fn is_path(choice: &str) -> bool {
    choice.contains('/') || choice.contains(std::path::MAIN_SEPARATOR)
}

/// The per-checkpoint choice A1111 keeps in the checkpoint's user metadata
/// (`CHECKPOINT.json` beside it, key `vae`).
fn user_metadata_vae(checkpoint: &Path) -> Option<String> {
    let text = std::fs::read_to_string(checkpoint.with_extension("json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("vae")?.as_str().map(str::to_string)
}

/// A1111's `resolve_vae` with its default `sd_vae_overrides_per_model_preferences` (on):
/// a path is used as it is (`--vae-path`); `None` is the checkpoint's own; a name is that file
/// (else a file of that name in the working folder), or, when there is none, the checkpoint's
/// own with A1111's warning; `Automatic` is the
/// checkpoint's user-metadata choice, else the first VAE named like the checkpoint, else the
/// checkpoint's own.
pub fn resolve_vae(
    choice: &str,
    checkpoint: &Path,
    list: &VaeList,
) -> Result<VaeResolution, VaeChoiceError> {
    resolve_vae_for(VaeChooser::User, choice, checkpoint, list)
}

/// [`resolve_vae`] for `chooser`: a client's choice that is a path, or that names no listed
/// VAE, never reaches the file system (not even the working folder).
pub fn resolve_vae_for(
    chooser: VaeChooser,
    choice: &str,
    checkpoint: &Path,
    list: &VaeList,
) -> Result<VaeResolution, VaeChoiceError> {
    let own = VaeResolution::Own { warning: None };
    let choice = choice.trim();
    let user = chooser == VaeChooser::User;
    if is_path(choice) && !user {
        return Err(VaeChoiceError::PathFromClient(choice.to_string()));
    }
    if is_path(choice) {
        let path = PathBuf::from(choice);
        if !path.is_file() {
            return Err(VaeChoiceError::MissingFile(path));
        }
        return Ok(VaeResolution::File {
            path,
            source: "from a path",
        });
    }
    // "auto" is what older A1111 configs hold.
    let automatic = choice == AUTOMATIC || choice == "auto";
    if !automatic {
        return Ok(match list.get(choice) {
            _ if choice == NONE => own,
            Some(path) => VaeResolution::File {
                path: path.to_path_buf(),
                source: "specified in settings",
            },
            // sdhost's: a file in the working folder, given as `--vae file.pt`.
            None if user && Path::new(choice).is_file() => VaeResolution::File {
                path: PathBuf::from(choice),
                source: "from a path",
            },
            None => VaeResolution::Own {
                warning: Some(format!(
                    "Couldn't find VAE named {choice}; using None instead"
                )),
            },
        });
    }
    match user_metadata_vae(checkpoint).as_deref() {
        Some(NONE) => return Ok(own),
        Some(name) if name != AUTOMATIC => {
            if let Some(path) = list.get(name) {
                return Ok(VaeResolution::File {
                    path: path.to_path_buf(),
                    source: "from user metadata",
                });
            }
        }
        _ => {}
    }
    Ok(match list.near_checkpoint(checkpoint) {
        Some(path) => VaeResolution::File {
            path: path.to_path_buf(),
            source: "found near the checkpoint",
        },
        None => own,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn the_list_and_resolution_follow_a1111() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path();
        let ckpt = models.join("Stable-diffusion/anime-v3.safetensors");
        touch(&ckpt);
        touch(&models.join("Stable-diffusion/sub/anime-v3.vae.pt"));
        touch(&models.join("Stable-diffusion/other.ckpt"));
        touch(&models.join("VAE/kl-f8.safetensors"));
        touch(&models.join("VAE/deep/anime-v3-fix.ckpt"));
        touch(&models.join("VAE/notes.txt"));
        touch(&models.join("VAE/.hidden.pt"));
        let list = VaeList::scan(&NetworkDirs::from_models_dir(models), None);
        let names: Vec<&str> = list.entries().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["anime-v3.vae.pt", "anime-v3-fix.ckpt", "kl-f8.safetensors"]
        );
        assert_eq!(list.choices()[..2], ["Automatic", "None"]);

        let file = |p: &str| models.join(p);
        let resolve = |choice: &str| resolve_vae(choice, &ckpt, &list).unwrap();
        // Automatic: the first VAE named like the checkpoint.
        assert!(
            matches!(resolve("Automatic"), VaeResolution::File { path, .. } if path == file("Stable-diffusion/sub/anime-v3.vae.pt"))
        );
        assert_eq!(resolve("None"), VaeResolution::Own { warning: None });
        assert!(
            matches!(resolve("kl-f8.safetensors"), VaeResolution::File { path, .. } if path == file("VAE/kl-f8.safetensors"))
        );
        assert!(
            matches!(resolve("missing.pt"), VaeResolution::Own { warning: Some(w) } if w.contains("missing.pt"))
        );
        // Automatic for a checkpoint no VAE is named after: its own.
        let other = models.join("Stable-diffusion/other.ckpt");
        assert_eq!(
            resolve_vae("Automatic", &other, &list).unwrap(),
            VaeResolution::Own { warning: None }
        );
        // The checkpoint's user metadata wins under Automatic.
        std::fs::write(
            models.join("Stable-diffusion/other.json"),
            r#"{"vae": "kl-f8.safetensors"}"#,
        )
        .unwrap();
        assert!(
            matches!(resolve_vae("Automatic", &other, &list).unwrap(), VaeResolution::File { path, .. } if path == file("VAE/kl-f8.safetensors"))
        );
        // A path is used as it is, and must exist.
        let path = file("VAE/kl-f8.safetensors");
        assert!(matches!(
            resolve(path.to_str().unwrap()),
            VaeResolution::File { .. }
        ));
        assert!(resolve_vae("/nowhere/x.pt", &ckpt, &list).is_err());
        // A client names listed VAEs only: no path, no escape from the folders.
        let client = |choice: &str| resolve_vae_for(VaeChooser::Client, choice, &ckpt, &list);
        assert!(matches!(
            client("kl-f8.safetensors").unwrap(),
            VaeResolution::File { path, .. } if path == file("VAE/kl-f8.safetensors")
        ));
        for escape in [
            path.to_str().unwrap(),
            "/etc/passwd",
            "../VAE/kl-f8.safetensors",
            "VAE/../../x.pt",
        ] {
            assert_eq!(
                client(escape),
                Err(VaeChoiceError::PathFromClient(escape.to_string())),
                "{escape}"
            );
        }
        // Nor a file in the daemon's working folder that is not in the list.
        let here = std::env::current_dir().unwrap();
        let loose = here
            .read_dir()
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .expect("a file in the working folder");
        assert!(matches!(resolve(&loose), VaeResolution::File { .. }));
        assert!(matches!(
            client(&loose).unwrap(),
            VaeResolution::Own { warning: Some(_) }
        ));
    }

    #[test]
    fn a_checkpoint_outside_the_models_folder_brings_its_own_vae_files() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("loose/model.safetensors");
        touch(&ckpt);
        touch(&dir.path().join("loose/model.vae.safetensors"));
        touch(&dir.path().join("loose/deeper/model.vae.pt"));
        let list = VaeList::scan(&NetworkDirs::default(), ckpt.parent());
        let names: Vec<&str> = list.entries().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model.vae.safetensors"]);
    }
}
