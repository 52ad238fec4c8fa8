//! OpenAI's CLIP with a ViT image tower (`clip/model.py: CLIP`, `VisionTransformer`), both
//! towers: the model A1111's "Interrogate CLIP" ranks words with (`ViT-L-14.pt`, loaded by
//! `modules/interrogate.py: InterrogateModels.load_clip_model` through `clip.load`).
//!
//! Keys are OpenAI's: `visual.{conv1.weight, class_embedding, positional_embedding, ln_pre,
//! transformer.resblocks.N.*, ln_post, proj}` and, for text, `token_embedding.weight`,
//! `positional_embedding`, `transformer.resblocks.N.*`, `ln_final`, `text_projection`. The
//! residual blocks and the text tower are OpenCLIP's layout ([`super::open_clip`]) with
//! QuickGELU and LayerNorm (eps 1e-5) computed in fp32. Hyper-parameters come from the shapes
//! as `clip/model.py: build_model` derives them, with 64-wide heads.

use super::layers::LayerNorm;
use super::open_clip::{Activation, BlockStyle, OpenClipConfig, OpenClipTextModel, ResidualBlock};
use crate::weights::{Result, VarBuilder};
use tch::{Kind, Tensor};

/// LayerNorm epsilon of both towers (`nn.LayerNorm`'s default).
const LAYER_NORM_EPS: f64 = 1e-5;

/// Width of one attention head (`build_model`: `heads = width // 64`).
const HEAD_WIDTH: i64 = 64;

/// How OpenAI's blocks compute in the image tower (full attention).
const IMAGE_BLOCKS: BlockStyle = BlockStyle {
    activation: Activation::QuickGelu,
    causal: false,
    norm_in_fp32: true,
};

/// How OpenAI's blocks compute in the text tower (causal attention).
const TEXT_BLOCKS: BlockStyle = BlockStyle {
    activation: Activation::QuickGelu,
    causal: true,
    norm_in_fp32: true,
};

/// The shape of an OpenAI CLIP ViT model, as `build_model` reads it from the tensors.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OpenAiClipConfig {
    /// Image tower width (`visual.conv1.weight` rows; ViT-L/14: 1024).
    pub vision_width: i64,
    /// Image tower blocks (ViT-L/14: 24).
    pub vision_layers: i64,
    /// Image tower MLP width (4·width).
    pub vision_mlp_width: i64,
    /// Patch size (14).
    pub patch_size: i64,
    /// Patches per side (16).
    pub grid: i64,
    /// Input side in pixels, patch·grid (224).
    pub input_resolution: i64,
    /// Width of the joint embedding (`text_projection` columns; 768).
    pub embed_dim: i64,
    /// The text tower (OpenCLIP's layout; ViT-L/14: 12 blocks of 768, context 77).
    pub text: OpenClipConfig,
}

impl OpenAiClipConfig {
    /// The attention heads of the image tower.
    pub fn vision_heads(&self) -> i64 {
        self.vision_width / HEAD_WIDTH
    }

    /// Reads the configuration from a file's keys and stored shapes (`shape`), as
    /// `build_model` does; the error says why the tensors are not an OpenAI CLIP ViT.
    pub fn infer<'k>(
        keys: impl Iterator<Item = &'k str>,
        shape: impl Fn(&str) -> Option<Vec<i64>>,
    ) -> std::result::Result<Self, String> {
        let keys: Vec<&str> = keys.collect();
        if !keys.contains(&"visual.proj") {
            return Err(if keys.iter().any(|k| k.starts_with("visual.layer1.")) {
                "a ResNet CLIP (`visual.layer1`), only ViT image towers are supported".into()
            } else {
                "no `visual.proj` tensor: not an OpenAI CLIP ViT model".into()
            });
        }
        let get = |key: &str, rank: usize| -> std::result::Result<Vec<i64>, String> {
            match shape(key) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => Err(format!(
                    "`{key}` has shape {s:?}, expected {rank} dimensions"
                )),
                None => Err(format!("no `{key}` tensor")),
            }
        };
        let conv = get("visual.conv1.weight", 4)?;
        let (vision_width, patch_size) = (conv[0], conv[3]);
        if conv[1] != 3 || conv[2] != patch_size || patch_size < 1 {
            return Err(format!("`visual.conv1.weight` has shape {conv:?}"));
        }
        let positions = get("visual.positional_embedding", 2)?[0];
        let grid = ((positions - 1) as f64).sqrt().round() as i64;
        if grid < 1 || grid * grid + 1 != positions {
            return Err(format!(
                "`visual.positional_embedding` has {positions} rows, not a square grid plus one"
            ));
        }
        let vision_mlp_width = get("visual.transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
        let text_width = get("ln_final.weight", 1)?[0];
        let text_mlp_width = get("transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
        let embed_dim = get("text_projection", 2)?[1];
        for (what, width) in [("image", vision_width), ("text", text_width)] {
            if width < HEAD_WIDTH || width % HEAD_WIDTH != 0 {
                return Err(format!(
                    "the {what} tower is {width} wide, not a multiple of the {HEAD_WIDTH}-wide heads"
                ));
            }
        }
        let text = OpenClipConfig {
            vocab_size: get("token_embedding.weight", 2)?[0],
            width: text_width,
            mlp_width: text_mlp_width,
            layers: count_blocks(&keys, "transformer.resblocks."),
            heads: text_width / HEAD_WIDTH,
            context_length: get("positional_embedding", 2)?[0],
            projection_dim: Some(embed_dim),
        };
        Ok(Self {
            vision_width,
            vision_layers: count_blocks(&keys, "visual.transformer.resblocks."),
            vision_mlp_width,
            patch_size,
            grid,
            input_resolution: patch_size * grid,
            embed_dim,
            text,
        })
    }
}

