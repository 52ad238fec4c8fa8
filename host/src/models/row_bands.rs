//! Full-resolution layers computed a band of rows at a time, to bound their peak memory.
//!
//! At 512² and above one activation of the autoencoder is 128–512 channels × the image size
//! (128–256 MiB in fp32 at 512²), and a whole-tensor 3×3 convolution keeps its input, its
//! output and a workspace as large as its output alive at once (docs/performance.md, "Peak
//! memory by stage"). Computed in bands of rows, each with the rows of context its kernel reads
//! above and below, a layer holds its input, its output and one band of temporaries. The sums
//! are the same as the whole tensor's; only their order inside a kernel may differ (float
//! noise), so small activations, where memory does not matter, keep the whole-tensor path.

use tch::{Kind, Tensor};

/// Activations larger than this are computed in bands.
const WHOLE_LIMIT_BYTES: i64 = 64 << 20;
/// The size of one band of an activation.
const BAND_BYTES: i64 = 16 << 20;

/// How the rows `0..height` of an NCHW activation are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowBands {
    /// Rows of the activation.
    pub height: i64,
    /// Rows per band (the last band may be shorter).
    pub rows: i64,
}

impl RowBands {
    /// The bands of an activation of `size` (NCHW) and `kind`: one band when it is small.
    pub fn for_activation(size: [i64; 4], kind: Kind) -> Self {
        let [b, c, h, w] = size;
        let row_bytes = (b * c * w).max(1) * kind.elt_size_in_bytes() as i64;
        let rows = if row_bytes * h > WHOLE_LIMIT_BYTES {
            (BAND_BYTES / row_bytes).max(1)
        } else {
            h
        };
        Self::with_rows(h, rows)
    }

    /// Bands of `rows` rows over `height` rows.
    pub fn with_rows(height: i64, rows: i64) -> Self {
        Self {
            height,
            rows: rows.clamp(1, height.max(1)),
        }
    }

    /// True when one band covers every row (the whole-tensor path).
    pub fn is_whole(&self) -> bool {
        self.rows >= self.height
    }

    /// `(first row, row count)` of each band, top to bottom.
    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> {
        let (height, rows) = (self.height, self.rows);
        (0..height)
            .step_by(rows as usize)
            .map(move |r0| (r0, rows.min(height - r0)))
    }

    /// The NCHW tensor whose rows are `band(first, count)` for each band, written into one
    /// output allocated at the first band's channels, kind and device.
    pub fn collect(&self, mut band: impl FnMut(i64, i64) -> Tensor) -> Tensor {
        let mut out: Option<Tensor> = None;
        for (r0, n) in self.iter() {
            let rows = band(r0, n);
            let out = out.get_or_insert_with(|| {
                let [b, c, _, w] = size4(&rows);
                Tensor::empty([b, c, self.height, w], (rows.kind(), rows.device()))
            });
            out.narrow(2, r0, n).copy_(&rows);
        }
        out.expect("an activation has at least one row")
    }
}

/// The size of an NCHW tensor.
pub fn size4(x: &Tensor) -> [i64; 4] {
    let (b, c, h, w) = x.size4().expect("activations are NCHW");
    [b, c, h, w]
}

/// Group-norm statistics of a whole activation, gathered band by band in fp32.
pub struct GroupStats {
    /// Mean per (batch, group), `[B, G, 1]`.
    pub mean: Tensor,
    /// 1 / √(variance + ε) per (batch, group), `[B, G, 1]`.
    pub rstd: Tensor,
}

impl GroupStats {
    /// Mean and biased variance of `x` over each group's channels and all pixels, in two passes
    /// (the sum of squared deviations, not E[x²] − E[x]², which cancels in fp32).
    pub fn of(x: &Tensor, groups: i64, eps: f64, bands: RowBands) -> Self {
        let [b, c, h, w] = size4(x);
        let group_rows = |r0: i64, n: i64| {
            x.narrow(2, r0, n)
                .to_kind(Kind::Float)
                .reshape([b, groups, -1])
        };
        let count = (c / groups * h * w) as f64;
        let sum_over = |f: &dyn Fn(Tensor) -> Tensor| {
            bands
                .iter()
                .map(|(r0, n)| f(group_rows(r0, n)).sum_dim_intlist(-1, true, Kind::Float))
                .reduce(|a, b| a + b)
                .expect("an activation has at least one row")
        };
        let mean = sum_over(&|g| g) / count;
        let var = sum_over(&|g| (g - &mean).square()) / count;
        Self {
            rstd: (var + eps).rsqrt(),
            mean,
        }
    }

