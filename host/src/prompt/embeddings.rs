//! Textual-inversion embeddings from an `embeddings/` folder: the file name is the prompt word.

use super::tokenizer::ClipTokenizer;
use crate::checkpoint::{Checkpoint, ModelHashes};
use crate::folder_walk::Visited;
use crate::weights::LoadError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// One embedding: its vectors replace the tokens of its name in a prompt.
#[derive(Debug)]
pub struct Embedding {
    /// Prompt word (file name without extension).
    pub name: String,
    /// Vectors, row-major [n, width], fp32 (plain data, so embeddings can be shared freely).
    pub vectors: Vec<f32>,
    /// Width of each vector (the text encoder's width).
    pub width: i64,
    /// First 12 hex characters of the file's sha256 (infotext `TI hashes`).
    pub hash: String,
    /// File it came from.
    pub path: PathBuf,
}

impl Embedding {
    /// Number of vectors, i.e. prompt positions it occupies.
    pub fn len(&self) -> usize {
        self.vectors.len() / self.width.max(1) as usize
    }

    /// The vectors as a CPU tensor [n, width].
    pub fn tensor(&self) -> Tensor {
        Tensor::from_slice(&self.vectors).view([self.len() as i64, self.width])
    }

    /// Whether it has no vectors (never true for a loaded embedding).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an embedding file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// The file could not be read as a checkpoint-style tensor file.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The file holds several tensors and none is recognisably the embedding.
    #[error("{path}: expected one embedding tensor, found {count} ({keys})")]
    Ambiguous {
        path: PathBuf,
        count: usize,
        keys: String,
    },
    /// Vectors of another text encoder width (an SDXL or SD2 embedding, say).
    #[error("{path}: embedding width {found} does not match the text encoder's {expected}")]
    WrongWidth {
        path: PathBuf,
        found: i64,
        expected: i64,
        /// How many vectors it has (A1111 lists skipped embeddings with their shape).
        vectors: i64,
    },
    /// A `.pt`/`.bin` pickle that could not be read or was refused.
    #[error(transparent)]
    Pickle(#[from] crate::pickle::PickleError),
    /// Not a file type embeddings come in.
    #[error("{path}: unsupported embedding file type")]
    UnsupportedType { path: PathBuf },
}

/// An embedding with the token ids of its name.
type NamedEmbedding = (Vec<u32>, Arc<Embedding>);

/// The embeddings available to prompts, looked up by their token sequence.
#[derive(Clone, Default)]
pub struct EmbeddingDatabase {
    /// First token id → (token ids of the name, embedding), longest names first.
    by_first_token: HashMap<u32, Vec<NamedEmbedding>>,
    /// Files that were skipped, with the reason (shown to users, never fatal).
    pub skipped: Vec<String>,
    /// The skipped embeddings of another text encoder's width, with their shapes.
    pub skipped_shapes: Vec<EmbeddingShape>,
}

/// What A1111's `/sdapi/v1/embeddings` shows of an embedding: its name, width and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingShape {
    /// The prompt word.
    pub name: String,
    /// The width of its vectors (768 for SD1).
    pub shape: i64,
    /// How many vectors it has.
    pub vectors: i64,
}

impl EmbeddingDatabase {
    /// Loads every embedding under `dir` (recursively) whose width is `width`.
    pub fn load_dir(dir: &Path, width: i64) -> std::io::Result<Self> {
        let mut db = Self::default();
        let mut files = Vec::new();
        collect_files(dir, &mut files, &mut Visited::default())?;
        files.sort();
        for path in files {
            match load_embedding(&path, width) {
                Ok(embedding) => db.add(embedding),
                Err(e) => {
                    if let EmbeddingError::WrongWidth { found, vectors, .. } = &e {
                        db.skipped_shapes.push(EmbeddingShape {
                            name: embedding_name(&path),
                            shape: *found,
                            vectors: *vectors,
                        });
                    }
                    db.skipped.push(e.to_string());
                }
            }
        }
        Ok(db)
    }

    /// Registers `embedding` under its name's tokens.
    pub fn add(&mut self, embedding: Embedding) {
        let ids = ClipTokenizer::shared().encode(&embedding.name);
        let Some(&first) = ids.first() else {
            self.skipped
                .push(format!("{}: name has no tokens", embedding.path.display()));
            return;
        };
        let entries = self.by_first_token.entry(first).or_default();
        entries.push((ids, Arc::new(embedding)));
        entries.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
    }

    /// The embedding whose name's tokens start at `tokens[pos]`, with that token count.
    pub fn find_at(&self, tokens: &[u32], pos: usize) -> Option<(&Arc<Embedding>, usize)> {
        let candidates = self.by_first_token.get(tokens.get(pos)?)?;
        candidates
            .iter()
            .find(|(ids, _)| tokens[pos..].starts_with(ids))
            .map(|(ids, e)| (e, ids.len()))
    }

