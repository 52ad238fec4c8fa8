//! DeepDanbooru's "resnet custom v3", the tagger behind A1111's Interrogate DeepBooru
//! (`modules/deepbooru_model.py: DeepDanbooruModel`, a port of an ONNX export with batch norm
//! folded into the biases and TensorFlow's "SAME" padding written out as explicit pads).
//!
//! A1111 lists 179 convolutions `n_Conv_0` … `n_Conv_178` one by one; here they are what they
//! are: a 7×7 stem, six stages of bottleneck blocks ([`STAGES`]) and a 1×1 head. The layout
//! (indices, kernel sizes, strides, pads) is fixed; the channel widths are read from the state
//! dict's shapes ([`DeepDanbooruConfig::from_shapes`]), so narrower models load too. Every
//! stride-2 pad is one-sided, as TensorFlow's "SAME" is for even sizes, so the input's sides
//! must be multiples of 128 (A1111 always feeds 512²).

use std::collections::{BTreeMap, BTreeSet};

use tch::{Kind, Tensor};

use crate::weights::{Result, VarBuilder};

/// Index of the head convolution (the last one; it has no bias).
pub const HEAD: usize = 178;

/// Number of convolutions.
pub const CONVS: usize = HEAD + 1;

/// The input's height and width must be multiples of this (5 stride-2 stages after the
/// stem's two halvings).
pub const SIZE_MULTIPLE: i64 = 128;

/// Explicit padding `[left, right, top, bottom]` before a convolution (`F.pad` order).
type Pad = [i64; 4];

/// The stem's "SAME" pad for a 7×7 stride-2 convolution over an even size.
const STEM_PAD: Pad = [2, 3, 2, 3];
/// The pad before the max pool (filled with −∞, so it never wins) and before a 3×3 stride-2
/// convolution (zeros): one pixel on the right and bottom only.
const STRIDE2_PAD: Pad = [0, 1, 0, 1];
/// The 3×3 stride-1 "SAME" pad.
const SAME3_PAD: Pad = [1, 1, 1, 1];
const NO_PAD: Pad = [0, 0, 0, 0];

/// One row of the stage table: which convolutions a stage of bottleneck blocks is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageLayout {
    /// The 1×1 projection on the shortcut of the stage's first block.
    pub projection: usize,
    /// First convolution of the stage's first block (a block uses three consecutive indices).
    pub first_block: usize,
    /// First convolution of the second block; the following blocks come every 3 indices.
    pub next_block: usize,
    /// Number of blocks.
    pub blocks: usize,
    /// Stride of the first block's 3×3 convolution and of the projection.
    pub stride: i64,
}

impl StageLayout {
    /// The first convolution index of each block, in order.
    pub fn block_starts(&self) -> impl Iterator<Item = usize> {
        let (next, rest) = (self.next_block, self.blocks.saturating_sub(1));
        std::iter::once(self.first_block).chain((0..rest).map(move |i| next + 3 * i))
    }
}

/// The six stages (spec §5.2's table). The projection is numbered just before its stage's
/// first block, except in stage 4, where it follows that block's three convolutions.
pub const STAGES: [StageLayout; 6] = [
    stage(1, 2, 5, 3, 1),
    stage(11, 12, 15, 8, 2),
    stage(36, 37, 40, 20, 2),
    stage(100, 97, 101, 20, 2),
    stage(158, 159, 162, 3, 2),
    stage(168, 169, 172, 3, 2),
];

const fn stage(
    projection: usize,
    first_block: usize,
    next_block: usize,
    blocks: usize,
    stride: i64,
) -> StageLayout {
    StageLayout {
        projection,
        first_block,
        next_block,
        blocks,
        stride,
    }
}

/// What a convolution index is in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvRole {
    /// `n_Conv_0`: 7×7 stride 2 over the picture.
    Stem,
    /// A stage's shortcut projection, 1×1.
    Projection,
    /// A block's first 1×1 (to the block's middle width).
    Reduce,
    /// A block's 3×3.
    Spatial,
    /// A block's last 1×1 (to the stage's output width).
    Expand,
    /// `n_Conv_178`: 1×1 to one channel per tag, no bias.
    Head,
}

impl ConvRole {
    /// The kernel size of a convolution in this role.
    pub fn kernel(self) -> i64 {
        match self {
            ConvRole::Stem => 7,
            ConvRole::Spatial => 3,
            _ => 1,
        }
    }

