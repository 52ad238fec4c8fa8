//! The CLIP interrogator's category word lists, read as A1111 reads its `interrogate/` folder
//! (`modules/interrogate.py: InterrogateModels.categories`): every `*.txt` of the folder (not
//! recursive) is one category named by its file stem; each line is one candidate, `strip()`ed,
//! blank lines kept as `""` candidates. A category gives `N` matches when its stem contains
//! `.topN.` (A1111's pattern `\.top(\d+)\.` searched in the stem), else one: so
//! `artists.top3.txt` gives one match in A1111 (its stem ends in `.top3`), and sdhost gives what
//! A1111 gives; `artists.top3.list.txt` gives three.
//!
//! Differences from A1111, each for a reason:
//! * Files are taken in file-name order, not `Path.glob`'s filesystem order (hash order on ext4),
//!   so the prompt's category order is the same on every machine.
//! * Edited files are re-read when their size or modification time changes; A1111 re-reads only
//!   after a restart or a change of the skip option.
//! * A missing folder is a clear error; A1111 tries to download the lists and, offline, returns
//!   the caption alone.
//! * Sub-folders named `*.txt` are passed over; A1111 fails opening them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// One category file: its name, how many matches it contributes and its candidate lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategoryList {
    /// The file stem (`artists`, `artists.top3`), what `interrogate_clip_skip_categories` names.
    pub name: String,
    /// How many matches the category contributes: `N` of a `.topN` stem suffix, else 1.
    pub topn: usize,
    /// The lines, `strip()`ed as Python strips them; blank lines are `""` candidates.
    pub items: Vec<String>,
}

impl CategoryList {
    /// The candidates ranked under `interrogate_clip_dict_limit`: the first `limit` lines, all
    /// when `limit` is 0 (`InterrogateModels.rank`'s `text_array[0:limit]`).
    pub fn used_items(&self, limit: u32) -> &[String] {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit == 0 {
            &self.items
        } else {
            &self.items[..self.items.len().min(limit)]
        }
    }
}

/// Why the category lists cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CategoriesError {
    /// The folder does not exist (or is not a folder).
    #[error(
        "the CLIP interrogation category folder {} does not exist: it holds the word lists \
         (`*.txt`, one candidate per line) that CLIP ranks against the picture. sdhost's setup \
         installs clip-interrogator 0.6.0's lists (artists, flavors, mediums, movements) there; \
         A1111 keeps the same files in `interrogate/` of its install folder, which can be copied \
         there instead",
        dir.display()
    )]
    FolderMissing {
        /// The folder looked for.
        dir: PathBuf,
    },
    /// The folder exists but cannot be listed.
    #[error("cannot list the CLIP interrogation category folder {}: {source}", dir.display())]
    ReadFolder {
        /// The folder.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A category file cannot be read.
    #[error("cannot read the CLIP interrogation category file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A category file is not UTF-8 text (A1111 reads them as UTF-8).
    #[error(
        "the CLIP interrogation category file {} is not UTF-8 text (line {line}); save it as \
         UTF-8 or add its name to the skipped categories",
        path.display()
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the first invalid byte.
        line: usize,
    },
}

/// What identifies a file's content cheaply: re-read when either changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// The category folder, with the lists read so far (re-read when their file changes).
#[derive(Debug)]
pub struct Categories {
    dir: PathBuf,
    loaded: Mutex<HashMap<PathBuf, (FileStamp, Arc<CategoryList>)>>,
}

impl Categories {
    /// The category folder `dir`; fails when it does not exist, before any work is done.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CategoriesError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(CategoriesError::FolderMissing { dir });
        }
        Ok(Self {
            dir,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lists in file-name order, leaving out those whose name is in `skip` (those files
    /// are not read at all, as in A1111). Files changed since the last call are read again.
    pub fn lists(&self, skip: &[String]) -> Result<Vec<Arc<CategoryList>>, CategoriesError> {
        let files = self.txt_files()?;
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget files that are gone, so the cache never outgrows the folder.
        loaded.retain(|path, _| files.iter().any(|(p, _, _)| p == path));
        let mut lists = Vec::new();
        for (path, name, stamp) in files {
            if skip.contains(&name) {
                continue;
            }
            if let Some((known, list)) = loaded.get(&path) {
                if *known == stamp {
                    lists.push(Arc::clone(list));
                    continue;
                }
            }
            let list = Arc::new(read_list(&path, name)?);
            loaded.insert(path, (stamp, Arc::clone(&list)));
            lists.push(list);
        }
        Ok(lists)
    }

    /// The `*.txt` files (path, stem, stamp), sorted by file name.
    fn txt_files(&self) -> Result<Vec<(PathBuf, String, FileStamp)>, CategoriesError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CategoriesError::FolderMissing {
                    dir: self.dir.clone(),
                }
            } else {
                CategoriesError::ReadFolder {
                    dir: self.dir.clone(),
                    source,
                }
            }
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CategoriesError::ReadFolder {
                dir: self.dir.clone(),
                source,
            })?;
            let file_name = entry.file_name();
            // Case-sensitive, hidden files included: what `Path.glob('*.txt')` matches on Linux.
            if !file_name.as_encoded_bytes().ends_with(b".txt") {
                continue;
            }
            let path = entry.path();
            // Follows symbolic links, as `open` does.
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let stamp = FileStamp {
                len: metadata.len(),
                modified: metadata.modified().ok(),
            };
            files.push((file_name, path, stamp));
        }
        files.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
        Ok(files
            .into_iter()
            .map(|(file_name, path, stamp)| (path, stem(&file_name.to_string_lossy()), stamp))
            .collect())
    }
}

