//! OpenCLIP's text tower: SD 2.x's ViT-H/14 (`cond_stage_model.model`) and SDXL's ViT-bigG/14
//! (`conditioner.embedders.1.model`, the refiner's `conditioner.embedders.0.model`).
//!
//! Keys mirror `open_clip.model.CLIP` without its visual tower: `token_embedding.weight`, the
//! bare `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj,
//! ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection` [W, P] (applied as `x·P`).
//! Unlike OpenAI's CLIP-L in SD 1.x (transformers' layout) it uses one merged q/k/v
//! projection, and exact (erf) GELU where OpenAI's CLIP has QuickGELU. The residual block and
//! the text tower here also serve OpenAI's own layout ([`super::openai_clip`], the
//! interrogator's ViT-L/14) through a [`BlockStyle`].

use super::layers::{attention, LayerNorm, Linear};
use crate::weights::{LayerKind, Result, VarBuilder};
use tch::{Kind, Tensor};

/// Layer-norm epsilon of the OpenCLIP and OpenAI CLIP transformers.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Shape of an OpenCLIP text tower.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OpenClipConfig {
    /// Token vocabulary size (49408).
    pub vocab_size: i64,
    /// Width of the residual stream (ViT-H 1024, bigG 1280).
    pub width: i64,
    /// Width of the MLP (4·width).
    pub mlp_width: i64,
    /// Number of residual blocks (ViT-H 24, bigG 32).
    pub layers: i64,
    /// Attention heads (64-wide: ViT-H 16, bigG 20).
    pub heads: i64,
    /// Number of positions (77).
    pub context_length: i64,
    /// Width of the pooled output (`text_projection`'s columns), when the file has one.
    pub projection_dim: Option<i64>,
}

/// The MLP activation of a CLIP residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU: OpenCLIP's towers.
    Gelu,
    /// `x·σ(1.702x)`: OpenAI's CLIP (`clip/model.py: QuickGELU`).
    QuickGelu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
        }
    }
}

/// How a residual block computes: its activation, whether attention is causal (text) or
/// full (image), and whether its norms run in fp32 whatever the weights' dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStyle {
    /// The MLP's activation.
    pub activation: Activation,
    /// Causal attention (each position sees itself and earlier ones).
    pub causal: bool,
    /// LayerNorm in fp32 (OpenAI CLIP's `LayerNorm` subclass).
    pub norm_in_fp32: bool,
}

impl BlockStyle {
    /// OpenCLIP's text tower (SD 2.x, SDXL).
    pub const OPEN_CLIP_TEXT: Self = Self {
        activation: Activation::Gelu,
        causal: true,
        norm_in_fp32: false,
    };
}

/// One `ResidualAttentionBlock` (the same layout in OpenCLIP and OpenAI CLIP, both towers).
pub(crate) struct ResidualBlock {
    ln_1: LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: i64,
    style: BlockStyle,
}

impl ResidualBlock {
    /// Loads the block under `vb`: residual width `w`, MLP width `m`, `heads` heads.
    pub(crate) fn new(
        vb: &VarBuilder,
        w: i64,
        m: i64,
        heads: i64,
        style: BlockStyle,
    ) -> Result<Self> {
        let attn = vb.pp("attn");
        let norm = |name: &str| -> Result<LayerNorm> {
            let ln = LayerNorm::new(&vb.pp(name), w, LAYER_NORM_EPS)?;
            Ok(if style.norm_in_fp32 { ln.in_fp32() } else { ln })
        };
        Ok(Self {
            ln_1: norm("ln_1")?,
            in_proj: merged_in_proj(&attn, w)?,
            out_proj: Linear::new(&attn.pp("out_proj"), w, w, true)?,
            ln_2: norm("ln_2")?,
            c_fc: Linear::new(&vb.pp("mlp.c_fc"), w, m, true)?,
            c_proj: Linear::new(&vb.pp("mlp.c_proj"), m, w, true)?,
            heads,
            style,
        })
    }

    /// `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`, on [B, L, W].
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let qkv = self.in_proj.forward(&self.ln_1.forward(x)).chunk(3, -1);
        let a = attention(&qkv[0], &qkv[1], &qkv[2], self.heads, self.style.causal);
        let x = x + self.out_proj.forward(&a);
        let h = self
            .style
            .activation
            .apply(&self.c_fc.forward(&self.ln_2.forward(&x)));
        x + self.c_proj.forward(&h)
    }
}

