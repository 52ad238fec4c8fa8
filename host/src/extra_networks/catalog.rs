//! Network files in an A1111 `models/` tree (`Lora/`, `LyCORIS/`, `hypernetworks/`, `VAE/`):
//! found recursively, named by file stem, with their safetensors metadata and the alias it
//! gives (A1111's `networks.list_available_networks` and `NetworkOnDisk`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::checkpoint::FileHashKind;
use crate::folder_walk::Visited;

/// One network file.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkFile {
    /// The file name without folder and extension.
    pub name: String,
    /// `ss_output_name` from the metadata, else the name.
    pub alias: String,
    /// Where it is.
    pub path: PathBuf,
    /// The safetensors `__metadata__` (empty for pickles).
    pub metadata: BTreeMap<String, String>,
}

impl NetworkFile {
    /// Reads the metadata of `path` (safetensors only; a pickle has none to read safely).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let metadata = if is_safetensors(path) {
            read_safetensors_metadata(path)?
        } else {
            BTreeMap::new()
        };
        let alias = metadata
            .get("ss_output_name")
            .cloned()
            .unwrap_or_else(|| name.clone());
        Ok(Self {
            name,
            alias,
            path: path.to_path_buf(),
            metadata,
        })
    }

    /// The trainer's `sshs_model_hash`, which A1111 prefers to hashing the file itself.
    pub fn stored_hash(&self) -> Option<&str> {
        self.metadata
            .get("sshs_model_hash")
            .map(String::as_str)
            .filter(|h| !h.is_empty())
    }

    /// How A1111 hashes a LoRA/LyCORIS file: the addnet hash for `.safetensors` (metadata
    /// edits leave it alone), else the sha256 of the file.
    pub fn lora_hash_kind(&self) -> FileHashKind {
        if self.is_safetensors() {
            FileHashKind::Addnet
        } else {
            FileHashKind::Sha256
        }
    }

    /// Whether the file is a `.safetensors` (by extension, as A1111 decides).
    pub fn is_safetensors(&self) -> bool {
        is_safetensors(&self.path)
    }
}

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// The `__metadata__` map of a safetensors file's header.
pub fn read_safetensors_metadata(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let file = std::fs::File::open(path)?;
    // SAFETY: read-only map of a file the user pointed at; see `checkpoint::Checkpoint::open`.
    let mmap = unsafe { memmap2::Mmap::map(&file) }?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a valid .safetensors file ({e})", path.display()),
        )
    })?;
    Ok(metadata
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default())
}

/// Every network file of one kind, by name and alias.
#[derive(Clone, Debug, Default)]
pub struct NetworkCatalog {
    files: Vec<NetworkFile>,
    /// Folders searched, for the "not found" warning.
    dirs: Vec<PathBuf>,
    /// Files that could not be read, with why (A1111 reports and skips them).
    unreadable: Vec<(PathBuf, String)>,
    /// Lower-cased aliases a picker must not offer (A1111's `forbidden_network_aliases`).
    forbidden_aliases: BTreeSet<String>,
}

/// The extensions A1111 lists extra-network files with.
pub const NETWORK_EXTENSIONS: &[&str] = &["safetensors", "pt", "ckpt"];

fn walk(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>, visited: &mut Visited) {
    if !visited.first_visit(dir) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, extensions, out, visited);
        } else if path.extension().is_some_and(|e| {
            extensions
                .iter()
                .any(|x| e.eq_ignore_ascii_case(std::ffi::OsStr::new(x)))
        }) {
            out.push(path);
        }
    }
}

impl NetworkCatalog {
    /// The files with one of `extensions` under each of `dirs` (missing folders are skipped).
    pub fn scan(dirs: &[PathBuf], extensions: &[&str]) -> Self {
        let mut paths = Vec::new();
        for dir in dirs {
            walk(dir, extensions, &mut paths, &mut Visited::default());
        }
        let mut catalog = Self {
            dirs: dirs.to_vec(),
            // A1111 seeds the set with "none" and "Addams"; its lookup lower-cases the alias,
            // so only "none" ever matches.
            forbidden_aliases: BTreeSet::from(["none".to_string()]),
            ..Self::default()
        };
        let mut seen = BTreeSet::new();
        for path in paths {
            match NetworkFile::open(&path) {
                Ok(file) => {
                    // An alias that an earlier file already has as name or alias.
                    if seen.contains(&file.alias) {
                        catalog.forbidden_aliases.insert(file.alias.to_lowercase());
                    }
                    seen.insert(file.name.clone());
                    seen.insert(file.alias.clone());
                    catalog.files.push(file);
                }
                Err(e) => catalog.unreadable.push((path, e.to_string())),
            }
        }
        catalog
    }

