//! The CompVis/LDM `UNetModel` of Stable Diffusion 1.x and 2.x, and sgm's of SDXL (the same
//! network with per-level transformer depths and the `label_emb` vector input).
//!
//! Keys mirror the checkpoint under `model.diffusion_model`: `time_embed`, `label_emb`,
//! `input_blocks.N.M`, `middle_block.M`, `output_blocks.N.M`, `out`.

mod downsample;
mod resblock;
mod timestep;
mod token_merging;
mod transformer;

pub use timestep::timestep_embedding;
pub use token_merging::TokenMerging;

use crate::models::hypernetwork::HypernetworkSlot;
use crate::models::layers::{Conv2d, ConvSpec, GroupNorm, Linear, Upsample};
use crate::weights::Result;
use crate::weights::VarBuilder;
use downsample::Downsample;
use resblock::ResBlock;
use tch::Tensor;
use token_merging::MergeScope;
use transformer::{SpatialTransformer, TransformerSpec};

/// Group count of every group norm in the UNet.
const GROUPS: i64 = 32;
/// Epsilon of the UNet's `GroupNorm32` layers.
const NORM_EPS: f64 = 1e-5;

/// How attention heads are counted: SD1 fixes the count, SD2 fixes the width of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AttentionHeads {
    /// A fixed number of heads at every level (`num_heads`, SD1: 8).
    Count(i64),
    /// Heads of a fixed width (`num_head_channels`, SD2: 64).
    Width(i64),
}

impl AttentionHeads {
    /// Heads for a transformer over `channels` channels.
    pub fn heads_for(self, channels: i64) -> i64 {
        match self {
            Self::Count(n) => n,
            Self::Width(w) => channels / w,
        }
    }
}

/// Shape of an LDM UNet, as inferred from a checkpoint or written by hand.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UNetConfig {
    /// Latent channels in (4, or 9 for inpainting models).
    pub in_channels: i64,
    /// Channels out (4).
    pub out_channels: i64,
    /// Base width (`model_channels`, 320 for SD1).
    pub model_channels: i64,
    /// Width multiplier per level (`channel_mult`, [1, 2, 4, 4] for SD1).
    pub channel_mult: Vec<i64>,
    /// ResBlocks per level on the way down (`num_res_blocks`, 2).
    pub num_res_blocks: i64,
    /// Whether each level has attention (SD1: all but the last; SDXL: all but the first).
    pub attention_levels: Vec<bool>,
    /// Transformer blocks per attention layer of each level (`transformer_depth`: SD1 1 at
    /// every level, SDXL [0, 2, 10]; 0 where a level has no attention).
    pub transformer_depth: Vec<i64>,
    /// Transformer blocks of the middle block's attention (`transformer_depth_middle`, SDXL 10).
    pub transformer_depth_middle: i64,
    /// Width of the vector input `y` (`adm_in_channels`: SDXL 2816, refiner 2560), when the
    /// UNet has a `label_emb`.
    pub adm_in_channels: Option<i64>,
    /// Width of the text conditioning (`context_dim`, 768 for SD1).
    pub context_dim: i64,
    /// Head rule.
    pub heads: AttentionHeads,
    /// Linear projections in transformers (SD2) instead of 1×1 convolutions (SD1).
    pub use_linear_in_transformer: bool,
}

impl UNetConfig {
    /// The exact SD 1.5 UNet (`v1-inference.yaml`), with `in_channels` 4 or 9.
    pub fn sd15(in_channels: i64) -> Self {
        Self {
            in_channels,
            out_channels: 4,
            model_channels: 320,
            channel_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attention_levels: vec![true, true, true, false],
            transformer_depth: vec![1, 1, 1, 0],
            transformer_depth_middle: 1,
            adm_in_channels: None,
            context_dim: 768,
            heads: AttentionHeads::Count(8),
            use_linear_in_transformer: false,
        }
    }

    /// Width of the timestep embedding (`time_embed_dim`).
    pub fn time_embed_dim(&self) -> i64 {
        4 * self.model_channels
    }

    fn transformer(&self, channels: i64, depth: i64) -> TransformerSpec {
        TransformerSpec {
            channels,
            context_dim: self.context_dim,
            heads: self.heads.heads_for(channels),
            depth,
            linear_projection: self.use_linear_in_transformer,
        }
    }

