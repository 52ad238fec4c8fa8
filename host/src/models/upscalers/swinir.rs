//! SwinIR (spandrel `architectures/SwinIR/__arch/SwinIR.py`): a shallow convolution, residual
//! Swin Transformer blocks (`layers.i.residual_group.blocks.j`: shifted-window attention with
//! a relative position bias, and an MLP), a convolution closing each group and the body, and
//! one of SwinIR's four reconstructions: classical pixel shuffle, lightweight one-step
//! shuffle, real-world nearest + convolution, or none (denoising, JPEG).

use tch::{Kind, Tensor};

use super::{leaky_relu, pad_to_multiple_reflect};
use crate::models::layers::{Conv2d, ConvSpec, LayerNorm, Linear};
use crate::weights::{Result, VarBuilder};

/// SwinIR's reconstruction after the transformer body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwinIrUpsampler {
    /// "pixelshuffle" (classical SR): convolution, then ×2 conv + shuffle stages (or one ×3).
    PixelShuffle {
        /// Overall scale.
        scale: i64,
        /// Width of the reconstruction features.
        num_feat: i64,
    },
    /// "pixelshuffledirect" (lightweight SR): one convolution and one shuffle.
    PixelShuffleDirect {
        /// Scale.
        scale: i64,
    },
    /// "nearest+conv" (real-world SR): ×2 nearest + convolution stages.
    NearestConv {
        /// Scale (2, 4 or 8).
        scale: i64,
        /// Width of the reconstruction features.
        num_feat: i64,
    },
    /// "" (denoising and JPEG artefacts): a residual convolution, scale 1.
    None,
}

impl SwinIrUpsampler {
    /// The network's scale.
    pub fn scale(&self) -> i64 {
        match *self {
            SwinIrUpsampler::PixelShuffle { scale, .. }
            | SwinIrUpsampler::PixelShuffleDirect { scale }
            | SwinIrUpsampler::NearestConv { scale, .. } => scale,
            SwinIrUpsampler::None => 1,
        }
    }
}

/// The shapes of a SwinIR, read from its state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct SwinIrConfig {
    /// Image channels (in and out).
    pub in_chans: i64,
    /// Transformer width.
    pub embed_dim: i64,
    /// Blocks of each residual group.
    pub depths: Vec<i64>,
    /// Attention heads of each residual group.
    pub heads: Vec<i64>,
    /// Attention window side.
    pub window_size: i64,
    /// The training image size, which decides whether windows shift (`img_size`).
    pub img_size: i64,
    /// MLP hidden width.
    pub mlp_hidden: i64,
    /// `resi_connection` "3conv" (a bottleneck of three convolutions) instead of "1conv".
    pub three_conv: bool,
    /// The reconstruction.
    pub upsampler: SwinIrUpsampler,
    /// `img_range`: 255 for window-7 models (spandrel's rule), else 1.
    pub img_range: f64,
}

/// `resi_connection`: one 3×3 convolution, or 3×3 → 1×1 → 3×3 through a quarter of the width.
enum ResiConv {
    One(Conv2d),
    Three([Conv2d; 3]),
}

impl ResiConv {
    fn new(vb: &VarBuilder, dim: i64, three: bool) -> Result<Self> {
        if !three {
            return Ok(ResiConv::One(Conv2d::new(vb, dim, dim, ConvSpec::SAME3)?));
        }
        let q = dim / 4;
        Ok(ResiConv::Three([
            Conv2d::new(&vb.pp(0), dim, q, ConvSpec::SAME3)?,
            Conv2d::new(&vb.pp(2), q, q, ConvSpec::POINTWISE)?,
            Conv2d::new(&vb.pp(4), q, dim, ConvSpec::SAME3)?,
        ]))
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            ResiConv::One(conv) => conv.forward(x),
            ResiConv::Three([a, b, c]) => {
                let h = leaky_relu(&a.forward(x), 0.2);
                let h = leaky_relu(&b.forward(&h), 0.2);
                c.forward(&h)
            }
        }
    }
}

/// `WindowAttention`: multi-head attention inside a window with a learned relative position
/// bias.
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    /// [heads, N, N], gathered from the table once.
    bias: Tensor,
    heads: i64,
    scale: f64,
}