    /// The files, in folder order then path order.
    pub fn files(&self) -> &[NetworkFile] {
        &self.files
    }

    /// The folders searched.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Files skipped because they could not be read.
    pub fn unreadable(&self) -> &[(PathBuf, String)] {
        &self.unreadable
    }

    /// The name a picker puts in the tag it inserts (A1111's `NetworkOnDisk.get_alias` with
    /// the default `lora_preferred_name`): the alias, unless another file claims it too.
    pub fn prompt_name<'a>(&self, file: &'a NetworkFile) -> &'a str {
        if self.forbidden_aliases.contains(&file.alias.to_lowercase()) {
            &file.name
        } else {
            &file.alias
        }
    }

    /// The file a tag names: A1111's `available_network_aliases`, where a later file's name or
    /// alias replaces an earlier one's.
    pub fn find(&self, name: &str) -> Option<&NetworkFile> {
        self.files
            .iter()
            .rev()
            .find(|f| f.name == name || f.alias == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_safetensors(path: &Path, metadata: &[(&str, &str)]) {
        let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &bytes).unwrap();
        let metadata: std::collections::HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        safetensors::serialize_to_file([("w", view)], Some(metadata), path).unwrap();
    }

    #[test]
    fn files_are_found_by_name_and_alias_in_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        let lora = dir.path().join("Lora");
        std::fs::create_dir_all(lora.join("styles")).unwrap();
        write_safetensors(
            &lora.join("styles/detail.safetensors"),
            &[("ss_output_name", "add_detail")],
        );
        write_safetensors(&lora.join("plain.safetensors"), &[]);
        std::fs::write(lora.join("old.pt"), b"pickle").unwrap();
        std::fs::write(lora.join("notes.txt"), b"x").unwrap();
        std::fs::write(lora.join("broken.safetensors"), b"xx").unwrap();
        let catalog = NetworkCatalog::scan(
            &[lora.clone(), dir.path().join("LyCORIS")],
            NETWORK_EXTENSIONS,
        );
        let names: Vec<&str> = catalog.files().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["old", "plain", "detail"]);
        assert_eq!(catalog.find("add_detail").unwrap().name, "detail");
        assert_eq!(catalog.find("detail").unwrap().alias, "add_detail");
        assert_eq!(catalog.find("plain").unwrap().alias, "plain");
        assert!(catalog.find("missing").is_none());
        // `<lora:NAME:…>` picks a listed file; a path finds nothing, in or out of the folder.
        write_safetensors(&dir.path().join("outside.safetensors"), &[]);
        let outside = dir.path().join("outside.safetensors");
        for escape in [
            "../outside",
            "../outside.safetensors",
            "styles/detail",
            "../Lora/plain",
            outside.to_str().unwrap(),
            "/etc/passwd",
        ] {
            assert!(catalog.find(escape).is_none(), "{escape}");
        }
        assert_eq!(catalog.unreadable().len(), 1);
        assert_eq!(
            catalog.prompt_name(catalog.find("detail").unwrap()),
            "add_detail"
        );
    }

    #[test]
    fn a_link_looping_back_lists_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let lora = dir.path().join("Lora");
        std::fs::create_dir_all(lora.join("a")).unwrap();
        write_safetensors(&lora.join("a/one.safetensors"), &[]);
        // Two loops: without the visited set the walk would branch at every level.
        std::os::unix::fs::symlink(&lora, lora.join("a/up")).unwrap();
        std::os::unix::fs::symlink(&lora, lora.join("a/again")).unwrap();
        let catalog = NetworkCatalog::scan(&[lora], NETWORK_EXTENSIONS);
        let names: Vec<&str> = catalog.files().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["one"]);
    }

    #[test]
    fn an_alias_two_files_claim_is_not_offered() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(
            &dir.path().join("a.safetensors"),
            &[("ss_output_name", "style")],
        );
        write_safetensors(
            &dir.path().join("b.safetensors"),
            &[("ss_output_name", "style")],
        );
        write_safetensors(
            &dir.path().join("c.safetensors"),
            &[("ss_output_name", "None")],
        );
        let catalog = NetworkCatalog::scan(&[dir.path().to_path_buf()], NETWORK_EXTENSIONS);
        let names: Vec<&str> = catalog
            .files()
            .iter()
            .map(|f| catalog.prompt_name(f))
            .collect();
        // A1111 forbids the alias from the second file on: both then insert their file name.
        assert_eq!(names, ["a", "b", "c"]);
        // A tag naming the alias still finds a file: the last one, as A1111's dict keeps it.
        assert_eq!(catalog.find("style").unwrap().name, "b");
    }
}
