//! The plain LoRA module (A1111's `network_lora.py`): `ΔW = up · down`, optionally through a
//! CP (Tucker) core `mid`, for linear and convolution layers; `lora_A`/`lora_B` (PEFT) are
//! read as down/up, and `dyn` keeps only the first ranks.

use tch::Tensor;

use super::helpers::{like_weight, rebuild_conventional, rebuild_cp_decomposition};
use super::{
    finalize_updown, LayerKind, ModuleCommon, ModuleWeights, Multipliers, NetworkError,
    NetworkModule, Result, Updown,
};

/// A LoRA layer: up [out, r(, 1, 1)], down [r, in(, kh, kw)], optional mid [r, r, kh, kw].
pub struct LoraModule {
    common: ModuleCommon,
    up: Tensor,
    down: Tensor,
    mid: Option<Tensor>,
}

/// A1111's `ModuleTypeLora.create_module`: a LoRA module when the layer has `lora_up`/
/// `lora_down` (or PEFT's `lora_B`/`lora_A`) weights.
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    let pair = |up: &str, down: &str| Some((weights.w.get(up)?, weights.w.get(down)?));
    let (up, down) = pair("lora_up.weight", "lora_down.weight")
        .or_else(|| pair("lora_B.weight", "lora_A.weight"))?;
    Some(LoraModule::new(weights, up, down).map(|m| Box::new(m) as Box<dyn NetworkModule>))
}

impl LoraModule {
    /// Shapes the stored tensors the way A1111's `NetworkModuleLora.create_module` builds its
    /// `nn.Linear`/`nn.Conv2d` helpers, refusing layers a LoRA cannot patch (A1111 raises and
    /// drops the whole file).
    fn new(weights: &ModuleWeights, up: &Tensor, down: &Tensor) -> Result<Self> {
        let unsupported = |what: &str| NetworkError::BadModule {
            key: weights.network_key.clone(),
            reason: format!("a LoRA layer matched a {what} layer, which LoRA cannot patch"),
        };
        let bad = |reason: String| NetworkError::BadModule {
            key: weights.network_key.clone(),
            reason,
        };
        // Every tensor is reshaped around its first dimension (the rank, or the output size):
        // a scalar has none and an empty tensor leaves the other dimension unknown, both of
        // which libtorch answers with a panic, so they are refused here, naming the tensor.
        let mid = weights.w.get("lora_mid.weight");
        for (name, t) in [("up", Some(up)), ("down", Some(down)), ("mid", mid)] {
            let Some(t) = t else { continue };
            if t.dim() == 0 || t.numel() == 0 {
                return Err(bad(format!(
                    "lora_{name} has shape {:?}; it must be a non-empty matrix or kernel",
                    t.size()
                )));
            }
        }
        let flat = |t: &Tensor| t.f_reshape([t.size()[0], -1]);
        let (up, down, mid) = match weights.layer {
            LayerKind::Linear => (flat(up)?, flat(down)?, mid.map(flat).transpose()?),
            LayerKind::Conv2d { .. } => {
                let down = match down.dim() {
                    2 => down.f_reshape([down.size()[0], -1, 1, 1])?,
                    4 => down.shallow_clone(),
                    n => return Err(bad(format!("lora_down has {n} dimensions"))),
                };
                // The up projection is a 1×1 convolution: [out, r, 1, 1] whatever was stored.
                let up = up.f_reshape([up.size()[0], -1, 1, 1])?;
                (up, down, mid.map(Tensor::shallow_clone))
            }
            LayerKind::LayerNorm => return Err(unsupported("LayerNorm")),
            LayerKind::GroupNorm => return Err(unsupported("GroupNorm")),
        };
        if mid.as_ref().is_some_and(|m| m.dim() != 4) {
            return Err(bad(
                "lora_mid (CP decomposition) needs a convolution layer".into()
            ));
        }
        let mut common = ModuleCommon::new(weights);
        common.dim = Some(down.size()[0]);
        Ok(Self {
            common,
            up,
            down,
            mid,
        })
    }
}

