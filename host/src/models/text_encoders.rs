//! The text encoders of each model family and where their keys sit: SD 1.x's CLIP ViT-L,
//! SD 2.x's OpenCLIP ViT-H, SDXL's CLIP-L and OpenCLIP bigG, the refiner's bigG alone.

use super::clip::{ClipConfig, ClipTextModel};
use super::open_clip::{OpenClipConfig, OpenClipTextModel};
use crate::weights::{Result, VarBuilder};
use tch::Tensor;

/// The model families sdhost runs (A1111's `sd_models_config.py` configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ModelFamily {
    /// SD 1.x (`v1-inference.yaml`).
    Sd1,
    /// SD 2.x (`v2-inference.yaml`, `v2-inference-v.yaml`).
    Sd2,
    /// SDXL base (`sd_xl_base.yaml`).
    Sdxl,
    /// SDXL refiner (`sd_xl_refiner.yaml`).
    SdxlRefiner,
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ModelFamily {
    /// The family's name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD 1.x",
            Self::Sd2 => "SD 2.x",
            Self::Sdxl => "SDXL",
            Self::SdxlRefiner => "SDXL refiner",
        }
    }

    /// SDXL's conditioner family (vector input, zeroed empty negative prompt, VAE scale).
    pub fn is_sdxl(self) -> bool {
        matches!(self, Self::Sdxl | Self::SdxlRefiner)
    }
}

/// Shapes and key prefixes of a checkpoint's text encoders.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TextConfig {
    /// SD 1.x: CLIP ViT-L (`cond_stage_model.transformer[.text_model]`).
    Sd1 {
        /// Its shape.
        clip: ClipConfig,
        /// Key prefix of `embeddings`/`encoder`/`final_layer_norm`.
        prefix: String,
    },
    /// SD 2.x: OpenCLIP ViT-H (`cond_stage_model.model`).
    Sd2 {
        /// Its shape.
        open_clip: OpenClipConfig,
        /// Key prefix.
        prefix: String,
    },
    /// SDXL: CLIP-L (`conditioner.embedders.0.transformer.text_model`) and OpenCLIP bigG
    /// (`conditioner.embedders.1.model`).
    Sdxl {
        /// CLIP-L's shape.
        clip_l: ClipConfig,
        /// CLIP-L's key prefix.
        clip_l_prefix: String,
        /// bigG's shape.
        big_g: OpenClipConfig,
        /// bigG's key prefix.
        big_g_prefix: String,
    },
    /// SDXL refiner: OpenCLIP bigG alone (`conditioner.embedders.0.model`).
    SdxlRefiner {
        /// bigG's shape.
        big_g: OpenClipConfig,
        /// Key prefix.
        prefix: String,
    },
}

impl TextConfig {
    /// The family these encoders belong to.
    pub fn family(&self) -> ModelFamily {
        match self {
            Self::Sd1 { .. } => ModelFamily::Sd1,
            Self::Sd2 { .. } => ModelFamily::Sd2,
            Self::Sdxl { .. } => ModelFamily::Sdxl,
            Self::SdxlRefiner { .. } => ModelFamily::SdxlRefiner,
        }
    }

    /// Width of the UNet's cross-attention context they produce (SDXL: both widths).
    pub fn context_dim(&self) -> i64 {
        match self {
            Self::Sd1 { clip, .. } => clip.hidden_size,
            Self::Sd2 { open_clip, .. } => open_clip.width,
            Self::Sdxl { clip_l, big_g, .. } => clip_l.hidden_size + big_g.width,
            Self::SdxlRefiner { big_g, .. } => big_g.width,
        }
    }

    /// Width of a textual-inversion vector for these encoders (A1111's
    /// `get_expected_shape`: SDXL's `clip_l` and `clip_g` side by side).
    pub fn embedding_width(&self) -> i64 {
        self.context_dim()
    }

