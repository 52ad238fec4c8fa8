//! LoHa (A1111's `network_hada.py`): the weight change is the Hadamard (element-wise) product
//! of two low-rank products, `(w1a @ w1b) ⊙ (w2a @ w2b)`, each optionally joined through a
//! CP/Tucker core (`hada_t1`, `hada_t2`) for convolutions.

use tch::Tensor;

use super::helpers::{like_weight, make_weight_cp, rebuild_conventional, size_at};
use super::{
    finalize_updown, ModuleCommon, ModuleWeights, Multipliers, NetworkModule, Result, Updown,
};

/// The four factors a LoHa module must have.
const REQUIRED: [&str; 4] = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"];

/// A LoHa module when `weights` has all of `hada_w1_a/b` and `hada_w2_a/b`.
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    if !REQUIRED.iter().all(|k| weights.w.contains_key(*k)) {
        return None;
    }
    Some(LohaModule::new(weights).map(|m| Box::new(m) as Box<dyn NetworkModule>))
}

/// One layer's LoHa factors (A1111's `NetworkModuleHada`).
pub struct LohaModule {
    common: ModuleCommon,
    w1a: Tensor,
    w1b: Tensor,
    w2a: Tensor,
    w2b: Tensor,
    t1: Option<Tensor>,
    t2: Option<Tensor>,
}

impl LohaModule {
    /// Takes the factors; the rank for the alpha scale is `hada_w1_b`'s first dimension.
    fn new(weights: &ModuleWeights) -> Result<Self> {
        let mut common = ModuleCommon::new(weights);
        let take = |k: &str| weights.w[k].shallow_clone();
        let w1b = take("hada_w1_b");
        common.dim = Some(size_at(&w1b, 0, &common.sd_key, "hada_w1_b")?);
        Ok(Self {
            w1a: take("hada_w1_a"),
            w1b,
            w2a: take("hada_w2_a"),
            w2b: take("hada_w2_b"),
            t1: weights.w.get("hada_t1").map(Tensor::shallow_clone),
            t2: weights.w.get("hada_t2").map(Tensor::shallow_clone),
            common,
        })
    }
}

impl NetworkModule for LohaModule {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        let key = self.common.sd_key.as_str();
        let w1a = like_weight(&self.w1a, orig_weight)?;
        let w1b = like_weight(&self.w1b, orig_weight)?;
        let w2a = like_weight(&self.w2a, orig_weight)?;
        let w2b = like_weight(&self.w2b, orig_weight)?;
        let in_size = size_at(&w1b, 1, key, "hada_w1_b")?;

        let (output_shape, updown1) = match &self.t1 {
            // CP form: the factors are [r, out] and [r, in], the core carries the kernel.
            Some(t1) => {
                let t1 = like_weight(t1, orig_weight)?;
                let mut shape = vec![size_at(&w1a, 1, key, "hada_w1_a")?, in_size];
                shape.extend_from_slice(t1.size().get(2..).unwrap_or_default());
                (shape, make_weight_cp(&t1, &w1a, &w1b)?)
            }
            None => {
                let mut shape = vec![size_at(&w1a, 0, key, "hada_w1_a")?, in_size];
                if w1b.dim() == 4 {
                    shape.extend_from_slice(&w1b.size()[2..]);
                }
                let updown1 = rebuild_conventional(&w1a, &w1b, &shape, None)?;
                (shape, updown1)
            }
        };
        // The second factor follows the first's shape whichever form it has itself.
        let updown2 = match &self.t2 {
            Some(t2) => make_weight_cp(&like_weight(t2, orig_weight)?, &w2a, &w2b)?,
            None => rebuild_conventional(&w2a, &w2b, &output_shape, None)?,
        };
        let updown = updown1.f_mul(&updown2)?;
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