/// `nn.MultiheadAttention`'s `in_proj_weight` [3W, W] and `in_proj_bias` as one linear layer
/// (rows q, k, v), recorded as the layer `….attn.in_proj` so LoRA finds A1111's `attn` module.
fn merged_in_proj(attn: &VarBuilder, width: i64) -> Result<Linear> {
    let weight = attn.get("in_proj_weight", &[3 * width, width])?;
    let bias = attn.get("in_proj_bias", &[3 * width])?;
    attn.pp("in_proj")
        .record_layer(LayerKind::Linear, &weight, Some(&bias));
    Ok(Linear::from_parts(weight, Some(bias)))
}

/// The OpenCLIP text transformer with its final norm and projection.
pub struct OpenClipTextModel {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    blocks: Vec<ResidualBlock>,
    ln_final: LayerNorm,
    text_projection: Option<Tensor>,
    config: OpenClipConfig,
}

impl OpenClipTextModel {
    /// Loads the tower under `vb` (the `…model` level of the checkpoint).
    pub fn new(vb: &VarBuilder, config: &OpenClipConfig) -> Result<Self> {
        Self::with_style(vb, config, BlockStyle::OPEN_CLIP_TEXT)
    }

    /// Loads a tower of the same layout whose blocks compute as `style` says (OpenAI CLIP's
    /// text tower: QuickGELU, norms in fp32).
    pub fn with_style(vb: &VarBuilder, config: &OpenClipConfig, style: BlockStyle) -> Result<Self> {
        let (v, w, p) = (config.vocab_size, config.width, config.context_length);
        let (m, heads) = (config.mlp_width, config.heads);
        let blocks = (0..config.layers)
            .map(|i| {
                let vb = vb.pp(format!("transformer.resblocks.{i}"));
                ResidualBlock::new(&vb, w, m, heads, style)
            })
            .collect::<Result<_>>()?;
        let ln_final = LayerNorm::new(&vb.pp("ln_final"), w, LAYER_NORM_EPS)?;
        let ln_final = if style.norm_in_fp32 {
            ln_final.in_fp32()
        } else {
            ln_final
        };
        let text_projection = match config.projection_dim {
            Some(dim) => Some(vb.get("text_projection", &[w, dim])?),
            None => None,
        };
        Ok(Self {
            token_embedding: vb.get("token_embedding.weight", &[v, w])?,
            positional_embedding: vb.get("positional_embedding", &[p, w])?,
            blocks,
            ln_final,
            text_projection,
            config: config.clone(),
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &OpenClipConfig {
        &self.config
    }

    /// Token embeddings of `ids` [B, L] (int64), before positions are added.
    pub fn embed_tokens(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.token_embedding, ids, -1, false, false)
    }

    /// The residual stream entering each block and after the last for embedded tokens
    /// [B, L, W]: index 0 is the embedding output, index i the output of block i.
    /// `blocks` limits how many blocks run (SD2 never runs its last one).
    pub fn hidden_states_from_embeddings(&self, embeds: &Tensor, blocks: usize) -> Vec<Tensor> {
        let len = embeds.size()[1];
        let positions = self.positional_embedding.narrow(0, 0, len);
        let mut states = Vec::with_capacity(blocks + 1);
        states.push(embeds + positions);
        for block in self.blocks.iter().take(blocks) {
            let next = block.forward(states.last().expect("states start non-empty"));
            states.push(next);
        }
        states
    }

    /// The residual stream after every block for embedded tokens [B, L, W] (without keeping
    /// the intermediate states: interrogation encodes thousands of lines).
    pub fn last_hidden_state(&self, embeds: &Tensor) -> Tensor {
        let len = embeds.size()[1];
        let mut x = embeds + self.positional_embedding.narrow(0, 0, len);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        x
    }

    /// Number of residual blocks.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// `ln_final`.
    pub fn ln_final(&self, hidden: &Tensor) -> Tensor {
        self.ln_final.forward(hidden)
    }

    /// The pooled text vector of `last` (the output of every block) [B, L, W] for token ids
    /// [B, L]: `ln_final` at the position of the largest id (the first end-of-text with
    /// A1111's zero padding) times `text_projection` [B, P] (sgm `FrozenOpenCLIPEmbedder2.pool`).
    pub fn pooled(&self, last: &Tensor, ids: &Tensor) -> Option<Tensor> {
        let projection = self.text_projection.as_ref()?;
        let eos = ids.argmax(-1, false);
        let rows = Tensor::arange(ids.size()[0], (Kind::Int64, ids.device()));
        let picked = self
            .ln_final(last)
            .index(&[Some(rows), Some(eos.to_device(last.device()))]);
        Some(picked.matmul(projection))
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
