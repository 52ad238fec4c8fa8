//! BLIP's captioning networks (salesforce/BLIP `blip_decoder`, which A1111's "Interrogate
//! CLIP" runs first): the timm-style ViT-B/16 image encoder (`models/vit.py`) and the BERT text
//! decoder with causal self-attention and cross-attention to the image (`models/med.py`,
//! `BertLMHeadModel`).
//!
//! Keys are Salesforce's (`visual_encoder.…`, `text_decoder.…`). Widths, depths, vocabulary and
//! positions come from the tensors' shapes ([`BlipConfig::from_shapes`]); every attention has
//! 64-wide heads (12 for the released base model, whose `med_config.json` the file does not
//! carry).

use super::layers::{Conv2d, ConvSpec, LayerNorm, Linear};
use crate::weights::{Result, VarBuilder};
use tch::{Kind, Tensor};

/// LayerNorm epsilon of the ViT (timm's `partial(nn.LayerNorm, eps=1e-6)`).
const VIT_LAYER_NORM_EPS: f64 = 1e-6;
/// LayerNorm epsilon of the BERT decoder (`med_config.json: layer_norm_eps`).
const BERT_LAYER_NORM_EPS: f64 = 1e-12;
/// Width of one attention head in both towers.
pub const HEAD_WIDTH: i64 = 64;
/// The side of the square picture `blip_decoder(image_size=384)` sees.
pub const IMAGE_SIZE: i64 = 384;
/// BERT's additive mask value for positions a token may not attend to (`med.py`'s
/// `get_extended_attention_mask`): not −∞, so a fully masked row would still be finite.
const MASKED: f64 = -10000.0;

/// Shape of a BLIP captioner, read from its state dict.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlipConfig {
    /// ViT width (768 for ViT-B).
    pub vision_width: i64,
    /// Number of ViT blocks (12).
    pub vision_layers: i64,
    /// ViT MLP width (3072).
    pub vision_mlp: i64,
    /// Patch side in pixels (16).
    pub patch: i64,
    /// Positions stored in `pos_embed` (577 = 24² + 1 for a 384 model); another square grid is
    /// interpolated to [`IMAGE_SIZE`]/`patch` on load, as BLIP's `interpolate_pos_embed` does.
    pub stored_positions: i64,
    /// Decoder width (768).
    pub text_width: i64,
    /// Number of decoder layers (12).
    pub text_layers: i64,
    /// Decoder MLP width (3072).
    pub text_mlp: i64,
    /// Rows of the word table: BERT's vocabulary plus `[DEC]` and `[ENC]` (30524).
    pub vocab_rows: i64,
    /// Decoder positions (512).
    pub max_positions: i64,
}

/// Why a state dict is not a BLIP captioner, in words.
pub type NotBlip = String;

