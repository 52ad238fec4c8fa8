//! LoKr (A1111's `network_lokr.py`): the weight change is the Kronecker product `w1 ⊗ w2`, each
//! factor stored whole (`lokr_w1`, `lokr_w2`) or as a low-rank pair (`lokr_w1_a/b`,
//! `lokr_w2_a/b`), the second optionally joined through a CP/Tucker core (`lokr_t2`).

use tch::Tensor;

use super::helpers::{bad_module, like_weight, make_weight_cp, size_at};
use super::{
    finalize_updown, ModuleCommon, ModuleWeights, Multipliers, NetworkError, NetworkModule, Result,
    Updown,
};

/// A LoKr module when `weights` has both factors, each whole or as an `_a`/`_b` pair.
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    let has = |name: &str| {
        weights.w.contains_key(name)
            || (weights.w.contains_key(&format!("{name}_a"))
                && weights.w.contains_key(&format!("{name}_b")))
    };
    if !(has("lokr_w1") && has("lokr_w2")) {
        return None;
    }
    Some(LokrModule::new(weights).map(|m| Box::new(m) as Box<dyn NetworkModule>))
}

/// One Kronecker factor as the file stores it.
enum Factor {
    /// The factor itself.
    Whole(Tensor),
    /// `a @ b`.
    Pair { a: Tensor, b: Tensor },
    /// `a` and `b` joined through the core `t` (only the second factor has this form).
    Tucker { t: Tensor, a: Tensor, b: Tensor },
}

/// One layer's LoKr factors (A1111's `NetworkModuleLokr`).
pub struct LokrModule {
    common: ModuleCommon,
    w1: Factor,
    w2: Factor,
}

impl LokrModule {
    /// Takes the factors. The rank for the alpha scale is `lokr_w2_b`'s first dimension, else
    /// `lokr_w1_b`'s; with both factors whole there is none and alpha is ignored.
    fn new(weights: &ModuleWeights) -> Result<Self> {
        let mut common = ModuleCommon::new(weights);
        let get = |k: &str| weights.w.get(k).map(Tensor::shallow_clone);
        // A whole factor wins over a pair stored beside it, as in A1111.
        let w1 = match (get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b")) {
            (Some(w), _, _) => Factor::Whole(w),
            (None, Some(a), Some(b)) => Factor::Pair { a, b },
            _ => return Err(missing(&common, "lokr_w1")),
        };
        let w2 = match (
            get("lokr_w2"),
            get("lokr_w2_a"),
            get("lokr_w2_b"),
            get("lokr_t2"),
        ) {
            (Some(w), _, _, _) => Factor::Whole(w),
            (None, Some(a), Some(b), None) => Factor::Pair { a, b },
            (None, Some(a), Some(b), Some(t)) => Factor::Tucker { t, a, b },
            _ => return Err(missing(&common, "lokr_w2")),
        };
        // A1111 reads the `_b` tensors' ranks whether or not the whole factor is used.
        for name in ["lokr_w1_b", "lokr_w2_b"] {
            if let Some(b) = weights.w.get(name) {
                common.dim = Some(size_at(b, 0, &common.sd_key, name)?);
            }
        }
        Ok(Self { common, w1, w2 })
    }
}

impl Factor {
    /// The factor's matrix (or 4-D kernel) in the layer's dtype and device.
    fn rebuild(&self, orig_weight: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Factor::Whole(w) => like_weight(w, orig_weight)?,
            Factor::Pair { a, b } => {
                like_weight(a, orig_weight)?.f_matmul(&like_weight(b, orig_weight)?)?
            }
            Factor::Tucker { t, a, b } => make_weight_cp(
                &like_weight(t, orig_weight)?,
                &like_weight(a, orig_weight)?,
                &like_weight(b, orig_weight)?,
            )?,
        })
    }
}

impl NetworkModule for LokrModule {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        let key = self.common.sd_key.as_str();
        let w1 = self.w1.rebuild(orig_weight)?;
        let w2 = self.w2.rebuild(orig_weight)?;
        let mut output_shape = vec![
            size_at(&w1, 0, key, "lokr_w1")? * size_at(&w2, 0, key, "lokr_w2")?,
            size_at(&w1, 1, key, "lokr_w1")? * size_at(&w2, 1, key, "lokr_w2")?,
        ];
        // A convolution's change takes the layer's shape, the kernel coming from `w2`.
        if orig_weight.dim() == 4 {
            output_shape = orig_weight.size();
        }
        let updown = make_kron(&output_shape, &w1, &w2)?;
        finalize_updown(
            &self.common,
            updown,
            orig_weight,
            &output_shape,
            None,
            multipliers,
        )
    }
}

/// The error for a factor that is neither whole nor a complete pair.
fn missing(common: &ModuleCommon, name: &str) -> NetworkError {
    bad_module(
        &common.sd_key,
        format!("LoKr needs `{name}` or both `{name}_a` and `{name}_b`"),
    )
}

/// A1111's `make_kron`: `w1 ⊗ w2` reshaped to `shape`; against a 4-D `w2` the 2-D `w1` gains
/// two unit axes so the kernel comes from `w2` alone.
fn make_kron(shape: &[i64], w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
    let w1 = if w2.dim() == 4 {
        w1.f_unsqueeze(2)?.f_unsqueeze(2)?
    } else {
        w1.shallow_clone()
    };
    Ok(w1.f_kron(&w2.f_contiguous()?)?.f_reshape(shape)?)
}