    /// Transformer blocks at `level` (0 without attention).
    pub fn depth_at(&self, level: usize) -> i64 {
        match self.attention_levels.get(level) {
            Some(true) => self.transformer_depth.get(level).copied().unwrap_or(1),
            _ => 0,
        }
    }
}

/// One layer of a `TimestepEmbedSequential`.
enum Layer {
    Res(ResBlock),
    Attention(SpatialTransformer),
    Down(Downsample),
    Up(Upsample),
}

/// A `TimestepEmbedSequential`: layers applied in order, each given what it needs.
struct Block(Vec<Layer>);

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        merging: Option<&MergeScope>,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.0 {
            h = match layer {
                Layer::Res(r) => r.forward(&h, emb),
                Layer::Attention(t) => t.forward(&h, context, merging),
                Layer::Down(d) => d.forward(&h),
                Layer::Up(u) => u.forward(&h),
            };
        }
        h
    }
}

/// The denoising UNet: predicts noise (or v) for latents at a timestep under a text context.
pub struct UNetModel {
    time_embed_1: Linear,
    time_embed_2: Linear,
    /// SDXL's vector embedding (`label_emb.0.0`, `label_emb.0.2`).
    label_emb: Option<(Linear, Linear)>,
    conv_in: Conv2d,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    config: UNetConfig,
    hypernetworks: HypernetworkSlot,
}

impl UNetModel {
    /// Loads the UNet under `vb` (the `model.diffusion_model` level of the checkpoint).
    pub fn new(vb: &VarBuilder, config: &UNetConfig) -> Result<Self> {
        let mc = config.model_channels;
        let temb = config.time_embed_dim();
        let levels = config.channel_mult.len();
        let hypernetworks = HypernetworkSlot::default();
        let attention = |b: &VarBuilder, ch: i64, depth: i64| -> Result<Layer> {
            Ok(Layer::Attention(SpatialTransformer::new(
                b,
                config.transformer(ch, depth),
                &hypernetworks,
            )?))
        };

        // Down path: `input_blocks.0` is the stem convolution, then per level
        // `num_res_blocks` × (ResBlock [+ transformer]) and a Downsample except at the bottom.
        let conv_in = Conv2d::new(
            &vb.pp("input_blocks.0.0"),
            config.in_channels,
            mc,
            ConvSpec::SAME3,
        )?;
        let mut input_blocks = Vec::new();
        let mut skip_channels = vec![mc];
        let mut ch = mc;
        for (level, &mult) in config.channel_mult.iter().enumerate() {
            for _ in 0..config.num_res_blocks {
                let b = vb.pp(format!("input_blocks.{}", input_blocks.len() + 1));
                let out = mult * mc;
                let mut layers = vec![Layer::Res(ResBlock::new(&b.pp(0), ch, out, temb)?)];
                ch = out;
                if config.attention_levels[level] {
                    layers.push(attention(&b.pp(1), ch, config.depth_at(level))?);
                }
                input_blocks.push(Block(layers));
                skip_channels.push(ch);
            }
            if level + 1 != levels {
                let b = vb.pp(format!("input_blocks.{}", input_blocks.len() + 1));
                input_blocks.push(Block(vec![Layer::Down(Downsample::new(&b.pp(0), ch)?)]));
                skip_channels.push(ch);
            }
        }

        let mid = vb.pp("middle_block");
        let middle_block = Block(vec![
            Layer::Res(ResBlock::new(&mid.pp(0), ch, ch, temb)?),
            attention(&mid.pp(1), ch, config.transformer_depth_middle)?,
            Layer::Res(ResBlock::new(&mid.pp(2), ch, ch, temb)?),
        ]);

        // Up path: per level from the bottom, `num_res_blocks + 1` ResBlocks each taking one
        // skip connection, the last of a level followed by an Upsample except at the top.
        let mut output_blocks = Vec::new();
        for (level, &mult) in config.channel_mult.iter().enumerate().rev() {
            for i in 0..=config.num_res_blocks {
                let b = vb.pp(format!("output_blocks.{}", output_blocks.len()));
                let skip = skip_channels
                    .pop()
                    .expect("one skip connection per input block");
                let out = mult * mc;
                let mut layers = vec![Layer::Res(ResBlock::new(&b.pp(0), ch + skip, out, temb)?)];
                ch = out;
                if config.attention_levels[level] {
                    layers.push(attention(&b.pp(1), ch, config.depth_at(level))?);
                }
                if level > 0 && i == config.num_res_blocks {
                    layers.push(Layer::Up(Upsample::new(&b.pp(layers.len()), ch)?));
                }
                output_blocks.push(Block(layers));
            }
        }

        let label_emb = match config.adm_in_channels {
            Some(adm) => Some((
                Linear::new(&vb.pp("label_emb.0.0"), adm, temb, true)?,
                Linear::new(&vb.pp("label_emb.0.2"), temb, temb, true)?,
            )),
            None => None,
        };
        Ok(Self {
            time_embed_1: Linear::new(&vb.pp("time_embed.0"), mc, temb, true)?,
            time_embed_2: Linear::new(&vb.pp("time_embed.2"), temb, temb, true)?,
            label_emb,
            conv_in,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm: GroupNorm::new(&vb.pp("out.0"), GROUPS, ch, NORM_EPS, true)?,
            out_conv: Conv2d::new(&vb.pp("out.2"), mc, config.out_channels, ConvSpec::SAME3)?,
            config: config.clone(),
            hypernetworks,
        })
    }