impl BlipConfig {
    /// The configuration of the tensors whose stored shapes `shape` gives, listed in `keys`.
    pub fn from_shapes<'a>(
        keys: impl Iterator<Item = &'a str> + Clone,
        shape: impl Fn(&str) -> Option<Vec<i64>>,
    ) -> std::result::Result<Self, NotBlip> {
        let dims = |key: &str, rank: usize| -> std::result::Result<Vec<i64>, NotBlip> {
            let s = shape(key).ok_or_else(|| format!("no `{key}`"))?;
            if s.len() != rank || s.iter().any(|&d| d <= 0) {
                return Err(format!("`{key}` has shape {s:?}"));
            }
            Ok(s)
        };
        let count = |prefix: &str, suffix: &str| {
            keys.clone()
                .filter_map(|k| k.strip_prefix(prefix)?.strip_suffix(suffix))
                .filter(|n| n.parse::<u32>().is_ok())
                .count() as i64
        };
        let cls = dims("visual_encoder.cls_token", 3)?;
        let vision_width = cls[2];
        let patch = dims("visual_encoder.patch_embed.proj.weight", 4)?;
        let pos = dims("visual_encoder.pos_embed", 3)?;
        let word = dims("text_decoder.bert.embeddings.word_embeddings.weight", 2)?;
        let text_width = word[1];
        let positions = dims("text_decoder.bert.embeddings.position_embeddings.weight", 2)?;
        let config = Self {
            vision_width,
            vision_layers: count("visual_encoder.blocks.", ".norm1.weight"),
            vision_mlp: dims("visual_encoder.blocks.0.mlp.fc1.weight", 2)?[0],
            patch: patch[3],
            stored_positions: pos[1],
            text_width,
            text_layers: count(
                "text_decoder.bert.encoder.layer.",
                ".attention.self.query.weight",
            ),
            text_mlp: dims(
                "text_decoder.bert.encoder.layer.0.intermediate.dense.weight",
                2,
            )?[0],
            vocab_rows: word[0],
            max_positions: positions[0],
        };
        if vision_width % HEAD_WIDTH != 0 || text_width % HEAD_WIDTH != 0 {
            return Err(format!(
                "widths {vision_width} (image) and {text_width} (text) are not multiples of the \
                 {HEAD_WIDTH}-wide heads"
            ));
        }
        if IMAGE_SIZE % config.patch != 0 || patch[2] != patch[3] {
            return Err(format!(
                "patch {:?} does not tile a 384 picture",
                &patch[2..]
            ));
        }
        let grid = ((pos[1] - 1) as f64).sqrt().round() as i64;
        if grid * grid + 1 != pos[1] {
            return Err(format!(
                "`visual_encoder.pos_embed` has {} rows, not a square grid + 1",
                pos[1]
            ));
        }
        if config.vision_layers == 0 || config.text_layers == 0 {
            return Err("no ViT blocks or no decoder layers".into());
        }
        Ok(config)
    }

    /// The patch grid side the network runs at (24).
    pub fn grid(&self) -> i64 {
        IMAGE_SIZE / self.patch
    }
}

/// Multi-head attention of `q` [B, Lq, C] over `k`, `v` [B, Lk, C] in 64-wide heads, with an
/// optional additive mask [Lq, Lk].
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let (b, lq, width) = q.size3().expect("attention query is [B, L, C]");
    let lk = k.size()[1];
    let heads = width / HEAD_WIDTH;
    let split = |t: &Tensor, l: i64| t.reshape([b, l, heads, HEAD_WIDTH]).transpose(1, 2);
    Tensor::scaled_dot_product_attention(
        &split(q, lq),
        &split(k, lk),
        &split(v, lk),
        mask,
        0.0,
        false,
        None,
        false,
    )
    .transpose(1, 2)
    .reshape([b, lq, width])
}

/// One timm `Block`: pre-LN attention with merged q/k/v, then the GELU MLP.
struct VitBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl VitBlock {
    fn new(vb: &VarBuilder, c: &BlipConfig) -> Result<Self> {
        let (w, m) = (c.vision_width, c.vision_mlp);
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), w, VIT_LAYER_NORM_EPS)?,
            qkv: Linear::new(&vb.pp("attn.qkv"), w, 3 * w, true)?,
            proj: Linear::new(&vb.pp("attn.proj"), w, w, true)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), w, VIT_LAYER_NORM_EPS)?,
            fc1: Linear::new(&vb.pp("mlp.fc1"), w, m, true)?,
            fc2: Linear::new(&vb.pp("mlp.fc2"), m, w, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // Rows of qkv: all of q, then k, then v; heads contiguous inside each.
        let qkv = self.qkv.forward(&self.norm1.forward(x)).chunk(3, -1);
        let x = x + self
            .proj
            .forward(&attention(&qkv[0], &qkv[1], &qkv[2], None));
        let h = self.fc1.forward(&self.norm2.forward(&x)).gelu("none");
        x + self.fc2.forward(&h)
    }
}

/// BLIP's `VisionTransformer` (`visual_encoder`).
pub struct BlipVisionEncoder {
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<VitBlock>,
    norm: LayerNorm,
}

