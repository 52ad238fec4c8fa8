//! Building blocks shared by the autoencoder's encoder and decoder.

use crate::models::layers::{attention, Conv2d, ConvSpec, GroupNorm};
use crate::models::row_bands::{size4, RowBands};
use crate::weights::Result;
use crate::weights::VarBuilder;
use tch::Tensor;

/// Group count of the autoencoder's norms.
const GROUPS: i64 = 32;
/// Epsilon of the autoencoder's norms (LDM `Normalize`).
const NORM_EPS: f64 = 1e-6;

/// The autoencoder's group norm (computed in the model dtype, unlike the UNet's).
pub fn normalize(vb: &VarBuilder, channels: i64) -> Result<GroupNorm> {
    GroupNorm::new(vb, GROUPS, channels, NORM_EPS, false)
}

/// `ResnetBlock` without timestep: norm1, conv1, norm2, conv2, optional `nin_shortcut`.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// Loads a block mapping `in_ch` to `out_ch` channels.
    pub fn new(vb: &VarBuilder, in_ch: i64, out_ch: i64) -> Result<Self> {
        Ok(Self {
            norm1: normalize(&vb.pp("norm1"), in_ch)?,
            conv1: Conv2d::new(&vb.pp("conv1"), in_ch, out_ch, ConvSpec::SAME3)?,
            norm2: normalize(&vb.pp("norm2"), out_ch)?,
            conv2: Conv2d::new(&vb.pp("conv2"), out_ch, out_ch, ConvSpec::SAME3)?,
            nin_shortcut: if in_ch == out_ch {
                None
            } else {
                Some(Conv2d::new(
                    &vb.pp("nin_shortcut"),
                    in_ch,
                    out_ch,
                    ConvSpec::POINTWISE,
                )?)
            },
        })
    }

    /// `shortcut(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))`, in row bands when `x` is
    /// large (see `models::row_bands`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_with(x, RowBands::for_activation(size4(x), x.kind()))
    }

    /// [`ResnetBlock::forward`] computed in `bands`: it holds `x`, the inner activation and the
    /// output, where the whole-tensor path also holds a normalised copy of `x` and the
    /// convolution's workspace.
    pub fn forward_with(&self, x: &Tensor, bands: RowBands) -> Tensor {
        if bands.is_whole() {
            return self.forward_whole(x);
        }
        let h = norm_swish_conv_in_bands(&self.norm1, &self.conv1, x, bands, |_, _| None);
        norm_swish_conv_in_bands(&self.norm2, &self.conv2, &h, bands, |r0, n| {
            let x = x.narrow(2, r0, n);
            Some(match &self.nin_shortcut {
                Some(shortcut) => shortcut.forward(&x),
                None => x,
            })
        })
    }

    fn forward_whole(&self, x: &Tensor) -> Tensor {
        // In place where the tensor was made here: one full-size activation less at a time
        // (the VAE's peak memory is in these blocks at 512² and above).
        let h = self.conv1.forward(&self.norm1.forward(x).silu_());
        let mut h = self.conv2.forward(&self.norm2.forward(&h).silu_());
        match &self.nin_shortcut {
            Some(shortcut) => h += shortcut.forward(x),
            None => h += x,
        }
        h
    }
}

/// `AttnBlock`: single-head self-attention over all pixels with 1×1 projections.
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    /// Loads the block for `channels` channels.
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        let c = channels;
        let p = ConvSpec::POINTWISE;
        Ok(Self {
            norm: normalize(&vb.pp("norm"), c)?,
            q: Conv2d::new(&vb.pp("q"), c, c, p)?,
            k: Conv2d::new(&vb.pp("k"), c, c, p)?,
            v: Conv2d::new(&vb.pp("v"), c, c, p)?,
            proj_out: Conv2d::new(&vb.pp("proj_out"), c, c, p)?,
        })
    }

    /// `x + proj_out(attention(norm(x)))`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("VAE features are NCHW");
        let n = self.norm.forward(x);
        let tokens = |t: Tensor| t.reshape([b, c, h * w]).transpose(1, 2);
        let out = attention(
            &tokens(self.q.forward(&n)),
            &tokens(self.k.forward(&n)),
            &tokens(self.v.forward(&n)),
            1,
            false,
        );
        let out = out.transpose(1, 2).reshape([b, c, h, w]);
        x + self.proj_out.forward(&out)
    }
}

