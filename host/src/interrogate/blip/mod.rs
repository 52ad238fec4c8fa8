//! The BLIP caption that starts A1111's "Interrogate CLIP" result
//! (`modules/interrogate.py: InterrogateModels.generate_caption`, salesforce/BLIP
//! `models/blip.py: blip_decoder` at `image_size=384`).
//!
//! * The model file is the `.pth` A1111 downloads (`model_base_caption_capfilt_large.pth`): a
//!   `torch.save` of `{"model": state_dict}`, read by the restricted unpickler; shapes are
//!   checked before anything is built.
//! * The tokenizer is BERT's `vocab.txt` (`bert-base-uncased`, which A1111 takes from the
//!   Hugging Face cache), see [`vocab`].
//! * The picture is resized to 384×384 with Pillow's bicubic filter (aspect not kept),
//!   normalised with CLIP's mean and std, encoded by the ViT; the decoder then writes after
//!   `[DEC] a picture of` ([`search`]); the text loses its first 13 characters.
//!
//! Beyond A1111: `interrogate_clip_num_beams > 1` runs a real beam search (A1111 v1.10.1 fails
//! and answers `<error>`); the decoder keeps a KV cache (A1111 recomputes the sequence each
//! step, same mathematics). Precision: fp32 on the CPU; fp16 weights and activations on CUDA,
//! as A1111 (which may flip a rare near-tie of the fp32 result).

pub mod search;
pub mod vocab;

use crate::interrogate::InterrogateOptions;
use crate::models::blip::{BlipConfig, BlipModel, IMAGE_SIZE};
use crate::pickle::{PickleError, TensorRef, TorchFile, Value};
use crate::prepare::resample::{resize, Filter};
use crate::weights::{LoadError, TensorSource, VarBuilder};
use image::RgbImage;
use search::Lengths;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use vocab::{BertVocab, VocabError};

/// The largest `interrogate_clip_num_beams` (A1111's slider).
pub const MAX_BEAMS: u32 = 16;

/// What can go wrong loading BLIP or captioning with it.
#[derive(Debug, thiserror::Error)]
pub enum BlipError {
    /// The restricted unpickler refused the file or could not read it.
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// A tensor is missing or has the wrong shape.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The file is a PyTorch file but not a BLIP captioner.
    #[error("{path}: not a BLIP captioning model: {reason}")]
    NotBlip {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The vocabulary file cannot be read or lacks BERT's fixed tokens.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// The vocabulary and the model's word table do not belong together.
    #[error("{vocab}: {lines} tokens, but the BLIP model's word table has {rows} rows (the vocabulary's tokens + [DEC] + [ENC] expected)")]
    VocabMismatch {
        /// The vocabulary file.
        vocab: PathBuf,
        /// Its number of tokens.
        lines: i64,
        /// Rows of the model's word table.
        rows: i64,
    },
    /// An interrogation option is outside what BLIP can run.
    #[error("{option} = {value}: {allowed}")]
    InvalidOption {
        /// The option key.
        option: &'static str,
        /// The value given.
        value: u32,
        /// What is allowed.
        allowed: String,
    },
    /// libtorch refused an operation (device unavailable, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The tensors of a BLIP `.pth` (its `model` entry), read lazily from the mapped file.
struct BlipFile {
    file: TorchFile,
    tensors: BTreeMap<String, TensorRef>,
}

impl BlipFile {
    fn open(path: &Path) -> Result<Self, BlipError> {
        let file = TorchFile::open(path)?;
        let not_blip = |reason: String| BlipError::NotBlip {
            path: path.to_path_buf(),
            reason,
        };
        // `load_checkpoint` takes `checkpoint['model']`; other entries are ignored.
        let model = match file.root.get("model") {
            Some(model @ Value::Dict(_)) => model,
            _ => {
                return Err(not_blip(format!(
                    "the file holds a {} without a `model` state dict",
                    file.root.type_name()
                )))
            }
        };
        let Value::Dict(items) = &model else {
            unreachable!("matched above")
        };
        let tensors: BTreeMap<String, TensorRef> = items
            .borrow()
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => Some((k.clone(), t.clone())),
                _ => None,
            })
            .collect();
        for t in tensors.values() {
            file.check(t)?;
        }
        Ok(Self { file, tensors })
    }
}

impl TensorSource for BlipFile {
    fn stored_shape(&self, key: &str) -> Option<Vec<i64>> {
        self.tensors.get(key).map(|t| t.shape().to_vec())
    }

    fn tensor(
        &self,
        key: &str,
        shape: &[i64],
        kind: Kind,
        device: Device,
    ) -> crate::weights::Result<Tensor> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| crate::weights::missing(self.file.path(), key))?;
        if t.shape() != shape {
            return Err(LoadError::ShapeMismatch {
                path: self.file.path().to_path_buf(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: t.shape().to_vec(),
            });
        }
        if !matches!(
            t.kind(),
            Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
        ) {
            return Err(LoadError::UnsupportedDtype {
                path: self.file.path().to_path_buf(),
                key: key.to_string(),
                dtype: format!("{:?}", t.kind()),
            });
        }
        Ok(self.file.tensor(t)?.f_to_device(device)?.f_to_kind(kind)?)
    }
}

/// A loaded BLIP captioner with its tokenizer vocabulary.
pub struct BlipCaptioner {
    model: BlipModel,
    vocab: BertVocab,
    prompt: Vec<i64>,
    device: Device,
    kind: Kind,
}

