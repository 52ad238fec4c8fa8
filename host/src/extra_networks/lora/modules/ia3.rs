//! (IA)³ (A1111's `network_ia3.py`): the weight change is the layer's own weight scaled per
//! output row, or per input column when the file says `on_input`.

use tch::Tensor;

use super::helpers::{item, like_weight, required, size_at};
use super::{
    finalize_updown, ModuleCommon, ModuleWeights, Multipliers, NetworkModule, Result, Updown,
};

/// An (IA)³ module when `weights` has `weight`; its `on_input` flag is then required (A1111
/// fails to load the network without it).
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    let w = weights.w.get("weight")?;
    let common = ModuleCommon::new(weights);
    let on_input = required(&weights.w, &common.sd_key, "on_input")
        .and_then(|t| item(t, &common.sd_key, "on_input"));
    Some(on_input.map(|on_input| {
        Box::new(Ia3Module {
            common,
            w: w.shallow_clone(),
            // Python's truth value of the stored number.
            on_input: on_input != 0.0,
        }) as Box<dyn NetworkModule>
    }))
}

/// One layer's (IA)³ scales (A1111's `NetworkModuleIa3`).
pub struct Ia3Module {
    common: ModuleCommon,
    w: Tensor,
    on_input: bool,
}

impl NetworkModule for Ia3Module {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        let key = self.common.sd_key.as_str();
        let mut w = like_weight(&self.w, orig_weight)?;
        let mut output_shape = vec![
            size_at(&w, 0, key, "weight")?,
            size_at(orig_weight, 1, key, "the layer's weight")?,
        ];
        if self.on_input {
            // Broadcast along the last axis: one scale per input column.
            output_shape.reverse();
        } else {
            w = w.f_reshape([-1, 1])?;
        }
        let updown = orig_weight.f_mul(&w)?;
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
