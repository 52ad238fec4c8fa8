//! The small layers every network here is made of, loaded under their checkpoint names.

use super::row_bands::{size4, GroupStats, RowBands};
use crate::weights::Result;
use crate::weights::{LayerKind, VarBuilder};
use tch::{Kind, Tensor};

/// A fully connected layer (`weight` [out, in], optional `bias`).
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Kind of the weights.
    pub fn kind(&self) -> Kind {
        self.weight.kind()
    }

    /// Loads `weight` and, if `bias`, `bias` under `vb`.
    pub fn new(vb: &VarBuilder, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let layer = Self {
            weight: vb.get("weight", &[out_dim, in_dim])?,
            bias: if bias {
                Some(vb.get("bias", &[out_dim])?)
            } else {
                None
            },
        };
        vb.record_layer(LayerKind::Linear, &layer.weight, layer.bias.as_ref());
        Ok(layer)
    }

    /// Device of the weights.
    pub fn device(&self) -> tch::Device {
        self.weight.device()
    }

    /// A layer from tensors already loaded (a weight stored under another name).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `x · Wᵀ + b` over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// A 2-D convolution with square kernel, stride and padding.
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

/// Kernel, stride and padding of a [`Conv2d`].
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    /// Kernel size.
    pub kernel: i64,
    /// Stride.
    pub stride: i64,
    /// Zero padding on every side.
    pub padding: i64,
}

impl ConvSpec {
    /// 3×3, stride 1, padding 1: the shape-preserving convolution.
    pub const SAME3: Self = Self {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    /// 1×1 projection.
    pub const POINTWISE: Self = Self {
        kernel: 1,
        stride: 1,
        padding: 0,
    };
}

impl Conv2d {
    /// Loads `weight` [out, in, k, k] and `bias` [out] under `vb`.
    pub fn new(vb: &VarBuilder, in_ch: i64, out_ch: i64, spec: ConvSpec) -> Result<Self> {
        let k = spec.kernel;
        let weight = if k == 1 {
            // Some converters store 1×1 convolutions as linear weights.
            vb.get_reshaped("weight", &[out_ch, in_ch, 1, 1], &[out_ch, in_ch])?
        } else {
            vb.get("weight", &[out_ch, in_ch, k, k])?
        };
        let layer = Self {
            weight,
            bias: vb.get("bias", &[out_ch])?,
            stride: spec.stride,
            padding: spec.padding,
        };
        let kind = LayerKind::Conv2d {
            stride: spec.stride,
            padding: spec.padding,
        };
        vb.record_layer(kind, &layer.weight, Some(&layer.bias));
        Ok(layer)
    }

    /// Applies the convolution to an NCHW tensor.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }

    /// Output rows `r0..r0 + n` of this stride-1 convolution over an input of `height` rows,
    /// from `input_rows(first, count)`, which gives the input's rows (clipped to the input;
    /// the rows of zero padding outside it are added here).
    pub fn forward_rows(
        &self,
        height: i64,
        r0: i64,
        n: i64,
        input_rows: impl FnOnce(i64, i64) -> Tensor,
    ) -> Tensor {
        debug_assert_eq!(self.stride, 1, "row bands need a stride-1 convolution");
        let p = self.padding;
        let (lo, hi) = ((r0 - p).max(0), (r0 + n + p).min(height));
        let mut input = input_rows(lo, hi - lo);
        let (top, bottom) = (lo - (r0 - p), r0 + n + p - hi);
        if top > 0 || bottom > 0 {
            input = input.constant_pad_nd([0, 0, top, bottom]);
        }
        input.conv2d(&self.weight, Some(&self.bias), [1, 1], [0, p], [1, 1], 1)
    }
}

/// Nearest-neighbour ×2 followed by a 3×3 convolution (`conv`): the upsampling of both the
/// UNet and the autoencoder's decoder.
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// Loads `conv` for `channels` channels.
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&vb.pp("conv"), channels, channels, ConvSpec::SAME3)?,
        })
    }

    /// Doubles height and width (nearest), then convolves, at every size: LDM's `Upsample`.
    /// A UNet skip connection of odd size is matched afterwards, at the concatenation.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().expect("features are NCHW");
        self.conv
            .forward(&x.upsample_nearest2d([2 * h, 2 * w], None, None))
    }

    /// [`Upsample::forward`] in row bands when the output is large: the doubled input is
    /// never built whole (the autoencoder's decoder at 512² and above).
    pub fn forward_in_bands(&self, x: &Tensor) -> Tensor {
        let [b, c, h, w] = size4(x);
        let bands = RowBands::for_activation([b, c, 2 * h, 2 * w], x.kind());
        self.forward_with(x, bands)
    }

    /// [`Upsample::forward`] computed in `bands` of output rows.
    pub fn forward_with(&self, x: &Tensor, bands: RowBands) -> Tensor {
        if bands.is_whole() {
            return self.forward(x);
        }
        let [_, _, h, w] = size4(x);
        bands.collect(|r0, n| {
            self.conv.forward_rows(2 * h, r0, n, |first, count| {
                // Doubled rows first..first + count come from input rows first / 2 ..= last / 2.
                let (i0, i1) = (first / 2, (first + count - 1) / 2 + 1);
                x.narrow(2, i0, i1 - i0)
                    .upsample_nearest2d([2 * (i1 - i0), 2 * w], None, None)
                    .narrow(2, first - 2 * i0, count)
            })
        })
    }
}