impl BlipVisionEncoder {
    /// Loads the encoder under `vb` (`visual_encoder`), interpolating `pos_embed` to the
    /// 384-pixel grid when the file has another.
    pub fn new(vb: &VarBuilder, c: &BlipConfig) -> Result<Self> {
        let w = c.vision_width;
        let spec = ConvSpec {
            kernel: c.patch,
            stride: c.patch,
            padding: 0,
        };
        let stored = vb.get("pos_embed", &[1, c.stored_positions, w])?;
        let blocks = (0..c.vision_layers)
            .map(|i| VitBlock::new(&vb.pp(format!("blocks.{i}")), c))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed: Conv2d::new(&vb.pp("patch_embed.proj"), 3, w, spec)?,
            cls_token: vb.get("cls_token", &[1, 1, w])?,
            pos_embed: interpolate_pos_embed(&stored, c.grid())?,
            blocks,
            norm: LayerNorm::new(&vb.pp("norm"), w, VIT_LAYER_NORM_EPS)?,
        })
    }

    /// Image embeddings [B, 1 + grid², W] (CLS first) of normalised pictures [B, 3, 384, 384].
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let b = pixels.size()[0];
        // [B, W, g, g] → [B, g², W], patches in row-major order.
        let patches = self
            .patch_embed
            .forward(pixels)
            .flatten(2, 3)
            .transpose(1, 2);
        let cls = self.cls_token.expand([b, 1, -1], false);
        let mut x = Tensor::cat(&[cls, patches], 1) + &self.pos_embed;
        for block in &self.blocks {
            x = block.forward(&x);
        }
        self.norm.forward(&x)
    }
}

/// BLIP's `interpolate_pos_embed`: the grid rows of `pos_embed` [1, 1 + n², W] resized
/// bicubically (`align_corners=False`) to `grid`², the CLS row kept.
fn interpolate_pos_embed(pos_embed: &Tensor, grid: i64) -> Result<Tensor> {
    let (_, rows, width) = pos_embed.size3()?;
    let old = ((rows - 1) as f64).sqrt().round() as i64;
    if old == grid {
        return Ok(pos_embed.shallow_clone());
    }
    let kind = pos_embed.kind();
    let tokens = pos_embed
        .narrow(1, 1, rows - 1)
        .to_kind(Kind::Float)
        .reshape([1, old, old, width])
        .permute([0, 3, 1, 2])
        .f_upsample_bicubic2d([grid, grid], false, None, None)?
        .permute([0, 2, 3, 1])
        .reshape([1, grid * grid, width])
        .to_kind(kind);
    Ok(Tensor::cat(&[pos_embed.narrow(1, 0, 1), tokens], 1))
}

/// `BertAttention`: the attention itself (`self.query/key/value`) and `output.dense` +
/// `output.LayerNorm` around the residual (post-LN).
struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
}

impl BertAttention {
    /// Loads it with keys and values projected from `kv_width`-wide states.
    fn new(vb: &VarBuilder, width: i64, kv_width: i64) -> Result<Self> {
        let s = vb.pp("self");
        Ok(Self {
            query: Linear::new(&s.pp("query"), width, width, true)?,
            key: Linear::new(&s.pp("key"), kv_width, width, true)?,
            value: Linear::new(&s.pp("value"), kv_width, width, true)?,
            dense: Linear::new(&vb.pp("output.dense"), width, width, true)?,
            norm: LayerNorm::new(&vb.pp("output.LayerNorm"), width, BERT_LAYER_NORM_EPS)?,
        })
    }

    /// `LN(dense(softmax(q·kᵀ/√d + mask)·v) + h)` with keys and values given.
    fn forward(&self, h: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let a = attention(&self.query.forward(h), k, v, mask);
        self.norm.forward(&(self.dense.forward(&a) + h))
    }
}