/// `Downsample` of the encoder: pad right and bottom by one, then a strided 3×3 convolution.
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    /// Loads `conv` for `channels` channels.
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        let spec = ConvSpec {
            kernel: 3,
            stride: 2,
            padding: 0,
        };
        Ok(Self {
            conv: Conv2d::new(&vb.pp("conv"), channels, channels, spec)?,
        })
    }

    /// Halves height and width.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
    }
}

/// The `mid` section shared by encoder and decoder: ResNet, attention, ResNet.
pub struct MidBlock {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl MidBlock {
    /// Loads `block_1`, `attn_1`, `block_2` for `channels` channels.
    pub fn new(vb: &VarBuilder, channels: i64) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(&vb.pp("block_1"), channels, channels)?,
            attn_1: AttnBlock::new(&vb.pp("attn_1"), channels)?,
            block_2: ResnetBlock::new(&vb.pp("block_2"), channels, channels)?,
        })
    }

    /// Applies the three layers.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(x)))
    }
}

/// `conv(swish(norm(x)))` in `bands` of rows, each band's output plus `residual(r0, n)` where
/// it gives one: the norm's statistics come from the whole tensor, each band of the (stride-1)
/// convolution normalises only the rows it reads.
pub(super) fn norm_swish_conv_in_bands(
    norm: &GroupNorm,
    conv: &Conv2d,
    x: &Tensor,
    bands: RowBands,
    residual: impl Fn(i64, i64) -> Option<Tensor>,
) -> Tensor {
    let stats = norm.stats(x, bands);
    bands.collect(|r0, n| {
        let mut out = conv.forward_rows(bands.height, r0, n, |first, count| {
            norm.forward_rows(x, &stats, first, count).silu_()
        });
        if let Some(residual) = residual(r0, n) {
            out += residual;
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::row_bands::test_weights::{max_diff, RandomWeights};
    use crate::rng::with_global_seed;
    use tch::{Device, Kind};

    fn banded_and_whole(in_ch: i64, out_ch: i64, kind: Kind, rows: i64) -> (Tensor, Tensor) {
        let vb = VarBuilder::new(&RandomWeights, kind, Device::Cpu);
        let (block, x) = with_global_seed(11, || {
            let block = ResnetBlock::new(&vb, in_ch, out_ch).unwrap();
            let x = Tensor::randn([1, in_ch, 13, 9], (Kind::Float, Device::Cpu)) * 2.0;
            (block, x.to_kind(kind))
        });
        let whole = block.forward_with(&x, RowBands::with_rows(13, 13));
        let banded = block.forward_with(&x, RowBands::with_rows(13, rows));
        assert_eq!(banded.kind(), kind);
        assert_eq!(banded.size(), whole.size());
        (banded, whole)
    }

    #[test]
    fn banded_resnet_block_matches_the_whole_tensor() {
        // With a 1×1 shortcut (64 → 32 channels) and with the identity (32 → 32), in bands of
        // one row (every band at an edge or fed by halos) and of several.
        for (in_ch, out_ch) in [(64, 32), (32, 32)] {
            for rows in [1, 3, 6] {
                let (banded, whole) = banded_and_whole(in_ch, out_ch, Kind::Float, rows);
                let diff = max_diff(&banded, &whole);
                assert!(diff < 1e-4, "{in_ch}→{out_ch}, {rows} rows: {diff}");
            }
        }
    }

    #[test]
    fn banded_resnet_block_in_bf16_stays_within_rounding() {
        let (banded, whole) = banded_and_whole(64, 32, Kind::BFloat16, 4);
        let scale = whole.to_kind(Kind::Float).abs().max().double_value(&[]);
        assert!(max_diff(&banded, &whole) < 0.03 * scale);
    }
}
