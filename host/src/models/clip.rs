//! The CLIP ViT-L/14 text encoder of SD 1.x (transformers' `CLIPTextModel` layout).
//!
//! [`ClipTextModel::hidden_states`] returns the output of every layer so that clip skip can
//! pick one, and [`ClipTextModel::final_layer_norm`] is a separate step applied after the pick.

use super::layers::{attention, LayerNorm, Linear};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::{Kind, Tensor};

/// Layer-norm epsilon of the CLIP text transformer.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Shape of a CLIP text encoder.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClipConfig {
    /// Token vocabulary size (49408 for OpenAI CLIP).
    pub vocab_size: i64,
    /// Width of the residual stream (768 for ViT-L/14); also the UNet's context dim.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Number of transformer layers.
    pub num_layers: i64,
    /// Attention heads per layer.
    pub num_heads: i64,
    /// Number of positions (77).
    pub max_positions: i64,
}

impl ClipConfig {
    /// OpenAI CLIP ViT-L/14's text tower, as in every SD 1.x checkpoint.
    pub fn vit_l14() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_layers: 12,
            num_heads: 12,
            max_positions: 77,
        }
    }

    /// CLIP text towers use 64-wide heads; narrower (test) models use one head.
    pub fn heads_for_width(hidden_size: i64) -> i64 {
        if hidden_size >= 64 && hidden_size % 64 == 0 {
            hidden_size / 64
        } else {
            1
        }
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
}

impl EncoderLayer {
    fn new(vb: &VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), h, LAYER_NORM_EPS)?,
            q_proj: Linear::new(&attn.pp("q_proj"), h, h, true)?,
            k_proj: Linear::new(&attn.pp("k_proj"), h, h, true)?,
            v_proj: Linear::new(&attn.pp("v_proj"), h, h, true)?,
            out_proj: Linear::new(&attn.pp("out_proj"), h, h, true)?,
            layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), h, LAYER_NORM_EPS)?,
            fc1: Linear::new(&vb.pp("mlp.fc1"), h, i, true)?,
            fc2: Linear::new(&vb.pp("mlp.fc2"), i, h, true)?,
            heads: cfg.num_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.layer_norm1.forward(x);
        let a = attention(
            &self.q_proj.forward(&h),
            &self.k_proj.forward(&h),
            &self.v_proj.forward(&h),
            self.heads,
            true,
        );
        let x = x + self.out_proj.forward(&a);
        let h = self.fc1.forward(&self.layer_norm2.forward(&x));
        // quick_gelu, the activation OpenAI CLIP was trained with.
        let h = &h * (&h * 1.702).sigmoid();
        x + self.fc2.forward(&h)
    }
}

/// The CLIP text transformer: token + position embeddings, causal encoder, final layer norm.
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipConfig,
}

impl ClipTextModel {
    /// Loads the model under `vb` (the `text_model` level of the checkpoint).
    pub fn new(vb: &VarBuilder, config: &ClipConfig) -> Result<Self> {
        let (v, h, p) = (config.vocab_size, config.hidden_size, config.max_positions);
        let emb = vb.pp("embeddings");
        let layers = (0..config.num_layers)
            .map(|i| EncoderLayer::new(&vb.pp(format!("encoder.layers.{i}")), config))
            .collect::<Result<_>>()?;
        Ok(Self {
            token_embedding: emb.get("token_embedding.weight", &[v, h])?,
            position_embedding: emb.get("position_embedding.weight", &[p, h])?,
            layers,
            final_layer_norm: LayerNorm::new(&vb.pp("final_layer_norm"), h, LAYER_NORM_EPS)?,
            config: config.clone(),
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Token embeddings of `ids` [B, L] (int64), before positions are added.
    pub fn embed_tokens(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.token_embedding, ids, -1, false, false)
    }

    /// Every hidden state for already-embedded tokens `embeds` [B, L, H]: index 0 is the
    /// embedding output, index i the output of layer i (transformers' `hidden_states`).
    pub fn hidden_states_from_embeddings(&self, embeds: &Tensor) -> Vec<Tensor> {
        let len = embeds.size()[1];
        let positions = self.position_embedding.narrow(0, 0, len);
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        states.push(embeds + positions);
        for layer in &self.layers {
            let next = layer.forward(states.last().expect("states start non-empty"));
            states.push(next);
        }
        states
    }

    /// Every hidden state for token ids [B, L].
    pub fn hidden_states(&self, ids: &Tensor) -> Vec<Tensor> {
        self.hidden_states_from_embeddings(&self.embed_tokens(ids))
    }

    /// The final layer norm, applied to whichever hidden state clip skip selected.
    pub fn final_layer_norm(&self, hidden: &Tensor) -> Tensor {
        self.final_layer_norm.forward(hidden)
    }

    /// The encoder output A1111 conditions on with clip skip `n` (1 = last layer).
    pub fn encode(&self, ids: &Tensor, clip_skip: usize) -> Tensor {
        let states = self.hidden_states(ids);
        let pick = states.len().saturating_sub(clip_skip.max(1));
        self.final_layer_norm(&states[pick])
    }

    /// Kind of the weights.
    pub fn kind(&self) -> Kind {
        self.token_embedding.kind()
    }

    /// Device of the weights.
    pub fn device(&self) -> tch::Device {
        self.token_embedding.device()
    }
}
