//! What clients see of the loaded model: the worker keeps it current, `welcome`, `list` and
//! the HTTP API read it.

use std::path::PathBuf;

use super::event::ModelFacts;
use crate::pipeline::model::GenerationModel;
use crate::prompt::embeddings::EmbeddingShape;

/// What clients see of the loaded model (kept current by the worker).
#[derive(Debug, Clone, Default)]
pub struct ModelStatus {
    /// Infotext name of the loaded model.
    pub name: String,
    /// Its short hash.
    pub hash: String,
    /// Its file.
    pub path: PathBuf,
    /// Whether it is the random-weight demo model.
    pub demo: bool,
    /// Embeddings its prompts can use.
    pub embeddings: Vec<String>,
    /// Whether it is an inpainting model (a 9-channel UNet).
    pub inpainting: bool,
    /// Its embeddings' shapes, loaded and skipped (the HTTP API's `/embeddings`).
    pub embedding_shapes: (Vec<EmbeddingShape>, Vec<EmbeddingShape>),
    /// How many checkpoints the daemon keeps loaded (A1111's `sd_checkpoints_limit`, which
    /// the HTTP API's `/options` reports).
    pub checkpoints_limit: usize,
}

impl ModelStatus {
    /// The status of `model`, loaded from `path` (not the demo model).
    pub fn of(model: &GenerationModel, path: PathBuf, checkpoints_limit: usize) -> Self {
        ModelStatus {
            name: model.name.clone(),
            hash: model.hash.clone(),
            path,
            demo: false,
            embeddings: model.embeddings.names(),
            inpainting: model.sd.architecture.is_inpainting(),
            embedding_shapes: (
                model.embeddings.shapes(),
                model.embeddings.skipped_shapes.clone(),
            ),
            checkpoints_limit,
        }
    }

    /// What `welcome` and `list` say of it.
    pub fn facts(&self) -> ModelFacts {
        ModelFacts {
            name: self.name.clone(),
            hash: self.hash.clone(),
            demo: self.demo,
            embeddings: self.embeddings.clone(),
        }
    }
}