/// Group normalisation with affine parameters.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
    upcast: bool,
}

impl GroupNorm {
    /// Loads `weight` and `bias` [channels]; `upcast` computes in fp32 like LDM's `GroupNorm32`.
    pub fn new(
        vb: &VarBuilder,
        groups: i64,
        channels: i64,
        eps: f64,
        upcast: bool,
    ) -> Result<Self> {
        let layer = Self {
            weight: vb.get("weight", &[channels])?,
            bias: vb.get("bias", &[channels])?,
            groups,
            eps,
            upcast,
        };
        vb.record_layer(LayerKind::GroupNorm, &layer.weight, Some(&layer.bias));
        Ok(layer)
    }

    /// Normalises an NC… tensor over channel groups.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.upcast && x.kind() != Kind::Float {
            let (w, b) = (
                self.weight.to_kind(Kind::Float),
                self.bias.to_kind(Kind::Float),
            );
            x.to_kind(Kind::Float)
                .group_norm(self.groups, Some(&w), Some(&b), self.eps, true)
                .to_kind(x.kind())
        } else {
            x.group_norm(
                self.groups,
                Some(&self.weight),
                Some(&self.bias),
                self.eps,
                true,
            )
        }
    }

    /// This norm's statistics over `x`, gathered in `bands`.
    pub fn stats(&self, x: &Tensor, bands: RowBands) -> GroupStats {
        GroupStats::of(x, self.groups, self.eps, bands)
    }

    /// Rows `r0..r0 + n` of [`GroupNorm::forward`] from the whole tensor's `stats`, computed
    /// in fp32 and returned in `x`'s kind.
    pub fn forward_rows(&self, x: &Tensor, stats: &GroupStats, r0: i64, n: i64) -> Tensor {
        let channel = |t: &Tensor| t.to_kind(Kind::Float).reshape([1, -1, 1, 1]);
        (stats.normalize_rows(x, r0, n) * channel(&self.weight) + channel(&self.bias))
            .to_kind(x.kind())
    }
}

/// Layer normalisation over the last dimension.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
    upcast: bool,
}

impl LayerNorm {
    /// Loads `weight` and `bias` [dim].
    pub fn new(vb: &VarBuilder, dim: i64, eps: f64) -> Result<Self> {
        let layer = Self {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
            dim,
            eps,
            upcast: false,
        };
        vb.record_layer(LayerKind::LayerNorm, &layer.weight, Some(&layer.bias));
        Ok(layer)
    }

    /// The same norm computed in fp32 and cast back to the input's dtype, as OpenAI CLIP's
    /// `LayerNorm` subclass does for fp16 inputs (`clip/model.py: LayerNorm`).
    pub fn in_fp32(self) -> Self {
        Self {
            upcast: true,
            ..self
        }
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.upcast && x.kind() != Kind::Float {
            let (w, b) = (
                self.weight.to_kind(Kind::Float),
                self.bias.to_kind(Kind::Float),
            );
            return x
                .to_kind(Kind::Float)
                .layer_norm([self.dim], Some(&w), Some(&b), self.eps, true)
                .to_kind(x.kind());
        }
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// Multi-head attention of `q` [B, Lq, H·D] over `k`, `v` [B, Lk, H·D] with `heads` heads.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, causal: bool) -> Tensor {
    let (b, lq, width) = q.size3().expect("attention query is [B, L, C]");
    let lk = k.size()[1];
    let d = width / heads;
    let split = |t: &Tensor, l: i64| t.reshape([b, l, heads, d]).transpose(1, 2);
    let out = Tensor::scaled_dot_product_attention(
        &split(q, lq),
        &split(k, lk),
        &split(v, lk),
        None::<Tensor>,
        0.0,
        causal,
        None,
        false,
    );
    out.transpose(1, 2).reshape([b, lq, width])
}