/// The number of blocks under `prefix` (`build_model` counts the distinct indices).
fn count_blocks(keys: &[&str], prefix: &str) -> i64 {
    let indices: std::collections::BTreeSet<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next())
        .collect();
    indices.len() as i64
}

/// The image tower (`clip/model.py: VisionTransformer`).
pub struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<ResidualBlock>,
    ln_post: LayerNorm,
    proj: Tensor,
    patch_size: i64,
    input_resolution: i64,
}

impl VisionTransformer {
    /// Loads the tower under `vb` (the `visual` prefix).
    pub fn new(vb: &VarBuilder, config: &OpenAiClipConfig) -> Result<Self> {
        let (w, p) = (config.vision_width, config.patch_size);
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm::new(&vb.pp(name), w, LAYER_NORM_EPS)?.in_fp32())
        };
        let blocks = (0..config.vision_layers)
            .map(|i| {
                let vb = vb.pp(format!("transformer.resblocks.{i}"));
                ResidualBlock::new(
                    &vb,
                    w,
                    config.vision_mlp_width,
                    config.vision_heads(),
                    IMAGE_BLOCKS,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1: vb.get("conv1.weight", &[w, 3, p, p])?,
            class_embedding: vb.get("class_embedding", &[w])?,
            positional_embedding: vb
                .get("positional_embedding", &[config.grid * config.grid + 1, w])?,
            ln_pre: norm("ln_pre")?,
            blocks,
            ln_post: norm("ln_post")?,
            proj: vb.get("proj", &[w, config.embed_dim])?,
            patch_size: p,
            input_resolution: config.input_resolution,
        })
    }

    /// Image features [B, E] of normalised pixels [B, 3, R, R] (R = the input resolution):
    /// patches and the class token through the blocks, `ln_post` of the class token, `@ proj`.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let p = self.patch_size;
        let patches = pixels.conv2d(&self.conv1, None::<Tensor>, [p, p], [0, 0], [1, 1], 1);
        let (b, w, _, _) = patches.size4().expect("conv output is NCHW");
        let patches = patches.reshape([b, w, -1]).transpose(1, 2);
        let class = self
            .class_embedding
            .reshape([1, 1, w])
            .expand([b, 1, w], false);
        let mut x = Tensor::cat(&[class, patches], 1) + &self.positional_embedding;
        x = self.ln_pre.forward(&x);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        self.ln_post.forward(&x.select(1, 0)).matmul(&self.proj)
    }

    /// The input side in pixels.
    pub fn input_resolution(&self) -> i64 {
        self.input_resolution
    }
}

/// OpenAI's CLIP ViT: `encode_image` and `encode_text`.
pub struct OpenAiClip {
    visual: VisionTransformer,
    text: OpenClipTextModel,
    config: OpenAiClipConfig,
}

impl OpenAiClip {
    /// Loads both towers under `vb` (the file's root) in `vb`'s dtype and device.
    pub fn new(vb: &VarBuilder, config: &OpenAiClipConfig) -> Result<Self> {
        Ok(Self {
            visual: VisionTransformer::new(&vb.pp("visual"), config)?,
            text: OpenClipTextModel::with_style(vb, &config.text, TEXT_BLOCKS)?,
            config: config.clone(),
        })
    }

    /// The configuration read from the file.
    pub fn config(&self) -> &OpenAiClipConfig {
        &self.config
    }

    /// `encode_image`: features [B, E] of normalised pixels [B, 3, R, R], in the weights'
    /// dtype.
    pub fn encode_image(&self, pixels: &Tensor) -> Tensor {
        self.visual
            .forward(&pixels.to_kind(self.kind()).to_device(self.device()))
    }

    /// `encode_text`: features [B, E] of token rows [B, L] (L ≤ the context length; zero
    /// padding after `<|endoftext|>`, the largest id of each row, where features are taken).
    pub fn encode_text(&self, ids: &Tensor) -> Tensor {
        let ids = ids.to_kind(Kind::Int64).to_device(self.device());
        let last = self.text.last_hidden_state(&self.text.embed_tokens(&ids));
        self.text
            .pooled(&last, &ids)
            .expect("OpenAI CLIP always has a text projection")
    }

    /// Dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.text.kind()
    }

    /// Device of the weights.
    pub fn device(&self) -> tch::Device {
        self.text.device()
    }
}