impl BlipCaptioner {
    /// Loads the `.pth` at `model_pth` and BERT's `vocab.txt` at `vocab_txt` onto `device`
    /// (fp32 on the CPU, fp16 on CUDA), checking every shape and that they belong together.
    pub fn load(model_pth: &Path, vocab_txt: &Path, device: Device) -> Result<Self, BlipError> {
        let vocab = BertVocab::load(vocab_txt)?;
        let file = BlipFile::open(model_pth)?;
        let config = BlipConfig::from_shapes(file.tensors.keys().map(String::as_str), |k| {
            file.stored_shape(k)
        })
        .map_err(|reason| BlipError::NotBlip {
            path: model_pth.to_path_buf(),
            reason,
        })?;
        if config.vocab_rows != vocab.len() + 2 {
            return Err(BlipError::VocabMismatch {
                vocab: vocab_txt.to_path_buf(),
                lines: vocab.len(),
                rows: config.vocab_rows,
            });
        }
        let kind = if device.is_cuda() {
            Kind::Half
        } else {
            Kind::Float
        };
        let vb = VarBuilder::new(&file, kind, device);
        let model = tch::no_grad(|| BlipModel::new(&vb, config, |k| file.tensors.contains_key(k)))?;
        let prompt = vocab.prompt_ids();
        if prompt.contains(&vocab::UNK) {
            return Err(VocabError {
                path: vocab_txt.to_path_buf(),
                reason: format!("the prompt {:?} has words outside it", vocab::PROMPT),
            }
            .into());
        }
        Ok(Self {
            model,
            vocab,
            prompt,
            device,
            kind,
        })
    }

    /// The shapes read from the file.
    pub fn config(&self) -> &BlipConfig {
        &self.model.config
    }

    /// The decoder's first ids (`[DEC] a picture of`).
    pub fn prompt_ids(&self) -> &[i64] {
        &self.prompt
    }

    /// The caption of `image`, after BLIP's cut of `"a picture of "`'s 13 characters.
    pub fn caption(
        &self,
        image: &RgbImage,
        options: &InterrogateOptions,
    ) -> Result<String, BlipError> {
        Ok(self.vocab.caption(&self.generate(image, options)?))
    }

    /// The generated ids of `image`, prompt included (`[SEP]` last when greedy search chose it).
    pub fn generate(
        &self,
        image: &RgbImage,
        options: &InterrogateOptions,
    ) -> Result<Vec<i64>, BlipError> {
        let (beams, lengths) = self.search_settings(options)?;
        tch::no_grad(|| {
            let embeds = self.image_embeds(image)?;
            let decoder = &self.model.text;
            Ok(if beams == 1 {
                search::greedy(decoder, &embeds, &self.prompt, lengths)
            } else {
                search::beam_search(decoder, &embeds, &self.prompt, beams, lengths)
            })
        })
    }

    /// The options as search settings, refused when BLIP cannot run them.
    fn search_settings(&self, options: &InterrogateOptions) -> Result<(usize, Lengths), BlipError> {
        let invalid = |option, value, allowed: String| BlipError::InvalidOption {
            option,
            value,
            allowed,
        };
        let beams = options.interrogate_clip_num_beams;
        if !(1..=MAX_BEAMS).contains(&beams) {
            return Err(invalid(
                "interrogate_clip_num_beams",
                beams,
                format!("between 1 and {MAX_BEAMS}"),
            ));
        }
        let (min, max) = (
            options.interrogate_clip_min_length,
            options.interrogate_clip_max_length,
        );
        if min == 0 {
            return Err(invalid(
                "interrogate_clip_min_length",
                min,
                "at least 1".into(),
            ));
        }
        // The last token fed sits at position max(max_length, prompt + 1) − 2.
        let positions = self.model.text.max_positions();
        let needed = i64::from(max).max(self.prompt.len() as i64 + 1) - 1;
        if max == 0 || needed > positions {
            return Err(invalid(
                "interrogate_clip_max_length",
                max,
                format!(
                    "between 1 and {} (the model has {positions} positions)",
                    positions + 1
                ),
            ));
        }
        Ok((
            beams as usize,
            Lengths {
                min: min as usize,
                max: max as usize,
            },
        ))
    }

    /// The image embeddings [1, 1 + 24², W] of `image` (fp32 on the CPU, the model's dtype on
    /// CUDA).
    pub fn image_embeds(&self, image: &RgbImage) -> Result<Tensor, BlipError> {
        let pixels = pixel_values(&resized(image))
            .f_to_device(self.device)?
            .f_to_kind(self.kind)?;
        Ok(tch::no_grad(|| self.model.vision.forward(&pixels)))
    }

    /// Teacher-forced logits [L, vocab rows] (fp32) of the decoder for `ids` over `image_embeds`.
    pub fn logits(&self, image_embeds: &Tensor, ids: &[i64]) -> Tensor {
        tch::no_grad(|| {
            let decoder = &self.model.text;
            let mut cache = decoder.cache(image_embeds);
            let ids = Tensor::from_slice(ids).unsqueeze(0).to_device(self.device);
            let hidden = decoder.forward(&ids, &mut cache);
            decoder.logits(&hidden).squeeze_dim(0).to_kind(Kind::Float)
        })
    }
}

/// `transforms.Resize((384, 384), InterpolationMode.BICUBIC)` on a PIL image: Pillow's bicubic
/// resize to a square, aspect ratio not kept.
pub fn resized(image: &RgbImage) -> RgbImage {
    let side = IMAGE_SIZE as u32;
    if image.dimensions() == (side, side) {
        return image.clone();
    }
    resize(image, side, side, Filter::Bicubic, None)
}

/// `ToTensor` + `Normalize(mean, std)` with CLIP's mean and std, which BLIP's transform uses:
/// [1, 3, H, W] fp32 on the CPU.
pub fn pixel_values(image: &RgbImage) -> Tensor {
    crate::interrogate::clip_preprocess::normalize(image)
}