/// One `BertLayer` of the decoder: causal self-attention, cross-attention, MLP.
struct BertLayer {
    attention: BertAttention,
    crossattention: BertAttention,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl BertLayer {
    fn new(vb: &VarBuilder, c: &BlipConfig) -> Result<Self> {
        let (w, m) = (c.text_width, c.text_mlp);
        Ok(Self {
            attention: BertAttention::new(&vb.pp("attention"), w, w)?,
            crossattention: BertAttention::new(&vb.pp("crossattention"), w, c.vision_width)?,
            intermediate: Linear::new(&vb.pp("intermediate.dense"), w, m, true)?,
            output: Linear::new(&vb.pp("output.dense"), m, w, true)?,
            output_norm: LayerNorm::new(&vb.pp("output.LayerNorm"), w, BERT_LAYER_NORM_EPS)?,
        })
    }
}

/// Keys and values one decoder layer keeps between steps: its self-attention's over every
/// token so far, and its cross-attention's over the image (computed once).
struct LayerCache {
    self_k: Option<Tensor>,
    self_v: Option<Tensor>,
    cross_k: Tensor,
    cross_v: Tensor,
}

/// The decoder's KV cache for a batch of sequences (beams) sharing one picture.
pub struct DecoderCache {
    layers: Vec<LayerCache>,
    len: i64,
}

impl DecoderCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether no token was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the sequences `rows` (int64 indices into the batch, repeats allowed), in that
    /// order: beam search's reordering after each step.
    pub fn select(&mut self, rows: &Tensor) {
        for layer in &mut self.layers {
            let pick = |t: &Tensor| t.index_select(0, &rows.to_device(t.device()));
            layer.self_k = layer.self_k.as_ref().map(pick);
            layer.self_v = layer.self_v.as_ref().map(pick);
            layer.cross_k = pick(&layer.cross_k);
            layer.cross_v = pick(&layer.cross_v);
        }
    }
}

/// BLIP's `BertLMHeadModel` (`text_decoder`): embeddings without token types, the layers, and
/// the LM head whose decoder matrix is the word table.
pub struct BlipTextDecoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<BertLayer>,
    transform: Linear,
    transform_norm: LayerNorm,
    decoder_weight: Tensor,
    decoder_bias: Tensor,
}

impl BlipTextDecoder {
    /// Loads the decoder under `vb` (`text_decoder`). The LM head's matrix is
    /// `cls.predictions.decoder.weight` when the file has it (Salesforce's files store the tied
    /// word table under both names) and the word table otherwise; its bias is
    /// `cls.predictions.bias` or `cls.predictions.decoder.bias`. `has` tells which keys exist.
    pub fn new(vb: &VarBuilder, c: &BlipConfig, has: impl Fn(&str) -> bool) -> Result<Self> {
        let (w, v) = (c.text_width, c.vocab_rows);
        let bert = vb.pp("bert");
        let word_embeddings = bert.get("embeddings.word_embeddings.weight", &[v, w])?;
        let head = vb.pp("cls.predictions");
        let decoder_weight = if has(&head.key("decoder.weight")) {
            head.get("decoder.weight", &[v, w])?
        } else {
            word_embeddings.shallow_clone()
        };
        let decoder_bias = if has(&head.key("bias")) || !has(&head.key("decoder.bias")) {
            head.get("bias", &[v])?
        } else {
            head.get("decoder.bias", &[v])?
        };
        let layers = (0..c.text_layers)
            .map(|i| BertLayer::new(&bert.pp(format!("encoder.layer.{i}")), c))
            .collect::<Result<_>>()?;
        Ok(Self {
            position_embeddings: bert.get(
                "embeddings.position_embeddings.weight",
                &[c.max_positions, w],
            )?,
            embeddings_norm: LayerNorm::new(
                &bert.pp("embeddings.LayerNorm"),
                w,
                BERT_LAYER_NORM_EPS,
            )?,
            word_embeddings,
            layers,
            transform: Linear::new(&head.pp("transform.dense"), w, w, true)?,
            transform_norm: LayerNorm::new(
                &head.pp("transform.LayerNorm"),
                w,
                BERT_LAYER_NORM_EPS,
            )?,
            decoder_weight,
            decoder_bias,
        })
    }