    /// Width of the pooled text vector the UNet's `label_emb` takes first (SDXL).
    pub fn pooled_dim(&self) -> Option<i64> {
        match self {
            Self::Sd1 { .. } | Self::Sd2 { .. } => None,
            Self::Sdxl { big_g, .. } | Self::SdxlRefiner { big_g, .. } => big_g.projection_dim,
        }
    }

    /// The CLIP ViT-L key prefix, for the layer names LoRA files use (SD1's text encoder).
    pub fn clip_prefix(&self) -> &str {
        match self {
            Self::Sd1 { prefix, .. } => prefix,
            Self::Sdxl { clip_l_prefix, .. } => clip_l_prefix,
            Self::Sd2 { prefix, .. } | Self::SdxlRefiner { prefix, .. } => prefix,
        }
    }
}

/// The loaded text encoders of a checkpoint.
pub enum TextEncoders {
    /// SD 1.x.
    Sd1(ClipTextModel),
    /// SD 2.x.
    Sd2(OpenClipTextModel),
    /// SDXL.
    Sdxl {
        /// CLIP-L.
        clip_l: ClipTextModel,
        /// OpenCLIP bigG.
        big_g: OpenClipTextModel,
    },
    /// SDXL refiner.
    SdxlRefiner(OpenClipTextModel),
}

impl TextEncoders {
    /// Builds the encoders `config` describes from the checkpoint root `vb`.
    pub fn new(vb: &VarBuilder, config: &TextConfig) -> Result<Self> {
        Ok(match config {
            TextConfig::Sd1 { clip, prefix } => {
                Self::Sd1(ClipTextModel::new(&vb.pp(prefix), clip)?)
            }
            TextConfig::Sd2 { open_clip, prefix } => {
                Self::Sd2(OpenClipTextModel::new(&vb.pp(prefix), open_clip)?)
            }
            TextConfig::Sdxl {
                clip_l,
                clip_l_prefix,
                big_g,
                big_g_prefix,
            } => Self::Sdxl {
                clip_l: ClipTextModel::new(&vb.pp(clip_l_prefix), clip_l)?,
                big_g: OpenClipTextModel::new(&vb.pp(big_g_prefix), big_g)?,
            },
            TextConfig::SdxlRefiner { big_g, prefix } => {
                Self::SdxlRefiner(OpenClipTextModel::new(&vb.pp(prefix), big_g)?)
            }
        })
    }

    /// Whether the conditioning embeds the job's size (SDXL's and its refiner's vector).
    pub fn uses_size(&self) -> bool {
        matches!(self, Self::Sdxl { .. } | Self::SdxlRefiner(_))
    }

    /// The context the family conditions on for token ids [B, 77] as given, without A1111's
    /// padding rules, emphasis or pooled vector (timings and smoke checks).
    pub fn context_of_ids(&self, ids: &Tensor) -> Tensor {
        let open_clip_penultimate = |model: &OpenClipTextModel| {
            let embeds = model.embed_tokens(ids);
            let blocks = model.layers().saturating_sub(1);
            model
                .hidden_states_from_embeddings(&embeds, blocks)
                .pop()
                .expect("states start non-empty")
        };
        match self {
            Self::Sd1(clip) => clip.encode(ids, 1),
            Self::Sd2(model) => model.ln_final(&open_clip_penultimate(model)),
            Self::Sdxl { clip_l, big_g } => {
                let states = clip_l.hidden_states(ids);
                Tensor::cat(
                    &[&states[states.len() - 2], &open_clip_penultimate(big_g)],
                    -1,
                )
            }
            Self::SdxlRefiner(big_g) => open_clip_penultimate(big_g),
        }
    }

    /// Device of the weights.
    pub fn device(&self) -> tch::Device {
        match self {
            Self::Sd1(clip) | Self::Sdxl { clip_l: clip, .. } => clip.device(),
            Self::Sd2(open_clip) | Self::SdxlRefiner(open_clip) => open_clip.device(),
        }
    }
}
