//! LDM `SpatialTransformer`: self-attention, cross-attention on the prompt, GEGLU feed-forward.

use crate::models::hypernetwork::HypernetworkSlot;
use crate::models::layers::{attention, Conv2d, ConvSpec, GroupNorm, LayerNorm, Linear};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::Tensor;

use super::token_merging::{MergeScope, TokenGrid};
use super::GROUPS;

/// Group-norm epsilon at the transformer's input (LDM `Normalize` here uses 1e-6).
const TRANSFORMER_NORM_EPS: f64 = 1e-6;
/// Layer-norm epsilon inside transformer blocks.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Multi-head attention with separate query, key and value projections (`CrossAttention`),
/// keys and values computed through the UNet's hypernetworks when a job set some (A1111's
/// `attention_CrossAttention_forward` and the optimised forwards that replace it).
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    hypernetworks: HypernetworkSlot,
}

impl CrossAttention {
    fn new(
        vb: &VarBuilder,
        (query_dim, context_dim, heads): (i64, i64, i64),
        hypernetworks: &HypernetworkSlot,
    ) -> Result<Self> {
        Ok(Self {
            to_q: Linear::new(&vb.pp("to_q"), query_dim, query_dim, false)?,
            to_k: Linear::new(&vb.pp("to_k"), context_dim, query_dim, false)?,
            to_v: Linear::new(&vb.pp("to_v"), context_dim, query_dim, false)?,
            to_out: Linear::new(&vb.pp("to_out.0"), query_dim, query_dim, true)?,
            heads,
            hypernetworks: hypernetworks.clone(),
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        // The query never goes through a hypernetwork; self-attention's context is `x`.
        let (k, v) = match self.hypernetworks.contexts(context) {
            Some((context_k, context_v)) => {
                (self.to_k.forward(&context_k), self.to_v.forward(&context_v))
            }
            None => (self.to_k.forward(context), self.to_v.forward(context)),
        };
        let out = attention(&self.to_q.forward(x), &k, &v, self.heads, false);
        self.to_out.forward(&out)
    }
}

/// `BasicTransformerBlock`: pre-norm self-attention, cross-attention and feed-forward.
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(
        vb: &VarBuilder,
        spec: &TransformerSpec,
        hypernetworks: &HypernetworkSlot,
    ) -> Result<Self> {
        let (dim, heads) = (spec.channels, spec.heads);
        let ff_inner = 4 * dim;
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: CrossAttention::new(&vb.pp("attn1"), (dim, dim, heads), hypernetworks)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: CrossAttention::new(
                &vb.pp("attn2"),
                (dim, spec.context_dim, heads),
                hypernetworks,
            )?,
            norm3: LayerNorm::new(&vb.pp("norm3"), dim, LAYER_NORM_EPS)?,
            ff_proj: Linear::new(&vb.pp("ff.net.0.proj"), dim, 2 * ff_inner, true)?,
            ff_out: Linear::new(&vb.pp("ff.net.2"), ff_inner, dim, true)?,
        })
    }

    /// The block over tokens `x`; with `grid`, self-attention runs over the tokens merged as
    /// `tomesd` merges them (matched on `x`) and its output is unmerged.
    fn forward(&self, x: &Tensor, context: &Tensor, grid: Option<&TokenGrid>) -> Tensor {
        let h = self.norm1.forward(x);
        let attended = match grid.and_then(|g| g.match_tokens(x)) {
            Some(matching) => {
                let merged = matching.merge(&h);
                matching.unmerge(&self.attn1.forward(&merged, &merged))
            }
            None => self.attn1.forward(&h, &h),
        };
        let x = x + attended;
        let x = &x + self.attn2.forward(&self.norm2.forward(&x), context);
        // GEGLU: the projection's first half gated by GELU of its second half.
        let proj = self.ff_proj.forward(&self.norm3.forward(&x));
        let halves = proj.chunk(2, -1);
        let gated = &halves[0] * halves[1].gelu("none");
        &x + self.ff_out.forward(&gated)
    }
}

/// Image-shaped transformer: norm, project in, transformer blocks, project out, residual.
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

/// SD1 projects with 1×1 convolutions, SD2 with linear layers (`use_linear_in_transformer`).
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: &VarBuilder, in_dim: i64, out_dim: i64, linear: bool) -> Result<Self> {
        Ok(if linear {
            Self::Linear(Linear::new(vb, in_dim, out_dim, true)?)
        } else {
            Self::Conv(Conv2d::new(vb, in_dim, out_dim, ConvSpec::POINTWISE)?)
        })
    }
}

/// Shape of one [`SpatialTransformer`].
#[derive(Clone, Copy, Debug)]
pub struct TransformerSpec {
    /// Channels of the feature map (and the transformer's width).
    pub channels: i64,
    /// Width of the prompt embedding attended to.
    pub context_dim: i64,
    /// Attention heads.
    pub heads: i64,
    /// Transformer blocks stacked.
    pub depth: i64,
    /// Linear instead of 1×1-convolution projections.
    pub linear_projection: bool,
}

impl SpatialTransformer {
    /// Loads a transformer of shape `spec` under `vb`, its attention layers reading the
    /// hypernetworks set in `hypernetworks`.
    pub fn new(
        vb: &VarBuilder,
        spec: TransformerSpec,
        hypernetworks: &HypernetworkSlot,
    ) -> Result<Self> {
        let c = spec.channels;
        let blocks = (0..spec.depth)
            .map(|i| {
                TransformerBlock::new(
                    &vb.pp(format!("transformer_blocks.{i}")),
                    &spec,
                    hypernetworks,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::new(&vb.pp("norm"), GROUPS, c, TRANSFORMER_NORM_EPS, true)?,
            proj_in: Projection::new(&vb.pp("proj_in"), c, c, spec.linear_projection)?,
            blocks,
            proj_out: Projection::new(&vb.pp("proj_out"), c, c, spec.linear_projection)?,
        })
    }

    /// Attends the NCHW feature map `x` to itself and to `context` [B, L, context_dim],
    /// merging tokens in self-attention where `merging` says so.
    pub fn forward(&self, x: &Tensor, context: &Tensor, merging: Option<&MergeScope>) -> Tensor {
        let (b, c, h, w) = x.size4().expect("UNet features are NCHW");
        let grid = merging.and_then(|scope| scope.grid(h * w));
        let to_tokens = |t: Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let to_image = |t: Tensor| t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        let normed = self.norm.forward(x);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)),
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, grid.as_ref());
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(tokens)),
            Projection::Linear(linear) => to_image(linear.forward(&tokens)),
        };
        x + out
    }
}
