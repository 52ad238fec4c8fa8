//! GLoRA (A1111's `network_glora.py`): a low-rank change plus a low-rank transform of the
//! layer's own weight, `b2 @ b1 + (W @ a2) @ a1`.

use tch::Tensor;

use super::helpers::{like_weight, size_at};
use super::{
    finalize_updown, ModuleCommon, ModuleWeights, Multipliers, NetworkModule, Result, Updown,
};

/// The tensors a GLoRA module must have (`alpha` included, though it scales nothing: the type
/// sets no rank).
const REQUIRED: [&str; 5] = ["a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"];

/// A GLoRA module when `weights` has `a1/a2/b1/b2.weight` and `alpha`.
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    if !REQUIRED.iter().all(|k| weights.w.contains_key(*k)) {
        return None;
    }
    let take = |k: &str| weights.w[k].shallow_clone();
    let module = GloraModule {
        common: ModuleCommon::new(weights),
        w1a: take("a1.weight"),
        w1b: take("b1.weight"),
        w2a: take("a2.weight"),
        w2b: take("b2.weight"),
    };
    Some(Ok(Box::new(module)))
}

/// One layer's GLoRA factors (A1111's `NetworkModuleGLora`).
pub struct GloraModule {
    common: ModuleCommon,
    w1a: Tensor,
    w1b: Tensor,
    w2a: Tensor,
    w2b: Tensor,
}

impl NetworkModule for GloraModule {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        let key = self.common.sd_key.as_str();
        let w1a = like_weight(&self.w1a, orig_weight)?;
        let w1b = like_weight(&self.w1b, orig_weight)?;
        let w2a = like_weight(&self.w2a, orig_weight)?;
        let w2b = like_weight(&self.w2b, orig_weight)?;
        // A1111's shape is `[a1 rows, b1 columns]`; it only matters when a stored bias is
        // added, the change otherwise taking the layer's shape by element count.
        let output_shape = [
            size_at(&w1a, 0, key, "a1.weight")?,
            size_at(&w1b, 1, key, "b1.weight")?,
        ];
        let updown = w2b
            .f_matmul(&w1b)?
            .f_add(&orig_weight.f_matmul(&w2a)?.f_matmul(&w1a)?)?;
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