    /// Rows `r0..r0 + n` of `x` normalised (before the affine weights), in fp32.
    pub fn normalize_rows(&self, x: &Tensor, r0: i64, n: i64) -> Tensor {
        let [b, c, _, w] = size4(x);
        let groups = self.mean.size()[1];
        let rows = x
            .narrow(2, r0, n)
            .to_kind(Kind::Float)
            .reshape([b, groups, -1]);
        ((rows - &self.mean) * &self.rstd).reshape([b, c, n, w])
    }
}

/// Random weights for the banded-versus-whole tests of the layers that use row bands.
#[cfg(test)]
pub(crate) mod test_weights {
    use crate::weights::{Result, TensorSource};
    use tch::{Device, Kind, Tensor};

    /// Invents every tensor asked for: norm scales near one, small non-zero biases, weights
    /// scaled by their fan-in (libtorch's global generator: callers draw under
    /// `rng::with_global_seed`, which other tests share).
    pub struct RandomWeights;

    impl TensorSource for RandomWeights {
        fn stored_shape(&self, _: &str) -> Option<Vec<i64>> {
            None
        }

        fn tensor(&self, key: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
            let noise = Tensor::randn(shape, (Kind::Float, Device::Cpu));
            let t = match shape.len() {
                1 if key.ends_with("weight") => noise * 0.1 + 1.0,
                1 => noise * 0.1,
                _ => noise / (shape[1..].iter().product::<i64>() as f64).sqrt(),
            };
            Ok(t.to_kind(kind).to_device(device))
        }
    }

    /// The largest absolute difference between `a` and `b`, in fp32.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::test_weights::{max_diff, RandomWeights};
    use super::*;
    use crate::models::layers::Upsample;
    use crate::rng::with_global_seed;
    use crate::weights::VarBuilder;
    use tch::Device;

    #[test]
    fn bands_cover_every_row_once_in_order() {
        let bands: Vec<_> = RowBands::with_rows(10, 3).iter().collect();
        assert_eq!(bands, [(0, 3), (3, 3), (6, 3), (9, 1)]);
        assert!(RowBands::with_rows(4, 9).is_whole());
        assert_eq!(RowBands::with_rows(4, 0).rows, 1);
    }

    #[test]
    fn only_large_activations_are_banded() {
        // 128 channels × 64² in fp32 is 2 MiB: whole. 256 × 512² is 256 MiB: 16 MiB bands.
        assert!(RowBands::for_activation([1, 128, 64, 64], Kind::Float).is_whole());
        let large = RowBands::for_activation([1, 256, 512, 512], Kind::Float);
        assert_eq!((large.height, large.rows), (512, 32));
        let half = RowBands::for_activation([1, 256, 512, 512], Kind::Half);
        assert_eq!(half.rows, 64);
    }

    #[test]
    fn banded_group_statistics_normalise_like_group_norm() {
        let x = with_global_seed(7, || {
            Tensor::randn([2, 64, 11, 6], (Kind::Float, Device::Cpu)) * 3.0 + 5.0
        });
        let whole = x.group_norm(32, None::<Tensor>, None::<Tensor>, 1e-6, false);
        for rows in [1, 4, 11] {
            let bands = RowBands::with_rows(11, rows);
            let stats = GroupStats::of(&x, 32, 1e-6, bands);
            let banded = bands.collect(|r0, n| stats.normalize_rows(&x, r0, n));
            assert!(max_diff(&whole, &banded) < 1e-5, "bands of {rows} rows");
        }
    }

    #[test]
    fn banded_upsample_matches_the_whole_tensor() {
        let vb = VarBuilder::new(&RandomWeights, Kind::Float, Device::Cpu);
        let (upsample, x) = with_global_seed(3, || {
            let upsample = Upsample::new(&vb, 8).unwrap();
            (
                upsample,
                Tensor::randn([1, 8, 7, 5], (Kind::Float, Device::Cpu)),
            )
        });
        let whole = upsample.forward(&x);
        for rows in [1, 3, 5, 13] {
            let banded = upsample.forward_with(&x, RowBands::with_rows(14, rows));
            assert_eq!(banded.size(), whole.size());
            assert!(max_diff(&whole, &banded) < 1e-5, "bands of {rows} rows");
        }
    }
}