    /// The hypernetworks every attention layer applies: empty unless a job set some.
    pub fn hypernetworks(&self) -> &HypernetworkSlot {
        &self.hypernetworks
    }

    /// Kind of the weights (the UNet's compute dtype).
    pub fn kind(&self) -> tch::Kind {
        self.time_embed_1.kind()
    }

    /// Device of the weights.
    pub fn device(&self) -> tch::Device {
        self.time_embed_1.device()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Model output for latents `x` [B, C, H, W] at `timesteps` [B] (float, may be fractional)
    /// under `context` [B, L, context_dim] and, for UNets with a `label_emb` (SDXL), the vector
    /// `y` [B, adm_in_channels]; such a UNet given no `y` sees zeros (timing and smoke checks).
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
    ) -> Tensor {
        self.forward_merging(x, timesteps, context, y, None)
    }

    /// [`Self::forward`] with the first level's self-attention over merged tokens when
    /// `merging` is set (A1111's token merging ratio); `None` is exactly `forward`.
    pub fn forward_merging(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        merging: Option<TokenMerging>,
    ) -> Tensor {
        let (height, width) = (x.size()[2], x.size()[3]);
        let scope = merging.map(|m| MergeScope::new(m, (height, width)));
        let scope = scope.as_ref();
        let t_emb = timestep_embedding(timesteps, self.config.model_channels).to_kind(x.kind());
        let mut emb = self
            .time_embed_2
            .forward(&self.time_embed_1.forward(&t_emb).silu());
        if let (Some((label_1, label_2)), Some(adm)) =
            (&self.label_emb, self.config.adm_in_channels)
        {
            let y = match y {
                Some(y) => y.to_kind(x.kind()),
                None => Tensor::zeros([x.size()[0], adm], (x.kind(), x.device())),
            };
            emb += label_2.forward(&label_1.forward(&y).silu());
        }

        let mut h = self.conv_in.forward(x);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.input_blocks {
            h = block.forward(&h, &emb, context, scope);
            skips.push(h.shallow_clone());
        }
        h = self.middle_block.forward(&h, &emb, context, scope);
        for block in &self.output_blocks {
            let skip = skips.pop().expect("one skip connection per output block");
            h = block.forward(&concat_skip(&h, &skip), &emb, context, scope);
        }
        self.out_conv.forward(&self.out_norm.forward(&h).silu())
    }
}

/// `h` joined to a skip connection along the channels, as A1111 patches LDM's `th.cat`
/// (`modules/sd_hijack_unet.py: TorchHijackForUnet.cat`): where a latent side is not a multiple
/// of 2^levels, the ×2-upsampled `h` is one row or column larger than the skip tensor and is
/// resized to it, nearest-neighbour. diffusers instead upsamples straight to the skip's size
/// (`upsample_size`), which gives other pictures at such sizes.
fn concat_skip(h: &Tensor, skip: &Tensor) -> Tensor {
    let (hs, ss) = (h.size(), skip.size());
    if hs[2..] == ss[2..] {
        Tensor::cat(&[h, skip], 1)
    } else {
        let resized = h.upsample_nearest2d([ss[2], ss[3]], None, None);
        Tensor::cat(&[&resized, skip], 1)
    }
}