    /// Positions the decoder has (`max_position_embeddings`).
    pub fn max_positions(&self) -> i64 {
        self.position_embeddings.size()[0]
    }

    /// An empty cache for `image_embeds` [B, N, W_v]: the cross-attention keys and values.
    pub fn cache(&self, image_embeds: &Tensor) -> DecoderCache {
        let layers = self
            .layers
            .iter()
            .map(|l| LayerCache {
                self_k: None,
                self_v: None,
                cross_k: l.crossattention.key.forward(image_embeds),
                cross_v: l.crossattention.value.forward(image_embeds),
            })
            .collect();
        DecoderCache { layers, len: 0 }
    }

    /// Feeds `ids` [B, L] (int64) after the tokens already in `cache` and returns the last
    /// hidden states [B, L, W]; each token sees itself and the tokens before it.
    pub fn forward(&self, ids: &Tensor, cache: &mut DecoderCache) -> Tensor {
        let (_, len) = ids.size2().expect("decoder ids are [B, L]");
        let past = cache.len;
        let device = self.word_embeddings.device();
        let positions = self.position_embeddings.narrow(0, past, len);
        let mut h = self.embeddings_norm.forward(
            &(Tensor::embedding(
                &self.word_embeddings,
                &ids.to_device(device),
                -1,
                false,
                false,
            ) + positions),
        );
        // BERT's extended causal mask: 0 where key j ≤ query position, −10000 elsewhere.
        let mask = (len > 1).then(|| {
            let q = Tensor::arange_start(past, past + len, (Kind::Int64, device)).unsqueeze(1);
            let k = Tensor::arange(past + len, (Kind::Int64, device)).unsqueeze(0);
            Tensor::zeros([len, past + len], (h.kind(), device))
                .masked_fill(&k.gt_tensor(&q), MASKED)
        });
        for (layer, lc) in self.layers.iter().zip(&mut cache.layers) {
            let sa = &layer.attention;
            let (k, v) = (sa.key.forward(&h), sa.value.forward(&h));
            let k = match &lc.self_k {
                Some(old) => Tensor::cat(&[old, &k], 1),
                None => k,
            };
            let v = match &lc.self_v {
                Some(old) => Tensor::cat(&[old, &v], 1),
                None => v,
            };
            let h1 = sa.forward(&h, &k, &v, mask.as_ref());
            lc.self_k = Some(k);
            lc.self_v = Some(v);
            let h2 = layer
                .crossattention
                .forward(&h1, &lc.cross_k, &lc.cross_v, None);
            let mlp = layer
                .output
                .forward(&layer.intermediate.forward(&h2).gelu("none"));
            h = layer.output_norm.forward(&(mlp + h2));
        }
        cache.len += len;
        h
    }

    /// The LM head: logits [.., vocab_rows] of hidden states [.., W].
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let t = self
            .transform_norm
            .forward(&self.transform.forward(hidden).gelu("none"));
        t.linear(&self.decoder_weight, Some(&self.decoder_bias))
    }
}

/// Both networks of `blip_decoder`.
pub struct BlipModel {
    /// The image encoder.
    pub vision: BlipVisionEncoder,
    /// The text decoder.
    pub text: BlipTextDecoder,
    /// Their shapes.
    pub config: BlipConfig,
}

impl BlipModel {
    /// Loads both networks from the root of a BLIP state dict; `has` tells which keys exist.
    pub fn new(vb: &VarBuilder, config: BlipConfig, has: impl Fn(&str) -> bool) -> Result<Self> {
        let vision = BlipVisionEncoder::new(&vb.pp("visual_encoder"), &config)?;
        let text = BlipTextDecoder::new(&vb.pp("text_decoder"), &config, has)?;
        Ok(Self {
            vision,
            text,
            config,
        })
    }
}