/// Python's `PurePath.stem` of a `*.txt` name: the name without `.txt`, except for the name
/// `.txt` itself, which has no suffix.
fn stem(file_name: &str) -> String {
    if file_name == ".txt" {
        file_name.to_string()
    } else {
        file_name[..file_name.len() - ".txt".len()].to_string()
    }
}

/// `N` of the first `.topN.` in the stem (A1111's `re_topn = \.top(\d+)\.` searched in
/// `filename.stem`), else 1. ASCII digits only (Python's `\d` would also take other scripts'
/// digits; nobody names files so).
fn topn_of(stem: &str) -> usize {
    let bytes = stem.as_bytes();
    let mut from = 0;
    while let Some(at) = stem[from..].find(".top") {
        let start = from + at + ".top".len();
        let digits = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 && bytes.get(start + digits) == Some(&b'.') {
            // Saturates: a huge N means "all", which `min(N, len)` makes of it anyway.
            return stem[start..start + digits].parse().unwrap_or(usize::MAX);
        }
        from += at + 1;
    }
    1
}

/// Reads one category file as A1111 does: UTF-8, universal newlines, each line `strip()`ed.
fn read_list(path: &Path, name: String) -> Result<CategoryList, CategoriesError> {
    let bytes = std::fs::read(path).map_err(|source| CategoriesError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| CategoriesError::NotUtf8 {
        path: path.to_path_buf(),
        line: line_at_end(std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()),
    })?;
    let items = split_lines(text)
        .into_iter()
        .map(|line| python_strip(line).to_string())
        .collect();
    Ok(CategoryList {
        topn: topn_of(&name),
        name,
        items,
    })
}

/// The 1-based line on which the text `prefix` ends (where the next byte would be).
fn line_at_end(prefix: &str) -> usize {
    let complete = split_lines(prefix).len();
    if prefix.is_empty() || prefix.ends_with(['\n', '\r']) {
        complete + 1
    } else {
        complete
    }
}

