//! The tensor rebuilds the LyCORIS module types share (A1111's
//! `extensions-builtin/Lora/lyco_helpers.py`), and the checks that turn a malformed file into a
//! [`NetworkError::BadModule`] instead of a libtorch panic.

use tch::Tensor;

use super::{NetworkError, Result};

/// A [`NetworkError::BadModule`] for the layer `key`.
pub fn bad_module(key: &str, reason: impl Into<String>) -> NetworkError {
    NetworkError::BadModule {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The tensor stored under `suffix`, which the module type requires.
pub fn required<'a>(
    w: &'a std::collections::BTreeMap<String, Tensor>,
    key: &str,
    suffix: &str,
) -> Result<&'a Tensor> {
    w.get(suffix)
        .ok_or_else(|| bad_module(key, format!("the `{suffix}` tensor is missing")))
}

/// `t.size(dim)` as Python has it, an error instead of a panic when `t` has fewer dimensions
/// (A1111 fails on such a file with an `IndexError`).
pub fn size_at(t: &Tensor, dim: usize, key: &str, name: &str) -> Result<i64> {
    let size = t.size();
    size.get(dim).copied().ok_or_else(|| {
        bad_module(
            key,
            format!("`{name}` has shape {size:?}; the module math reads its dimension {dim}"),
        )
    })
}

/// `t.item()`: the one value of a one-element tensor.
pub fn item(t: &Tensor, key: &str, name: &str) -> Result<f64> {
    if t.numel() != 1 {
        return Err(bad_module(
            key,
            format!(
                "`{name}` should hold one value, it has shape {:?}",
                t.size()
            ),
        ));
    }
    Ok(t.f_reshape([1i64])?.f_double_value(&[0])?)
}

/// `t.to(orig_weight.device, dtype=orig_weight.dtype)`: the types compute in the layer's
/// dtype and on its device.
pub fn like_weight(t: &Tensor, orig_weight: &Tensor) -> Result<Tensor> {
    Ok(t.f_to_device(orig_weight.device())?
        .f_to_kind(orig_weight.kind())?)
}

/// `make_weight_cp`: a CP/Tucker factor pair joined through its core `t`
/// (`[r, r, kh, kw]`), `wa` `[r, out]` and `wb` `[r, in]` giving `[out, in, kh, kw]`.
pub fn make_weight_cp(t: &Tensor, wa: &Tensor, wb: &Tensor) -> Result<Tensor> {
    let temp = Tensor::f_einsum("i j k l, j r -> i r k l", &[t, wb], None::<&[i64]>)?;
    Ok(Tensor::f_einsum(
        "i j k l, i r -> r j k l",
        &[&temp, wa],
        None::<&[i64]>,
    )?)
}

/// `rebuild_conventional`: `up @ down` with both flattened to matrices (the rank first in
/// `down`, last in `up`), `dyn_dim` keeping only the first ranks, reshaped to `shape`.
pub fn rebuild_conventional(
    up: &Tensor,
    down: &Tensor,
    shape: &[i64],
    dyn_dim: Option<i64>,
) -> Result<Tensor> {
    let mut up = up.f_reshape([first_size(up), -1])?;
    let mut down = down.f_reshape([first_size(down), -1])?;
    if let Some(dyn_dim) = dyn_dim {
        // Python's `[:, :dyn_dim]` and `[:dyn_dim, :]`: a bound past the end keeps everything,
        // a negative one counts from the end.
        up = up.f_narrow(1, 0, slice_len(up.size()[1], dyn_dim))?;
        down = down.f_narrow(0, 0, slice_len(down.size()[0], dyn_dim))?;
    }
    Ok(up.f_matmul(&down)?.f_reshape(shape)?)
}