    /// Whether the convolution has a bias (all but the head).
    pub fn has_bias(self) -> bool {
        self != ConvRole::Head
    }
}

/// The role of every convolution index, from [`STAGES`].
pub fn conv_roles() -> [ConvRole; CONVS] {
    let mut roles = [ConvRole::Head; CONVS];
    roles[0] = ConvRole::Stem;
    for stage in &STAGES {
        roles[stage.projection] = ConvRole::Projection;
        for c in stage.block_starts() {
            roles[c] = ConvRole::Reduce;
            roles[c + 1] = ConvRole::Spatial;
            roles[c + 2] = ConvRole::Expand;
        }
    }
    roles
}

/// The state-dict key of convolution `index`'s `weight` or `bias`.
pub fn conv_key(index: usize, what: &str) -> String {
    format!("n_Conv_{index}.{what}")
}

/// A state dict that does not have DeepDanbooru's layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A convolution's weight is absent.
    #[error("convolution {index} (`n_Conv_{index}.weight`) is missing")]
    MissingConv { index: usize },
    /// A convolution's bias is absent.
    #[error("convolution {index} has no bias (`n_Conv_{index}.bias`)")]
    MissingBias { index: usize },
    /// A convolution's weight is not `[out, in, k, k]` with the layout's kernel size.
    #[error(
        "`n_Conv_{index}.weight` has shape {found:?}; convolution {index} is {kernel}×{kernel}"
    )]
    Kernel {
        index: usize,
        kernel: i64,
        found: Vec<i64>,
    },
    /// A key the network does not have (A1111's strict `load_state_dict` refuses it too).
    #[error("unexpected key `{key}` (DeepDanbooru has `n_Conv_0` … `n_Conv_178`, all but the last with a bias)")]
    UnexpectedKey { key: String },
}

/// A picture the network cannot take.
#[derive(Debug, thiserror::Error)]
#[error("DeepDanbooru takes [batch, height, width, 3] pictures with sides that are positive multiples of 128, not {shape:?}")]
pub struct InputSizeError {
    /// The shape given.
    pub shape: Vec<i64>,
}

/// The widths of one stage: its blocks' middle width and output width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageWidths {
    /// Channels inside a block (64 … 1024 in the real model).
    pub mid: i64,
    /// Channels between blocks (256 … 4096).
    pub out: i64,
}

/// The channel widths of a DeepDanbooru, read from its state dict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeepDanbooruConfig {
    /// Stem output channels (64).
    pub stem: i64,
    /// Each stage's widths.
    pub stages: [StageWidths; 6],
    /// Head output channels: one per tag (9176).
    pub tags: i64,
}

impl DeepDanbooruConfig {
    /// Checks the keys and kernel sizes of a state dict (`key → shape`) against the layout and
    /// reads the widths: the stem's from `n_Conv_0`, a stage's from its first block, the tag
    /// count from the head. The other convolutions' shapes are checked when the network is
    /// built from these widths.
    pub fn from_shapes(shapes: &BTreeMap<String, Vec<i64>>) -> Result<Self, LayoutError> {
        let roles = conv_roles();
        let mut expected = BTreeSet::new();
        for (index, role) in roles.iter().enumerate() {
            let key = conv_key(index, "weight");
            let shape = shapes.get(&key).ok_or(LayoutError::MissingConv { index })?;
            let k = role.kernel();
            if shape.len() != 4 || shape[2] != k || shape[3] != k {
                return Err(LayoutError::Kernel {
                    index,
                    kernel: k,
                    found: shape.clone(),
                });
            }
            expected.insert(key);
            if role.has_bias() {
                let bias = conv_key(index, "bias");
                if !shapes.contains_key(&bias) {
                    return Err(LayoutError::MissingBias { index });
                }
                expected.insert(bias);
            }
        }
        if let Some(key) = shapes.keys().find(|k| !expected.contains(*k)) {
            return Err(LayoutError::UnexpectedKey { key: key.clone() });
        }
        let out_channels = |index: usize| shapes[&conv_key(index, "weight")][0];
        let stages = STAGES.map(|stage| StageWidths {
            mid: out_channels(stage.first_block),
            out: out_channels(stage.first_block + 2),
        });
        Ok(Self {
            stem: out_channels(0),
            stages,
            tags: out_channels(HEAD),
        })
    }
}

/// A convolution after its explicit zero pad, without implicit padding.
struct PaddedConv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    pad: Pad,
}