/// The lines of `readlines()` in text mode with universal newlines: `\n`, `\r\n` and a lone
/// `\r` end a line; a final line without an ending counts, an empty text has none.
fn split_lines(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Python's `str.strip()`: removes the characters `str.isspace()` accepts, which are Unicode's
/// White_Space set plus the separators U+001C..U+001F (Rust's `trim` keeps those).
fn python_strip(line: &str) -> &str {
    line.trim_matches(is_python_whitespace)
}

fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn files_in_name_order_with_stems_topn_and_skip() {
        let dir = folder(&[
            ("mediums.txt", b"oil\n"),
            ("artists.top3.txt", b"x\n"),
            ("flavors.top12.list.txt", b"y\n"),
            ("notes.md", b"not a list\n"),
            ("UPPER.TXT", b"not matched: glob is case-sensitive\n"),
            (".hidden.txt", b"h\n"),
            ("odd.top.txt", b"z\n"),
            ("b.top3x.txt", b"w\n"),
        ]);
        fs::create_dir(dir.path().join("sub.txt")).unwrap();
        let categories = Categories::open(dir.path()).unwrap();
        let lists = categories.lists(&[]).unwrap();
        let names: Vec<_> = lists.iter().map(|l| (l.name.as_str(), l.topn)).collect();
        assert_eq!(
            names,
            [
                (".hidden", 1),
                ("artists.top3", 1),
                ("b.top3x", 1),
                ("flavors.top12.list", 12),
                ("mediums", 1),
                ("odd.top", 1),
            ]
        );
        let lists = categories
            .lists(&["artists.top3".to_string(), "mediums".to_string()])
            .unwrap();
        let names: Vec<_> = lists.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [".hidden", "b.top3x", "flavors.top12.list", "odd.top"]
        );
    }

    #[test]
    fn topn_and_stem_edge_cases() {
        assert_eq!(topn_of("a.top0.b"), 0);
        assert_eq!(topn_of("a.top7"), 1);
        assert_eq!(topn_of("a.top1.top7"), 1);
        assert_eq!(topn_of("a.topx.top7.b"), 7);
        assert_eq!(topn_of("a.top99999999999999999999999.b"), usize::MAX);
        assert_eq!(topn_of("top3"), 1);
        assert_eq!(topn_of("a.top-3"), 1);
        assert_eq!(stem(".txt"), ".txt");
        assert_eq!(stem("..txt"), ".");
        assert_eq!(stem("a.b.txt"), "a.b");
    }

    #[test]
    fn lines_read_as_python_readlines_and_strip() {
        let content = "  Alice \n\n\tBob\r\nCarol\rDan\r\r\n\u{3000}Eve\u{2003}\n\u{1c}Fay\u{1f}\n\
                       \u{feff}bom\u{200b}\nJosé ’quoted’\n   \nlast"
            .as_bytes();
        let dir = folder(&[("a.txt", content)]);
        let lists = Categories::open(dir.path()).unwrap().lists(&[]).unwrap();
        assert_eq!(
            lists[0].items,
            [
                "Alice",
                "",
                "Bob",
                "Carol",
                "Dan",
                "",
                "Eve",
                "Fay",
                // U+FEFF and U+200B are not whitespace to Python.
                "\u{feff}bom\u{200b}",
                "José ’quoted’",
                "",
                "last",
            ]
        );
    }

    #[test]
    fn final_newline_and_empty_file() {
        assert_eq!(split_lines("a\nb\n"), ["a", "b"]);
        assert_eq!(split_lines("a\n\n"), ["a", ""]);
        assert_eq!(split_lines(""), Vec::<&str>::new());
        assert_eq!(split_lines("\n"), [""]);
        assert_eq!(split_lines("\r"), [""]);
        // Only \n and \r end lines in readlines(), not the other Unicode line breaks.
        assert_eq!(
            split_lines("a\u{2028}b\u{85}c\x0cd"),
            ["a\u{2028}b\u{85}c\x0cd"]
        );
    }

    #[test]
    fn dict_limit_takes_the_first_lines() {
        let list = CategoryList {
            name: "a".into(),
            topn: 1,
            items: vec!["x".into(), "".into(), "z".into()],
        };
        assert_eq!(list.used_items(0), ["x", "", "z"]);
        assert_eq!(list.used_items(2), ["x", ""]);
        assert_eq!(list.used_items(1500), ["x", "", "z"]);
    }

    #[test]
    fn missing_folder_and_bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("interrogate");
        let error = Categories::open(&missing).unwrap_err();
        assert!(matches!(error, CategoriesError::FolderMissing { .. }));
        let message = error.to_string();
        assert!(message.contains("interrogate"), "{message}");
        assert!(message.contains("clip-interrogator 0.6.0"), "{message}");
        assert!(message.contains("A1111"), "{message}");

        let dir = folder(&[
            ("good.txt", b"a\n"),
            ("bad.txt", b"ok\nfine\nbad \xff here\n"),
        ]);
        let categories = Categories::open(dir.path()).unwrap();
        match categories.lists(&[]).unwrap_err() {
            CategoriesError::NotUtf8 { path, line } => {
                assert_eq!(path.file_name().unwrap(), "bad.txt");
                assert_eq!(line, 3);
            }
            other => panic!("{other}"),
        }
        // A skipped file is not read, so its encoding does not matter (as in A1111).
        let lists = categories.lists(&["bad".to_string()]).unwrap();
        assert_eq!(lists.len(), 1);

        // The folder removed after opening.
        let gone = tempfile::tempdir().unwrap();
        let categories = Categories::open(gone.path()).unwrap();
        fs::remove_dir(gone.path()).unwrap();
        assert!(matches!(
            categories.lists(&[]),
            Err(CategoriesError::FolderMissing { .. })
        ));
    }

    #[test]
    fn changed_files_are_read_again() {
        let dir = folder(&[("a.txt", b"one\n"), ("b.txt", b"bee\n")]);
        let categories = Categories::open(dir.path()).unwrap();
        let first = categories.lists(&[]).unwrap();
        assert_eq!(first[0].items, ["one"]);
        // Unchanged: the same list, not read again.
        let again = categories.lists(&[]).unwrap();
        assert!(Arc::ptr_eq(&first[0], &again[0]));

        // Same size, new modification time.
        let path = dir.path().join("a.txt");
        fs::write(&path, b"two\n").unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        drop(file);
        let changed = categories.lists(&[]).unwrap();
        assert_eq!(changed[0].items, ["two"]);
        assert!(Arc::ptr_eq(&first[1], &changed[1]), "b.txt was not re-read");

        // Same modification time, new size.
        fs::write(&path, b"three\n").unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        drop(file);
        assert_eq!(categories.lists(&[]).unwrap()[0].items, ["three"]);

        // Removed and added files.
        fs::remove_file(&path).unwrap();
        fs::write(dir.path().join("c.txt"), b"sea\n").unwrap();
        let names: Vec<_> = categories
            .lists(&[])
            .unwrap()
            .iter()
            .map(|l| l.name.clone())
            .collect();
        assert_eq!(names, ["b", "c"]);
    }
}
