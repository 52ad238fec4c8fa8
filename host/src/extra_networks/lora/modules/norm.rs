//! Norm-layer changes (A1111's `network_norm.py`): the file stores the weight and bias changes
//! of a LayerNorm or GroupNorm (`w_norm`, `b_norm`) directly.

use tch::Tensor;

use super::helpers::like_weight;
use super::{
    finalize_updown, ModuleCommon, ModuleWeights, Multipliers, NetworkModule, Result, Updown,
};

/// A norm module when `weights` has both `w_norm` and `b_norm`.
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    let w_norm = weights.w.get("w_norm")?;
    let b_norm = weights.w.get("b_norm")?;
    let module = NormModule {
        common: ModuleCommon::new(weights),
        w_norm: w_norm.shallow_clone(),
        b_norm: b_norm.shallow_clone(),
    };
    Some(Ok(Box::new(module)))
}

/// One norm layer's weight and bias changes (A1111's `NetworkModuleNorm`).
pub struct NormModule {
    common: ModuleCommon,
    w_norm: Tensor,
    b_norm: Tensor,
}

impl NetworkModule for NormModule {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        // No rank: alpha does not scale these, only a stored `scale` does.
        let output_shape = self.w_norm.size();
        let updown = like_weight(&self.w_norm, orig_weight)?;
        let ex_bias = like_weight(&self.b_norm, orig_weight)?;
        finalize_updown(
            &self.common,
            updown,
            orig_weight,
            &output_shape,
            Some(ex_bias),
            multipliers,
        )
    }
}