/// Loads convolutions by index, each with the kernel and bias its role in the layout gives.
struct ConvLoader<'a> {
    vb: &'a VarBuilder<'a>,
    roles: [ConvRole; CONVS],
}

impl ConvLoader<'_> {
    /// `n_Conv_<index>` as `[out, in, k, k]` (and `[out]` bias, but for the head).
    fn conv(
        &self,
        index: usize,
        (in_ch, out_ch): (i64, i64),
        stride: i64,
        pad: Pad,
    ) -> Result<PaddedConv> {
        let role = self.roles[index];
        let k = role.kernel();
        let vb = self.vb.pp(format!("n_Conv_{index}"));
        Ok(PaddedConv {
            weight: vb.get("weight", &[out_ch, in_ch, k, k])?,
            bias: if role.has_bias() {
                Some(vb.get("bias", &[out_ch])?)
            } else {
                None
            },
            stride,
            pad,
        })
    }
}

impl PaddedConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let padded;
        let x = if self.pad == NO_PAD {
            x
        } else {
            padded = x.constant_pad_nd(self.pad);
            &padded
        };
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [0, 0],
            [1, 1],
            1,
        )
    }
}

/// A bottleneck block: 1×1 → ReLU → pad, 3×3/s → ReLU → 1×1, plus the shortcut, → ReLU.
struct Bottleneck {
    reduce: PaddedConv,
    spatial: PaddedConv,
    expand: PaddedConv,
    /// The stage's 1×1/s projection on the first block's shortcut; identity on the others.
    projection: Option<PaddedConv>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> Tensor {
        let a = self.reduce.forward(x).relu();
        let a = self.spatial.forward(&a).relu();
        let a = self.expand.forward(&a);
        match &self.projection {
            Some(projection) => (a + projection.forward(x)).relu(),
            None => (a + x).relu(),
        }
    }
}

/// DeepDanbooru's network: pictures in, one sigmoid probability per tag out.
pub struct DeepDanbooruNet {
    config: DeepDanbooruConfig,
    stem: PaddedConv,
    blocks: Vec<Bottleneck>,
    head: PaddedConv,
}

impl DeepDanbooruNet {
    /// Builds the network with `config`'s widths, checking every tensor's shape.
    pub fn new(vb: &VarBuilder, config: &DeepDanbooruConfig) -> Result<Self> {
        let convs = ConvLoader {
            vb,
            roles: conv_roles(),
        };
        let stem = convs.conv(0, (3, config.stem), 2, STEM_PAD)?;
        let mut width = config.stem;
        let mut blocks = Vec::new();
        for (stage, widths) in STAGES.iter().zip(&config.stages) {
            let StageWidths { mid, out } = *widths;
            for (j, c) in stage.block_starts().enumerate() {
                let (stride, projection) = if j == 0 {
                    let projection =
                        convs.conv(stage.projection, (width, out), stage.stride, NO_PAD)?;
                    (stage.stride, Some(projection))
                } else {
                    (1, None)
                };
                let pad = if stride == 1 { SAME3_PAD } else { STRIDE2_PAD };
                blocks.push(Bottleneck {
                    reduce: convs.conv(c, (width, mid), 1, NO_PAD)?,
                    spatial: convs.conv(c + 1, (mid, mid), stride, pad)?,
                    expand: convs.conv(c + 2, (mid, out), 1, NO_PAD)?,
                    projection,
                });
                width = out;
            }
        }
        let head = convs.conv(HEAD, (width, config.tags), 1, NO_PAD)?;
        Ok(Self {
            config: *config,
            stem,
            blocks,
            head,
        })
    }

    /// The widths it was built with.
    pub fn config(&self) -> &DeepDanbooruConfig {
        &self.config
    }

    /// The dtype of its weights.
    pub fn kind(&self) -> Kind {
        self.head.weight.kind()
    }

    /// The device of its weights.
    pub fn device(&self) -> tch::Device {
        self.head.weight.device()
    }