impl WindowAttention {
    fn new(vb: &VarBuilder, dim: i64, window: i64, heads: i64) -> Result<Self> {
        let n = window * window;
        let table = vb.get(
            "relative_position_bias_table",
            &[(2 * window - 1) * (2 * window - 1), heads],
        )?;
        let index = vb
            .get("relative_position_index", &[n, n])?
            .to_kind(Kind::Int64);
        let bias = table
            .index_select(0, &index.reshape([-1]))
            .reshape([n, n, heads])
            .permute([2, 0, 1])
            .contiguous();
        let head_dim = dim / heads;
        Ok(Self {
            qkv: Linear::new(&vb.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::new(&vb.pp("proj"), dim, dim, true)?,
            bias,
            heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `x` [nW·B, N, C], `mask` [nW, N, N] (0 or −100) for shifted windows.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (b, n, c) = x.size3().expect("windows are [B, N, C]");
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, n, 3, self.heads, c / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let q = q * self.scale;
        let mut attn = q.matmul(&k.transpose(-2, -1)) + self.bias.unsqueeze(0);
        if let Some(mask) = mask {
            let nw = mask.size()[0];
            attn = (attn.view([b / nw, nw, self.heads, n, n]) + mask.unsqueeze(1).unsqueeze(0))
                .view([-1, self.heads, n, n]);
        }
        let attn = attn.softmax(-1, attn.kind());
        let out = attn.matmul(&v).transpose(1, 2).reshape([b, n, c]);
        self.proj.forward(&out)
    }
}

/// `SwinTransformerBlock`.
struct SwinBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    window: i64,
    shift: i64,
}

/// `window_partition`: [B, H, W, C] → [B·nW, w, w, C].
fn window_partition(x: &Tensor, w: i64) -> Tensor {
    let (b, h, wd, c) = x.size4().expect("[B, H, W, C]");
    x.view([b, h / w, w, wd / w, w, c])
        .permute([0, 1, 3, 2, 4, 5])
        .contiguous()
        .view([-1, w, w, c])
}

/// `window_reverse`: [B·nW, w, w, C] → [B, H, W, C].
fn window_reverse(windows: &Tensor, w: i64, h: i64, wd: i64) -> Tensor {
    let b = windows.size()[0] / ((h / w) * (wd / w));
    windows
        .view([b, h / w, wd / w, w, w, -1])
        .permute([0, 1, 3, 2, 4, 5])
        .contiguous()
        .view([b, h, wd, -1])
}

/// `SwinTransformerBlock.calculate_mask` for an h × w feature map: −100 between positions of
/// a window that come from different regions of the cyclic shift, 0 within one.
fn shift_mask(h: i64, w: i64, window: i64, shift: i64, like: &Tensor) -> Tensor {
    // Regions along one axis: [0, len − window), [len − window, len − shift), the rest.
    let region = |i: i64, len: i64| {
        if i < len - window {
            0
        } else if i < len - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (h / window, w / window);
    let n = window * window;
    let mut values = Vec::with_capacity((nh * nw * n * n) as usize);
    for wy in 0..nh {
        for wx in 0..nw {
            let labels: Vec<i64> = (0..n)
                .map(|p| {
                    let (y, x) = (wy * window + p / window, wx * window + p % window);
                    region(y, h) * 3 + region(x, w)
                })
                .collect();
            for a in &labels {
                for b in &labels {
                    values.push(if a == b { 0f32 } else { -100f32 });
                }
            }
        }
    }
    Tensor::from_slice(&values)
        .view([nh * nw, n, n])
        .to_device(like.device())
        .to_kind(like.kind())
}

impl SwinBlock {
    fn new(vb: &VarBuilder, c: &SwinIrConfig, heads: i64, odd: bool) -> Result<Self> {
        let dim = c.embed_dim;
        // A window as large as the training image covers it whole, unshifted.
        let (window, shift) = if c.img_size <= c.window_size {
            (c.img_size, 0)
        } else {
            (c.window_size, if odd { c.window_size / 2 } else { 0 })
        };
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), dim, 1e-5)?,
            attn: WindowAttention::new(&vb.pp("attn"), dim, window, heads)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), dim, 1e-5)?,
            fc1: Linear::new(&vb.pp("mlp").pp("fc1"), dim, c.mlp_hidden, true)?,
            fc2: Linear::new(&vb.pp("mlp").pp("fc2"), c.mlp_hidden, dim, true)?,
            window,
            shift,
        })
    }

    /// `x` [B, H·W, C] for an h × w feature map.
    fn forward(&self, x: &Tensor, h: i64, w: i64) -> Tensor {
        let (b, _, c) = x.size3().expect("tokens are [B, L, C]");
        let s = self.shift;
        let normed = self.norm1.forward(x).view([b, h, w, c]);
        let shifted = if s > 0 {
            normed.roll([-s, -s], [1, 2])
        } else {
            normed
        };
        let windows =
            window_partition(&shifted, self.window).view([-1, self.window * self.window, c]);
        let mask = (s > 0).then(|| shift_mask(h, w, self.window, s, x));
        let attended =
            self.attn
                .forward(&windows, mask.as_ref())
                .view([-1, self.window, self.window, c]);
        let merged = window_reverse(&attended, self.window, h, w);
        let unshifted = if s > 0 {
            merged.roll([s, s], [1, 2])
        } else {
            merged
        };
        let x = x + unshifted.view([b, h * w, c]);
        let mlp = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        x + mlp
    }
}