/// `rebuild_cp_decomposition`: a LoRA's `up`/`down` joined through its `mid` core
/// (`[r, r, kh, kw]`), giving `[out, in, kh, kw]`.
pub fn rebuild_cp_decomposition(up: &Tensor, down: &Tensor, mid: &Tensor) -> Result<Tensor> {
    let up = up.f_reshape([first_size(up), -1])?;
    let down = down.f_reshape([first_size(down), -1])?;
    Ok(Tensor::f_einsum(
        "n m k l, i n, m j -> i j k l",
        &[mid, &up, &down],
        None::<&[i64]>,
    )?)
}

/// `factorization`: `dimension` split into two factors `(m, n)`, `m ≤ n` — `factor` itself
/// when it divides `dimension`, else the largest divisor reached by walking the divisors
/// upward while they stay ≤ `factor` (any size when `factor` is negative) and below their
/// cofactor. This is how LyCORIS sizes LoKr's Kronecker factors and its original OFT's blocks;
/// A1111 v1.10.1 keeps it in `lyco_helpers.py` though none of its module types calls it.
pub fn factorization(dimension: i64, factor: i64) -> (i64, i64) {
    if factor > 0 && dimension % factor == 0 {
        let (m, n) = (factor, dimension / factor);
        return (m.min(n), m.max(n));
    }
    let factor = if factor < 0 { dimension } else { factor };
    let (mut m, mut n) = (1, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while dimension % new_m != 0 {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        // Compared with the first pair's sum, not the best so far, as the reference does: the
        // walk only ends at `factor` or at the middle.
        if new_m + new_n > length || new_m > factor {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    (m.min(n), m.max(n))
}

/// `t.size(0)` for a reshape to a matrix; a zero-dimensional tensor is left to the reshape to
/// refuse (its `-1` cannot be inferred for a first size of 1 otherwise).
fn first_size(t: &Tensor) -> i64 {
    t.size().first().copied().unwrap_or(1)
}

/// The length of Python's `[:end]` on an axis of `len` elements.
fn slice_len(len: i64, end: i64) -> i64 {
    if end < 0 {
        (len + end).max(0)
    } else {
        end.min(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed by A1111's `factorization` itself (its docstring's table is wrong for
    /// 360: the loop compares each pair with the first pair's sum, so it runs on to 18 × 20).
    #[test]
    fn factorization_matches_the_reference() {
        let factors = [-1, 2, 4, 8, 16, 3, 5];
        let table = [
            (
                127,
                [
                    (1, 127),
                    (1, 127),
                    (1, 127),
                    (1, 127),
                    (1, 127),
                    (1, 127),
                    (1, 127),
                ],
            ),
            (
                128,
                [
                    (8, 16),
                    (2, 64),
                    (4, 32),
                    (8, 16),
                    (8, 16),
                    (2, 64),
                    (4, 32),
                ],
            ),
            (
                250,
                [
                    (10, 25),
                    (2, 125),
                    (2, 125),
                    (5, 50),
                    (10, 25),
                    (2, 125),
                    (5, 50),
                ],
            ),
            (
                360,
                [
                    (18, 20),
                    (2, 180),
                    (4, 90),
                    (8, 45),
                    (15, 24),
                    (3, 120),
                    (5, 72),
                ],
            ),
            (
                1280,
                [
                    (32, 40),
                    (2, 640),
                    (4, 320),
                    (8, 160),
                    (16, 80),
                    (2, 640),
                    (5, 256),
                ],
            ),
            (12, [(3, 4), (2, 6), (3, 4), (3, 4), (3, 4), (3, 4), (3, 4)]),
        ];
        for (dimension, expected) in table {
            for (factor, want) in factors.into_iter().zip(expected) {
                assert_eq!(
                    factorization(dimension, factor),
                    want,
                    "factorization({dimension}, {factor})"
                );
            }
        }
    }

    #[test]
    fn dyn_dim_slices_like_python() {
        assert_eq!(slice_len(8, 4), 4);
        assert_eq!(slice_len(8, 20), 8);
        assert_eq!(slice_len(8, -3), 5);
        assert_eq!(slice_len(8, -20), 0);
    }
}