    /// The names of the loaded embeddings (the words prompts use), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_first_token
            .values()
            .flat_map(|entries| entries.iter().map(|(_, e)| e.name.clone()))
            .collect();
        names.sort();
        names
    }

    /// The loaded embeddings' shapes, by name.
    pub fn shapes(&self) -> Vec<EmbeddingShape> {
        let mut shapes: Vec<EmbeddingShape> = self
            .by_first_token
            .values()
            .flat_map(|entries| {
                entries.iter().map(|(_, e)| EmbeddingShape {
                    name: e.name.clone(),
                    shape: e.width,
                    vectors: e.len() as i64,
                })
            })
            .collect();
        shapes.sort_by(|a, b| a.name.cmp(&b.name));
        shapes
    }

    /// A digest of which embeddings are loaded (name, file hash, path and shape of each):
    /// equal digests mean prompts encode the same (the prompt conditioning cache's key).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut entries: Vec<&Embedding> = self
            .by_first_token
            .values()
            .flat_map(|entries| entries.iter().map(|(_, e)| e.as_ref()))
            .collect();
        entries.sort_by(|a, b| (&a.name, &a.path).cmp(&(&b.name, &b.path)));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for e in entries {
            (&e.name, &e.hash, &e.path, e.width, e.vectors.len()).hash(&mut hasher);
        }
        hasher.finish()
    }

    /// Whether an embedding called `name` is loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.by_first_token
            .values()
            .any(|entries| entries.iter().any(|(_, e)| e.name == name))
    }

    /// Number of loaded embeddings.
    pub fn len(&self) -> usize {
        self.by_first_token.values().map(Vec::len).sum()
    }

    /// Whether none is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, visited: &mut Visited) -> std::io::Result<()> {
    if !visited.first_visit(dir) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out, visited)?;
        } else if std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads one embedding file (`.safetensors`; `.pt`/`.bin` through the restricted unpickler).
pub fn load_embedding(path: &Path, width: i64) -> Result<Embedding, EmbeddingError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let vectors = match ext.as_str() {
        "safetensors" => vectors_from_safetensors(path)?,
        "pt" | "bin" => crate::pickle::embedding_vectors(path)?,
        _ => {
            return Err(EmbeddingError::UnsupportedType {
                path: path.to_path_buf(),
            })
        }
    };
    let vectors = if vectors.dim() == 1 {
        vectors.unsqueeze(0)
    } else {
        vectors
    }
    .to_kind(Kind::Float);
    let found = *vectors.size().last().unwrap_or(&0);
    if vectors.dim() != 2 || found != width {
        return Err(EmbeddingError::WrongWidth {
            path: path.to_path_buf(),
            found,
            expected: width,
            vectors: if vectors.dim() == 2 {
                vectors.size()[0]
            } else {
                0
            },
        });
    }
    let hash = ModelHashes::compute(path)
        .map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .sha256[..12]
        .to_string();
    let data: Vec<f32> = Vec::try_from(vectors.flatten(0, -1)).map_err(LoadError::from)?;
    Ok(Embedding {
        vectors: data,
        width,
        name: embedding_name(path),
        hash,
        path: path.to_path_buf(),
    })
}

/// An embedding's name: its file's name without folder and extension (A1111's
/// `modules/textual_inversion/textual_inversion.py: load_from_file`).
fn embedding_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A single-tensor file (kohya's `emb_params`, diffusers' `{token: tensor}`), or A1111's
/// `string_to_param.*` key when present.
fn vectors_from_safetensors(path: &Path) -> Result<Tensor, EmbeddingError> {
    let file = Checkpoint::open(path)?;
    let keys: Vec<&str> = file.keys().collect();
    // SDXL embeddings hold one part per text encoder; A1111 expects them side by side
    // (`get_expected_shape`), CLIP-L's first.
    if keys == ["clip_g", "clip_l"] {
        let (l, g) = (file.raw("clip_l")?, file.raw("clip_g")?);
        if l.size().first() != g.size().first() || l.dim() != 2 || g.dim() != 2 {
            return Err(EmbeddingError::Ambiguous {
                path: path.to_path_buf(),
                count: 2,
                keys: format!(
                    "clip_l {:?}, clip_g {:?} of different lengths",
                    l.size(),
                    g.size()
                ),
            });
        }
        return Ok(Tensor::cat(
            &[l.to_kind(Kind::Float), g.to_kind(Kind::Float)],
            1,
        ));
    }
    let key = match keys.as_slice() {
        [only] => *only,
        _ => match keys.iter().find(|k| k.starts_with("string_to_param.")) {
            Some(k) => *k,
            None => {
                return Err(EmbeddingError::Ambiguous {
                    path: path.to_path_buf(),
                    count: keys.len(),
                    keys: keys.join(", "),
                })
            }
        },
    };
    Ok(file.raw(key)?)
}

/// A1111's `TI hashes` infotext value for the embeddings used: `name: hash, …` in first-use
/// order, with `:` and `,` removed from names; `None` when no embedding was used.
pub fn ti_hashes<'a>(used: impl IntoIterator<Item = &'a Embedding>) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    for e in used {
        let name = e.name.replace([':', ','], "");
        if !seen.contains(&name) {
            parts.push(format!("{name}: {}", e.hash));
            seen.push(name);
        }
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}