/// `RSTB`: a residual group of blocks closed by a convolution on the unembedded map.
struct ResidualGroup {
    blocks: Vec<SwinBlock>,
    conv: ResiConv,
}

impl ResidualGroup {
    fn forward(&self, x: &Tensor, h: i64, w: i64) -> Tensor {
        let out = self
            .blocks
            .iter()
            .fold(x.shallow_clone(), |t, block| block.forward(&t, h, w));
        let conv = self.conv.forward(&unembed(&out, h, w));
        conv.flatten(2, -1).transpose(1, 2) + x
    }
}

/// `PatchUnEmbed`: [B, H·W, C] → [B, C, H, W].
fn unembed(x: &Tensor, h: i64, w: i64) -> Tensor {
    let (b, _, c) = x.size3().expect("tokens are [B, L, C]");
    x.transpose(1, 2).view([b, c, h, w])
}

/// The reconstruction's layers.
enum Reconstruction {
    PixelShuffle {
        before: Conv2d,
        /// (convolution, shuffle factor) stages.
        stages: Vec<(Conv2d, i64)>,
        last: Conv2d,
    },
    Direct {
        conv: Conv2d,
        scale: i64,
    },
    NearestConv {
        before: Conv2d,
        ups: Vec<Conv2d>,
        hr: Conv2d,
        last: Conv2d,
    },
    None {
        last: Conv2d,
    },
}

/// SwinIR.
pub struct SwinIr {
    config: SwinIrConfig,
    mean: Tensor,
    conv_first: Conv2d,
    patch_norm: LayerNorm,
    layers: Vec<ResidualGroup>,
    norm: LayerNorm,
    conv_after_body: ResiConv,
    reconstruction: Reconstruction,
}

