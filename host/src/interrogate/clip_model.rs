//! OpenAI's CLIP ViT-L/14 as A1111's interrogator loads and runs it
//! (`modules/interrogate.py: InterrogateModels.load_clip_model`, `clip.load("ViT-L/14")`):
//! the TorchScript archive `ViT-L-14.pt` (or a plain `torch.save(state_dict)` file) read
//! through the restricted unpickler, every tensor converted to the compute dtype, and the
//! [`ClipFeatures`] the ranking needs.

use super::clip_preprocess::{normalize, resize_and_crop};
use super::clip_tokenize::{padded, through_end_of_text, token_row};
use super::ClipFeatures;
use crate::checkpoint::{default_cache_dir, Checkpoint, ModelHashes};
use crate::models::openai_clip::{OpenAiClip, OpenAiClipConfig};
use crate::weights::{LoadError, VarBuilder};
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Rows of text encoded at once: a bound on memory whatever the category file's length
/// (A1111 sends a whole category in one batch; with the dictionary limit off that is 100 970
/// flavors at once).
const TEXT_CHUNK: usize = 256;

/// Why a CLIP model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClipModelError {
    /// The file cannot be read, is refused by the restricted unpickler, misses a tensor or
    /// has one of the wrong shape.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The file holds tensors, but not an OpenAI CLIP ViT model's.
    #[error("{path}: not an OpenAI CLIP ViT model file (such as ViT-L-14.pt): {reason}")]
    NotClip { path: PathBuf, reason: String },
    /// The file could not be hashed.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// OpenAI's CLIP, loaded for interrogation: preprocessing, tokenizer and both towers.
pub struct OpenAiClipFeatures {
    model: OpenAiClip,
    identity: String,
}

impl OpenAiClipFeatures {
    /// Loads `path` onto `device`: fp16 on CUDA, fp32 elsewhere (spec §2.1: A1111 halves the
    /// model unless it runs on the CPU).
    pub fn load(path: &Path, device: Device) -> Result<Self, ClipModelError> {
        let kind = if device.is_cuda() {
            Kind::Half
        } else {
            Kind::Float
        };
        Self::load_as(path, device, kind)
    }

    /// Loads `path` onto `device` with every weight converted to `kind` (`--no-half` on a GPU).
    pub fn load_as(path: &Path, device: Device, kind: Kind) -> Result<Self, ClipModelError> {
        let checkpoint = Checkpoint::open(path)?;
        let config = OpenAiClipConfig::infer(checkpoint.keys(), |k| checkpoint.shape(k)).map_err(
            |reason| ClipModelError::NotClip {
                path: path.to_path_buf(),
                reason,
            },
        )?;
        let vb = VarBuilder::new(&checkpoint, kind, device);
        let model = tch::no_grad(|| OpenAiClip::new(&vb, &config))?;
        drop(checkpoint);
        let identity = ModelHashes::cached(path, default_cache_dir().as_deref())
            .map_err(|source| ClipModelError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .sha256;
        Ok(Self { model, identity })
    }

    /// The network.
    pub fn model(&self) -> &OpenAiClip {
        &self.model
    }

    /// The model's input side in pixels (224 for ViT-L/14).
    pub fn input_resolution(&self) -> u32 {
        self.model.config().input_resolution as u32
    }

    /// The context length of the text tower (77).
    pub fn context_length(&self) -> usize {
        self.model.config().text.context_length as usize
    }

    /// The 8-bit picture the image tower sees (`Resize` + `CenterCrop`).
    pub fn preprocess(&self, image: &RgbImage) -> RgbImage {
        resize_and_crop(image, self.input_resolution())
    }
}

impl ClipFeatures for OpenAiClipFeatures {
    fn image_features(&self, image: &RgbImage) -> Tensor {
        let pixels = normalize(&self.preprocess(image));
        tch::no_grad(|| self.model.encode_image(&pixels))
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
    }

    fn text_features(&self, lines: &[String]) -> Tensor {
        let context = self.context_length();
        let rows: Vec<Vec<i64>> = lines
            .iter()
            .map(|line| through_end_of_text(&token_row(line, context)).to_vec())
            .collect();
        // Rows of similar length share a chunk, so padding stays short; results go back to
        // the lines' order.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let embed = self.model.config().embed_dim;
        let mut features = Tensor::zeros([rows.len() as i64, embed], (Kind::Float, Device::Cpu));
        for chunk in order.chunks(TEXT_CHUNK) {
            let chunk_rows: Vec<Vec<i64>> = chunk.iter().map(|&i| rows[i].clone()).collect();
            let width = chunk_rows.iter().map(Vec::len).max().unwrap_or(1);
            let ids = padded(&chunk_rows, width);
            let encoded = tch::no_grad(|| self.model.encode_text(&ids))
                .to_device(Device::Cpu)
                .to_kind(Kind::Float);
            let index = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
            features = features.index_copy(0, &index, &encoded);
        }
        features
    }

    fn identity(&self) -> &str {
        &self.identity
    }
}