impl NetworkModule for LoraModule {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    /// A1111's `NetworkModuleLora.calc_updown` with `lyco_helpers.rebuild_conventional` and
    /// `rebuild_cp_decomposition`, in the layer's dtype on its device.
    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        let on_layer = |t: &Tensor| like_weight(t, orig_weight);
        let (up, down) = (on_layer(&self.up)?, on_layer(&self.down)?);
        let mut output_shape = vec![up.size()[0], down.size()[1]];
        let updown = match &self.mid {
            Some(mid) => {
                let mid = on_layer(mid)?;
                output_shape.extend_from_slice(&mid.size()[2..]);
                rebuild_cp_decomposition(&up, &down, &mid)?
            }
            None => {
                if down.dim() == 4 {
                    output_shape.extend_from_slice(&down.size()[2..]);
                }
                // `dyn` keeps the first ranks; the alpha scale still uses the full rank.
                rebuild_conventional(&up, &down, &output_shape, multipliers.dyn_dim)?
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tch::{Device, Kind};

    fn weights(layer: LayerKind, shape: &[i64], w: Vec<(&str, Tensor)>) -> ModuleWeights {
        ModuleWeights {
            network_key: "lora_unet_x".into(),
            sd_key: "diffusion_model_x".into(),
            w: w.into_iter()
                .map(|(k, t)| (k.to_string(), t))
                .collect::<BTreeMap<_, _>>(),
            layer,
            weight_shape: shape.to_vec(),
        }
    }

    fn plain() -> Multipliers {
        Multipliers {
            te: 1.0,
            unet: 0.5,
            dyn_dim: None,
        }
    }

    #[test]
    fn linear_updown_is_up_times_down_scaled_by_alpha_over_rank_and_multiplier() {
        let (up, down) = crate::rng::with_global_seed(1, || {
            let up = Tensor::randn([6, 2], (Kind::Float, Device::Cpu));
            (up, Tensor::randn([2, 5], (Kind::Float, Device::Cpu)))
        });
        let w = weights(
            LayerKind::Linear,
            &[6, 5],
            vec![
                ("lora_up.weight", up.shallow_clone()),
                ("lora_down.weight", down.shallow_clone()),
                ("alpha", Tensor::from(3.0f32)),
            ],
        );
        let module = create(&w).unwrap().unwrap();
        let orig = Tensor::zeros([6, 5], (Kind::Float, Device::Cpu));
        let got = module.calc_updown(&orig, &plain()).unwrap().updown;
        let expected = up.matmul(&down) * 1.5 * 0.5;
        assert!(got.allclose(&expected, 1e-6, 1e-6, false));
        // dyn keeps the first rank only.
        let dyn1 = Multipliers {
            dyn_dim: Some(1),
            ..plain()
        };
        let got = module.calc_updown(&orig, &dyn1).unwrap().updown;
        let expected = up.narrow(1, 0, 1).matmul(&down.narrow(0, 0, 1)) * 1.5 * 0.5;
        assert!(got.allclose(&expected, 1e-6, 1e-6, false));
    }

    #[test]
    fn conv_updown_has_the_kernel_of_down_and_peft_names_work() {
        let (up, down) = crate::rng::with_global_seed(2, || {
            let up = Tensor::randn([4, 3, 1, 1], (Kind::Float, Device::Cpu));
            (up, Tensor::randn([3, 2, 3, 3], (Kind::Float, Device::Cpu)))
        });
        let w = weights(
            LayerKind::Conv2d {
                stride: 1,
                padding: 1,
            },
            &[4, 2, 3, 3],
            vec![
                ("lora_B.weight", up.shallow_clone()),
                ("lora_A.weight", down.shallow_clone()),
            ],
        );
        let module = create(&w).unwrap().unwrap();
        let orig = Tensor::zeros([4, 2, 3, 3], (Kind::Float, Device::Cpu));
        let got = module.calc_updown(&orig, &plain()).unwrap().updown;
        assert_eq!(got.size(), [4, 2, 3, 3]);
        let expected = up
            .reshape([4, 3])
            .matmul(&down.reshape([3, 18]))
            .reshape([4, 2, 3, 3])
            * 0.5;
        assert!(got.allclose(&expected, 1e-6, 1e-6, false));
    }

    #[test]
    fn other_keys_are_not_lora_and_norm_layers_are_refused() {
        let t = || Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        assert!(create(&weights(
            LayerKind::Linear,
            &[2, 2],
            vec![("hada_w1_a", t())]
        ))
        .is_none());
        let norm = weights(
            LayerKind::LayerNorm,
            &[2],
            vec![("lora_up.weight", t()), ("lora_down.weight", t())],
        );
        assert!(matches!(
            create(&norm),
            Some(Err(NetworkError::BadModule { .. }))
        ));
    }
}