impl SwinIr {
    /// Loads the network under `vb` (the state dict's root).
    pub fn new(vb: &VarBuilder, config: SwinIrConfig) -> Result<Self> {
        let c = &config;
        let dim = c.embed_dim;
        let layers = c
            .depths
            .iter()
            .zip(&c.heads)
            .enumerate()
            .map(|(i, (&depth, &heads))| {
                let layer = vb.pp("layers").pp(i);
                let group = layer.pp("residual_group").pp("blocks");
                let blocks = (0..depth)
                    .map(|j| SwinBlock::new(&group.pp(j), c, heads, j % 2 == 1))
                    .collect::<Result<Vec<_>>>()?;
                Ok(ResidualGroup {
                    blocks,
                    conv: ResiConv::new(&layer.pp("conv"), dim, c.three_conv)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let out = c.in_chans;
        let reconstruction = match c.upsampler {
            SwinIrUpsampler::PixelShuffle { scale, num_feat } => {
                let factors: Vec<i64> = if scale & (scale - 1) == 0 {
                    vec![2; scale.trailing_zeros() as usize]
                } else {
                    vec![scale]
                };
                let stages = factors
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let conv = Conv2d::new(
                            &vb.pp("upsample").pp(2 * i),
                            num_feat,
                            f * f * num_feat,
                            ConvSpec::SAME3,
                        )?;
                        Ok((conv, f))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Reconstruction::PixelShuffle {
                    before: Conv2d::new(
                        &vb.pp("conv_before_upsample").pp(0),
                        dim,
                        num_feat,
                        ConvSpec::SAME3,
                    )?,
                    stages,
                    last: Conv2d::new(&vb.pp("conv_last"), num_feat, out, ConvSpec::SAME3)?,
                }
            }
            SwinIrUpsampler::PixelShuffleDirect { scale } => Reconstruction::Direct {
                conv: Conv2d::new(
                    &vb.pp("upsample").pp(0),
                    dim,
                    scale * scale * out,
                    ConvSpec::SAME3,
                )?,
                scale,
            },
            SwinIrUpsampler::NearestConv { scale, num_feat } => {
                let count = match scale {
                    4 => 2,
                    8 => 3,
                    _ => 1,
                };
                let ups = (1..=count)
                    .map(|i| {
                        Conv2d::new(
                            &vb.pp(format!("conv_up{i}")),
                            num_feat,
                            num_feat,
                            ConvSpec::SAME3,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Reconstruction::NearestConv {
                    before: Conv2d::new(
                        &vb.pp("conv_before_upsample").pp(0),
                        dim,
                        num_feat,
                        ConvSpec::SAME3,
                    )?,
                    ups,
                    hr: Conv2d::new(&vb.pp("conv_hr"), num_feat, num_feat, ConvSpec::SAME3)?,
                    last: Conv2d::new(&vb.pp("conv_last"), num_feat, out, ConvSpec::SAME3)?,
                }
            }
            SwinIrUpsampler::None => Reconstruction::None {
                last: Conv2d::new(&vb.pp("conv_last"), dim, out, ConvSpec::SAME3)?,
            },
        };
        let mean = if c.in_chans == 3 {
            Tensor::from_slice(&[0.4488f32, 0.4371, 0.4040]).view([1, 3, 1, 1])
        } else {
            Tensor::zeros([1, 1, 1, 1], (Kind::Float, tch::Device::Cpu))
        };
        Ok(Self {
            mean: mean.to_device(vb.device()).to_kind(vb.kind()),
            conv_first: Conv2d::new(&vb.pp("conv_first"), c.in_chans, dim, ConvSpec::SAME3)?,
            patch_norm: LayerNorm::new(&vb.pp("patch_embed").pp("norm"), dim, 1e-5)?,
            layers,
            norm: LayerNorm::new(&vb.pp("norm"), dim, 1e-5)?,
            conv_after_body: ResiConv::new(&vb.pp("conv_after_body"), dim, c.three_conv)?,
            reconstruction,
            config,
        })
    }

    /// The shapes it was built with.
    pub fn config(&self) -> &SwinIrConfig {
        &self.config
    }

    /// `forward_features`: patch embedding (flatten + norm), the residual groups, the norm,
    /// back to a map.
    fn features(&self, x: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().expect("NCHW features");
        let tokens = self.patch_norm.forward(&x.flatten(2, -1).transpose(1, 2));
        let tokens = self
            .layers
            .iter()
            .fold(tokens, |t, layer| layer.forward(&t, h, w));
        unembed(&self.norm.forward(&tokens), h, w)
    }

    /// The body with its long residual: `conv_after_body(forward_features(x)) + x`.
    fn body(&self, x: &Tensor) -> Tensor {
        self.conv_after_body.forward(&self.features(x)) + x
    }

    /// `SwinIR.forward` on [B, C, H, W] in 0..1: reflect-padded to a multiple of the window,
    /// mean-shifted and scaled by `img_range`, reconstructed, and cut to H·s × W·s.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().expect("NCHW image");
        let range = self.config.img_range;
        let padded = pad_to_multiple_reflect(x, self.config.window_size);
        let x = (padded - &self.mean) * range;
        let out = match &self.reconstruction {
            Reconstruction::PixelShuffle {
                before,
                stages,
                last,
            } => {
                let feat = self.body(&self.conv_first.forward(&x));
                let mut h = leaky_relu(&before.forward(&feat), 0.01);
                for (conv, factor) in stages {
                    h = conv.forward(&h).pixel_shuffle(*factor);
                }
                last.forward(&h)
            }
            Reconstruction::Direct { conv, scale } => {
                let feat = self.body(&self.conv_first.forward(&x));
                conv.forward(&feat).pixel_shuffle(*scale)
            }
            Reconstruction::NearestConv {
                before,
                ups,
                hr,
                last,
            } => {
                let feat = self.body(&self.conv_first.forward(&x));
                let mut h = leaky_relu(&before.forward(&feat), 0.01);
                for conv in ups {
                    let (_, _, hh, ww) = h.size4().expect("NCHW features");
                    let up = h.upsample_nearest2d([2 * hh, 2 * ww], Some(2.0), Some(2.0));
                    h = leaky_relu(&conv.forward(&up), 0.2);
                }
                last.forward(&leaky_relu(&hr.forward(&h), 0.2))
            }
            Reconstruction::None { last } => {
                let first = self.conv_first.forward(&x);
                &x + last.forward(&self.body(&first))
            }
        };
        let out = out / range + &self.mean;
        let s = self.config.upsampler.scale();
        out.narrow(2, 0, h * s).narrow(3, 0, w * s)
    }
}
