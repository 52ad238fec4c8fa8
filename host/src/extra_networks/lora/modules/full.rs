//! Full diff (A1111's `network_full.py`): the file stores the weight change itself (`diff`)
//! and optionally a bias change (`diff_b`).

use tch::Tensor;

use super::helpers::like_weight;
use super::{
    finalize_updown, ModuleCommon, ModuleWeights, Multipliers, NetworkModule, Result, Updown,
};

/// A full-diff module when `weights` has `diff`.
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    let diff = weights.w.get("diff")?;
    let module = FullModule {
        common: ModuleCommon::new(weights),
        diff: diff.shallow_clone(),
        diff_b: weights.w.get("diff_b").map(Tensor::shallow_clone),
    };
    Some(Ok(Box::new(module)))
}

/// One layer's stored weight and bias changes (A1111's `NetworkModuleFull`).
pub struct FullModule {
    common: ModuleCommon,
    diff: Tensor,
    diff_b: Option<Tensor>,
}

impl NetworkModule for FullModule {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        // No rank: alpha does not scale a full diff, only a stored `scale` does.
        let output_shape = self.diff.size();
        let updown = like_weight(&self.diff, orig_weight)?;
        let ex_bias = self
            .diff_b
            .as_ref()
            .map(|b| like_weight(b, orig_weight))
            .transpose()?;
        finalize_updown(
            &self.common,
            updown,
            orig_weight,
            &output_shape,
            ex_bias,
            multipliers,
        )
    }
}