    /// `DeepDanbooruModel.forward`: `[B, H, W, 3]` pictures in [0, 1] (NHWC, as A1111 passes
    /// them) → `[B, tags]` probabilities in the weights' dtype.
    pub fn forward(&self, pictures: &Tensor) -> Result<Tensor, InputSizeError> {
        let shape = pictures.size();
        let fits = |side: i64| side > 0 && side % SIZE_MULTIPLE == 0;
        if !matches!(shape[..], [b, h, w, 3] if b > 0 && fits(h) && fits(w)) {
            return Err(InputSizeError { shape });
        }
        let x = pictures
            .to_device(self.device())
            .to_kind(self.kind())
            .permute([0, 3, 1, 2]);
        let x = self.stem.forward(&x).relu();
        // The −∞ pad keeps the pool's window at the edge to real values, as "SAME" pooling does.
        let mut x = x
            .pad(STRIDE2_PAD, "constant", f64::NEG_INFINITY)
            .max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        // A1111 averages with `avg_pool2d` over the whole map: the same mean.
        let logits = self
            .head
            .forward(&x)
            .mean_dim(&[2i64, 3][..], false, None::<Kind>);
        Ok(logits.sigmoid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny widths of the test models (the real ones divided by 32).
    fn shapes(stem: i64, mids: [i64; 6], tags: i64) -> BTreeMap<String, Vec<i64>> {
        let mut shapes = BTreeMap::new();
        let mut add = |index: usize, out: i64, inp: i64, k: i64| {
            shapes.insert(conv_key(index, "weight"), vec![out, inp, k, k]);
            if index != HEAD {
                shapes.insert(conv_key(index, "bias"), vec![out]);
            }
        };
        add(0, stem, 3, 7);
        let mut width = stem;
        for (stage, mid) in STAGES.iter().zip(mids) {
            add(stage.projection, 4 * mid, width, 1);
            for (j, c) in stage.block_starts().enumerate() {
                add(c, mid, if j == 0 { width } else { 4 * mid }, 1);
                add(c + 1, mid, mid, 3);
                add(c + 2, 4 * mid, mid, 1);
            }
            width = 4 * mid;
        }
        add(HEAD, tags, width, 1);
        shapes
    }

    #[test]
    fn the_stage_table_numbers_every_convolution_once() {
        let mut seen = vec![0; CONVS];
        seen[0] += 1;
        seen[HEAD] += 1;
        let mut blocks = 0;
        for stage in &STAGES {
            seen[stage.projection] += 1;
            for c in stage.block_starts() {
                blocks += 1;
                (c..c + 3).for_each(|i| seen[i] += 1);
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        assert_eq!(blocks, 57);
        let starts: Vec<usize> = STAGES[3].block_starts().take(3).collect();
        assert_eq!(starts, [97, 101, 104]);
        assert_eq!(STAGES[3].block_starts().last(), Some(155));
    }

    #[test]
    fn widths_come_from_the_shapes() {
        let real = shapes(64, [64, 128, 256, 256, 512, 1024], 9176);
        let config = DeepDanbooruConfig::from_shapes(&real).unwrap();
        assert_eq!(config.stem, 64);
        assert_eq!(
            config.stages[5],
            StageWidths {
                mid: 1024,
                out: 4096
            }
        );
        assert_eq!(config.tags, 9176);
        let tiny = DeepDanbooruConfig::from_shapes(&shapes(2, [2, 4, 8, 8, 16, 32], 12)).unwrap();
        assert_eq!(tiny.stages[0], StageWidths { mid: 2, out: 8 });
    }

    #[test]
    fn layout_errors_name_the_convolution() {
        let good = shapes(2, [2, 4, 8, 8, 16, 32], 12);
        let mut missing = good.clone();
        missing.remove("n_Conv_100.weight");
        assert!(matches!(
            DeepDanbooruConfig::from_shapes(&missing),
            Err(LayoutError::MissingConv { index: 100 })
        ));
        let mut kernel = good.clone();
        kernel.insert("n_Conv_98.weight".into(), vec![8, 8, 1, 1]);
        assert!(matches!(
            DeepDanbooruConfig::from_shapes(&kernel),
            Err(LayoutError::Kernel {
                index: 98,
                kernel: 3,
                ..
            })
        ));
        let mut bias = good.clone();
        bias.remove("n_Conv_5.bias");
        assert!(matches!(
            DeepDanbooruConfig::from_shapes(&bias),
            Err(LayoutError::MissingBias { index: 5 })
        ));
        let mut head_bias = good;
        head_bias.insert("n_Conv_178.bias".into(), vec![12]);
        assert!(matches!(
            DeepDanbooruConfig::from_shapes(&head_bias),
            Err(LayoutError::UnexpectedKey { key }) if key == "n_Conv_178.bias"
        ));
    }
}
