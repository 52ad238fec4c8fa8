//! A1111's hypernetworks as networks (`modules/hypernetworks/hypernetwork.py`): a small MLP per
//! context width that rewrites what the UNet's attention layers compute keys and values from,
//! and the slot through which the UNet sees the set a job runs with.
//!
//! A [`HypernetworkModule`] is A1111's `HypernetworkModule`: a `torch.nn.Sequential` of
//! `Linear`, activation, `LayerNorm` and `Dropout` layers, whose forward is
//! `x + seq(x) · multiplier`. Every layer, the parameterless ones included, takes a Sequential
//! index, and the weights are stored under those indices (`linear.{index}.weight`), so
//! [`HypernetworkModule::new`] walks the layers in A1111's order to find each weight's key.
//! Reading the file is `extra_networks::hypernetwork`'s; this module only builds and runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tch::{Kind, Tensor};

use crate::weights::{LoadError, VarBuilder};

/// `torch.nn.LayerNorm`'s default epsilon, which A1111's hypernetwork layer norms keep.
const LAYER_NORM_EPS: f64 = 1e-5;

/// `torch.nn.RReLU`'s slope at inference: the mean of its default bounds 1/8 and 1/3.
const RRELU_EVAL_SLOPE: f64 = (1.0 / 8.0 + 1.0 / 3.0) / 2.0;

/// The activation names A1111 accepts (`HypernetworkModule.activation_dict`: its own seven,
/// then every class of `torch.nn.modules.activation` by lower-cased name), for messages.
pub const ACTIVATION_NAMES: &[&str] = &[
    "linear",
    "relu",
    "leakyrelu",
    "elu",
    "swish",
    "tanh",
    "sigmoid",
    "celu",
    "gelu",
    "glu",
    "hardshrink",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "logsigmoid",
    "logsoftmax",
    "mish",
    "multiheadattention",
    "prelu",
    "relu6",
    "rrelu",
    "selu",
    "silu",
    "softmax",
    "softmax2d",
    "softmin",
    "softplus",
    "softshrink",
    "softsign",
    "tanhshrink",
    "threshold",
];

/// Why a hypernetwork module could not be built from its structure and weights.
#[derive(Debug, thiserror::Error)]
pub enum HypernetworkBuildError {
    /// A weight is missing or has the wrong shape.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// `activation_func` is not one of A1111's names.
    #[error("unsupported activation function `{0}` (A1111 knows: {names})", names = ACTIVATION_NAMES.join(", "))]
    UnknownActivation(String),
    /// An activation A1111 lists but cannot run in a hypernetwork.
    #[error("activation function `{name}` cannot be used in a hypernetwork: {reason}")]
    UnusableActivation {
        /// The name.
        name: String,
        /// Why (A1111 fails on it too).
        reason: &'static str,
    },
    /// `layer_structure` is empty or does not start and end with 1.
    #[error("layer structure {0:?} must start and end with 1")]
    LayerStructure(Vec<f64>),
    /// `dropout_structure` is too short or holds a probability of 1 or more.
    #[error("dropout structure {dropout:?} does not fit layer structure {layers:?}: {reason}")]
    DropoutStructure {
        /// The dropout structure.
        dropout: Vec<f64>,
        /// The layer structure.
        layers: Vec<f64>,
        /// What is wrong.
        reason: &'static str,
    },
}

/// How the modules of one hypernetwork are built: its file's metadata, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct HypernetworkStructure {
    /// Width factors of the MLP, first and last 1 (`layer_structure`, default `[1, 2, 1]`).
    pub layer_structure: Vec<f64>,
    /// `activation_func`: `None` or `"linear"` for none.
    pub activation: Option<String>,
    /// A `LayerNorm` after each linear layer (`is_layer_norm`).
    pub layer_norm: bool,
    /// Whether the last linear layer is followed by the activation too (`activate_output`).
    pub activate_output: bool,
    /// Dropout probability after each layer, index `i + 1` for linear layer `i`
    /// (`dropout_structure`); a dropout is a no-op here but takes its Sequential index.
    pub dropout_structure: Vec<f64>,
}

/// One of the activation layers A1111 can put between the linear layers, at inference.
#[derive(Debug)]
enum Activation {
    Relu,
    LeakyRelu,
    Elu,
    Hardswish,
    Tanh,
    Sigmoid,
    Celu,
    Gelu,
    Hardshrink,
    Hardsigmoid,
    Hardtanh,
    LogSigmoid,
    LogSoftmax,
    Mish,
    /// `PReLU` has a learned slope, stored under its Sequential index.
    Prelu(Tensor),
    Relu6,
    Rrelu,
    Selu,
    Silu,
    Softmax,
    Softmax2d,
    Softmin,
    Softplus,
    Softshrink,
    Softsign,
    Tanhshrink,
}

impl Activation {
    /// The layer A1111 builds for `name` (its `activation_dict`), its weights (PReLU only)
    /// under `vb`.
    fn named(name: &str, vb: &VarBuilder) -> Result<Self, HypernetworkBuildError> {
        let unusable = |reason| HypernetworkBuildError::UnusableActivation {
            name: name.to_string(),
            reason,
        };
        Ok(match name {
            "relu" => Self::Relu,
            "leakyrelu" => Self::LeakyRelu,
            "elu" => Self::Elu,
            // A1111 maps its "swish" to torch's Hardswish, not to SiLU.
            "swish" | "hardswish" => Self::Hardswish,
            "tanh" => Self::Tanh,
            "sigmoid" => Self::Sigmoid,
            "celu" => Self::Celu,
            "gelu" => Self::Gelu,
            "hardshrink" => Self::Hardshrink,
            "hardsigmoid" => Self::Hardsigmoid,
            "hardtanh" => Self::Hardtanh,
            "logsigmoid" => Self::LogSigmoid,
            "logsoftmax" => Self::LogSoftmax,
            "mish" => Self::Mish,
            "prelu" => Self::Prelu(vb.get("weight", &[1])?),
            "relu6" => Self::Relu6,
            "rrelu" => Self::Rrelu,
            "selu" => Self::Selu,
            "silu" => Self::Silu,
            "softmax" => Self::Softmax,
            "softmax2d" => Self::Softmax2d,
            "softmin" => Self::Softmin,
            "softplus" => Self::Softplus,
            "softshrink" => Self::Softshrink,
            "softsign" => Self::Softsign,
            "tanhshrink" => Self::Tanhshrink,
            "glu" => {
                return Err(unusable(
                    "GLU halves the width, so the next layer cannot take its output",
                ))
            }
            "threshold" | "multiheadattention" => {
                return Err(unusable("torch cannot build it without arguments"))
            }
            other => return Err(HypernetworkBuildError::UnknownActivation(other.to_string())),
        })
    }

    fn shallow_clone(&self) -> Self {
        match self {
            Self::Prelu(weight) => Self::Prelu(weight.shallow_clone()),
            // Every other variant is a unit variant.
            Self::Relu => Self::Relu,
            Self::LeakyRelu => Self::LeakyRelu,
            Self::Elu => Self::Elu,
            Self::Hardswish => Self::Hardswish,
            Self::Tanh => Self::Tanh,
            Self::Sigmoid => Self::Sigmoid,
            Self::Celu => Self::Celu,
            Self::Gelu => Self::Gelu,
            Self::Hardshrink => Self::Hardshrink,
            Self::Hardsigmoid => Self::Hardsigmoid,
            Self::Hardtanh => Self::Hardtanh,
            Self::LogSigmoid => Self::LogSigmoid,
            Self::LogSoftmax => Self::LogSoftmax,
            Self::Mish => Self::Mish,
            Self::Relu6 => Self::Relu6,
            Self::Rrelu => Self::Rrelu,
            Self::Selu => Self::Selu,
            Self::Silu => Self::Silu,
            Self::Softmax => Self::Softmax,
            Self::Softmax2d => Self::Softmax2d,
            Self::Softmin => Self::Softmin,
            Self::Softplus => Self::Softplus,
            Self::Softshrink => Self::Softshrink,
            Self::Softsign => Self::Softsign,
            Self::Tanhshrink => Self::Tanhshrink,
        }
    }

    /// The layer in eval mode, with torch's default arguments as A1111 builds it (`Module()`).
    fn forward(&self, x: &Tensor) -> Tensor {
        // Softmax, Softmin and LogSoftmax are built with `dim=None`, for which torch picks
        // dimension 0 of a 3-D input (`_get_softmax_dim`): the batch, not the channels. So,
        // as in A1111, what they compute depends on which rows share a UNet call.
        let implicit_dim = match x.dim() {
            0 | 1 | 3 => 0,
            _ => 1,
        };
        match self {
            Self::Relu => x.relu(),
            Self::LeakyRelu => x.leaky_relu(),
            Self::Elu => x.elu(),
            Self::Hardswish => x.hardswish(),
            Self::Tanh => x.tanh(),
            Self::Sigmoid => x.sigmoid(),
            Self::Celu => x.celu(),
            Self::Gelu => x.gelu("none"),
            Self::Hardshrink => x.hardshrink(),
            Self::Hardsigmoid => x.hardsigmoid(),
            Self::Hardtanh => x.hardtanh(),
            Self::LogSigmoid => x.log_sigmoid(),
            Self::LogSoftmax => x.log_softmax(implicit_dim, None::<Kind>),
            Self::Mish => x.mish(),
            Self::Prelu(weight) => x.prelu(weight),
            Self::Relu6 => x.relu6(),
            // At inference RReLU is a leaky ReLU whose slope is the middle of its range.
            Self::Rrelu => x.clamp_min(0.0) + x.clamp_max(0.0) * RRELU_EVAL_SLOPE,
            Self::Selu => x.selu(),
            Self::Silu => x.silu(),
            Self::Softmax => x.softmax(implicit_dim, None::<Kind>),
            // Softmax2d normalises over dimension -3, the batch of a 3-D input.
            Self::Softmax2d => x.softmax(-3, None::<Kind>),
            Self::Softmin => (-x).softmax(implicit_dim, None::<Kind>),
            Self::Softplus => x.softplus(),
            Self::Softshrink => x.softshrink(),
            Self::Softsign => x / (x.abs() + 1.0),
            Self::Tanhshrink => x - x.tanh(),
        }
    }
}

/// One element of a hypernetwork module's Sequential.
#[derive(Debug)]
enum Element {
    Linear {
        weight: Tensor,
        bias: Tensor,
    },
    Activation(Activation),
    LayerNorm {
        weight: Tensor,
        bias: Tensor,
    },
    /// Dropout does nothing at inference; it is kept to document the index it takes.
    Dropout,
}

impl Element {
    fn shallow_clone(&self) -> Self {
        match self {
            Self::Linear { weight, bias } => Self::Linear {
                weight: weight.shallow_clone(),
                bias: bias.shallow_clone(),
            },
            Self::Activation(a) => Self::Activation(a.shallow_clone()),
            Self::LayerNorm { weight, bias } => Self::LayerNorm {
                weight: weight.shallow_clone(),
                bias: bias.shallow_clone(),
            },
            Self::Dropout => Self::Dropout,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Linear { weight, bias } => x.linear(weight, Some(bias)),
            Self::Activation(a) => a.forward(x),
            Self::LayerNorm { weight, bias } => x.layer_norm(
                [weight.size()[0]],
                Some(weight),
                Some(bias),
                LAYER_NORM_EPS,
                true,
            ),
            Self::Dropout => x.shallow_clone(),
        }
    }
}

/// Python's `int(dim * factor)`: the width of a layer, truncated toward zero.
fn layer_width(dim: i64, factor: f64) -> i64 {
    (dim as f64 * factor) as i64
}

/// A1111's `HypernetworkModule`: the MLP for one context width and one of key or value.
#[derive(Debug)]
pub struct HypernetworkModule {
    layers: Vec<Element>,
}

impl HypernetworkModule {
    /// Builds the module for context width `dim` with the weights under `vb` (its
    /// `linear.{index}` keys), laying out the Sequential as A1111's `__init__` does: for each
    /// linear layer `i`, the `Linear`, then the activation (not after the last layer unless
    /// `activate_output`), then a `LayerNorm`, then a `Dropout` when `dropout_structure[i+1]`
    /// is positive.
    pub fn new(
        vb: &VarBuilder,
        dim: i64,
        structure: &HypernetworkStructure,
    ) -> Result<Self, HypernetworkBuildError> {
        let ls = &structure.layer_structure;
        if ls.first() != Some(&1.0) || ls.last() != Some(&1.0) {
            return Err(HypernetworkBuildError::LayerStructure(ls.clone()));
        }
        let dropout_error = |reason| HypernetworkBuildError::DropoutStructure {
            dropout: structure.dropout_structure.clone(),
            layers: ls.clone(),
            reason,
        };
        let linear_layers = ls.len() - 1;
        if linear_layers > 0 && structure.dropout_structure.len() < ls.len() {
            return Err(dropout_error("it needs one entry per layer"));
        }
        let activation = structure
            .activation
            .as_deref()
            .filter(|name| *name != "linear");
        let seq = vb.pp("linear");
        let mut layers = Vec::new();
        for i in 0..linear_layers {
            let (width_in, width_out) = (layer_width(dim, ls[i]), layer_width(dim, ls[i + 1]));
            let at = seq.pp(layers.len());
            layers.push(Element::Linear {
                weight: at.get("weight", &[width_out, width_in])?,
                bias: at.get("bias", &[width_out])?,
            });
            let last = i + 1 == linear_layers;
            if let Some(name) = activation.filter(|_| !last || structure.activate_output) {
                let at = seq.pp(layers.len());
                layers.push(Element::Activation(Activation::named(name, &at)?));
            }
            if structure.layer_norm {
                let at = seq.pp(layers.len());
                layers.push(Element::LayerNorm {
                    weight: at.get("weight", &[width_out])?,
                    bias: at.get("bias", &[width_out])?,
                });
            }
            let p = structure.dropout_structure[i + 1];
            if p > 0.0 {
                if p >= 1.0 {
                    return Err(dropout_error("a probability must be below 1"));
                }
                layers.push(Element::Dropout);
            }
        }
        Ok(Self { layers })
    }

    /// `x + seq(x) · multiplier`.
    pub fn forward(&self, x: &Tensor, multiplier: f64) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.layers {
            h = layer.forward(&h);
        }
        x + h * multiplier
    }

    /// The Sequential's length: the number of indices its layers take.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the Sequential is empty (a `[1]` layer structure: the forward is `x·(1+m)`).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    fn shallow_clone(&self) -> Self {
        Self {
            layers: self.layers.iter().map(Element::shallow_clone).collect(),
        }
    }
}

/// A loaded hypernetwork: a (key, value) pair of modules per context width.
#[derive(Debug, Default)]
pub struct Hypernetwork {
    modules: BTreeMap<i64, (HypernetworkModule, HypernetworkModule)>,
}

impl Hypernetwork {
    /// A hypernetwork from its modules by context width.
    pub fn new(modules: BTreeMap<i64, (HypernetworkModule, HypernetworkModule)>) -> Self {
        Self { modules }
    }

    /// The context widths it has modules for.
    pub fn widths(&self) -> Vec<i64> {
        self.modules.keys().copied().collect()
    }

    /// The (key, value) modules for context width `width`.
    pub fn modules(&self, width: i64) -> Option<&(HypernetworkModule, HypernetworkModule)> {
        self.modules.get(&width)
    }

    /// Another handle on the same weights (no copy), for the set a job runs with.
    pub fn shallow_clone(&self) -> Self {
        Self {
            modules: self
                .modules
                .iter()
                .map(|(&w, (k, v))| (w, (k.shallow_clone(), v.shallow_clone())))
                .collect(),
        }
    }
}

/// A hypernetwork of a job with its strength (the tag's multiplier).
#[derive(Debug)]
pub struct ActiveHypernetwork {
    /// The network.
    pub network: Hypernetwork,
    /// `<hypernet:NAME:multiplier>`'s multiplier.
    pub multiplier: f64,
}

/// The hypernetworks the UNet runs with, shared by the UNet and every attention layer it
/// built (A1111's `shared.loaded_hypernetworks`). Set for a job, cleared after it; when empty
/// an attention layer finds that out from a flag, without taking the lock (every attention
/// call asks, and most jobs run without hypernetworks).
#[derive(Clone, Debug, Default)]
pub struct HypernetworkSlot(Arc<SlotState>);

/// The set and whether it has any network: the flag is written under the lock, with the set.
#[derive(Debug, Default)]
struct SlotState {
    set: Mutex<Vec<ActiveHypernetwork>>,
    any: AtomicBool,
}

impl HypernetworkSlot {
    fn lock(&self) -> MutexGuard<'_, Vec<ActiveHypernetwork>> {
        // A panic while the set was held leaves a set that is still whole.
        self.0.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `active` the set, in the order they are chained.
    pub fn set(&self, active: Vec<ActiveHypernetwork>) {
        let mut set = self.lock();
        *set = active;
        self.0.any.store(!set.is_empty(), Ordering::Release);
    }

    /// Empties the set.
    pub fn clear(&self) {
        let mut set = self.lock();
        set.clear();
        self.0.any.store(false, Ordering::Release);
    }

    /// How many hypernetworks are set.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        !self.0.any.load(Ordering::Acquire)
    }

    /// What an attention layer computes keys and values from (A1111's `apply_hypernetworks`):
    /// `context` through each set hypernetwork's key and value modules for its width, in
    /// order; `None` when no set hypernetwork has that width.
    pub fn contexts(&self, context: &Tensor) -> Option<(Tensor, Tensor)> {
        if self.is_empty() {
            return None;
        }
        let active = self.lock();
        if active.is_empty() {
            return None;
        }
        let width = *context.size().last()?;
        let mut chained: Option<(Tensor, Tensor)> = None;
        for hypernetwork in active.iter() {
            let Some((key, value)) = hypernetwork.network.modules(width) else {
                continue;
            };
            let m = hypernetwork.multiplier;
            chained = Some(match &chained {
                Some((k, v)) => (key.forward(k, m), value.forward(v, m)),
                None => (key.forward(context, m), value.forward(context, m)),
            });
        }
        chained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::TensorSource;
    use std::collections::HashMap;
    use tch::Device;

    /// Weights by key, made on demand with the shape asked for (one value per key).
    struct Made(std::cell::RefCell<HashMap<String, Vec<i64>>>);

    impl TensorSource for Made {
        fn stored_shape(&self, _: &str) -> Option<Vec<i64>> {
            None
        }
        fn tensor(
            &self,
            key: &str,
            shape: &[i64],
            kind: Kind,
            device: Device,
        ) -> crate::weights::Result<Tensor> {
            self.0.borrow_mut().insert(key.to_string(), shape.to_vec());
            let n = self.0.borrow().len() as f64;
            Ok(Tensor::ones(shape, (kind, device)) * (0.05 * n))
        }
    }

    fn build(
        structure: &HypernetworkStructure,
    ) -> (
        Result<HypernetworkModule, HypernetworkBuildError>,
        Vec<String>,
    ) {
        let source = Made(Default::default());
        let vb = VarBuilder::new(&source, Kind::Float, Device::Cpu);
        let module = HypernetworkModule::new(&vb, 8, structure);
        let mut keys: Vec<String> = source.0.borrow().keys().cloned().collect();
        keys.sort();
        (module, keys)
    }

    fn structure(activation: Option<&str>) -> HypernetworkStructure {
        HypernetworkStructure {
            layer_structure: vec![1.0, 1.5, 1.0],
            activation: activation.map(str::to_string),
            layer_norm: true,
            activate_output: false,
            dropout_structure: vec![0.0, 0.3, 0.0],
        }
    }

    #[test]
    fn every_layer_takes_a_sequential_index() {
        // Linear, PReLU, LayerNorm, Dropout, Linear, LayerNorm (the last layer not activated).
        let (module, keys) = build(&structure(Some("prelu")));
        assert_eq!(module.unwrap().len(), 6);
        let expected = [
            "linear.0.bias",
            "linear.0.weight",
            "linear.1.weight",
            "linear.2.bias",
            "linear.2.weight",
            "linear.4.bias",
            "linear.4.weight",
            "linear.5.bias",
            "linear.5.weight",
        ];
        assert_eq!(keys, expected);
        // "linear" (and no activation) adds nothing: Linear, LayerNorm, Dropout, Linear, LayerNorm.
        for none in [None, Some("linear")] {
            let (module, keys) = build(&structure(none));
            assert_eq!(module.unwrap().len(), 5);
            assert!(keys.contains(&"linear.3.weight".to_string()), "{keys:?}");
        }
        // 8 · 1.5 = 12 wide in the middle.
        let (_, keys) = build(&HypernetworkStructure {
            layer_norm: false,
            ..structure(None)
        });
        assert_eq!(
            keys,
            [
                "linear.0.bias",
                "linear.0.weight",
                "linear.2.bias",
                "linear.2.weight"
            ]
        );
    }

    #[test]
    fn every_name_a1111_lists_builds_or_says_why_not() {
        for name in ACTIVATION_NAMES {
            let (module, _) = build(&HypernetworkStructure {
                activate_output: true,
                ..structure(Some(name))
            });
            match (*name, module) {
                ("glu" | "threshold" | "multiheadattention", Err(e)) => {
                    assert!(
                        matches!(e, HypernetworkBuildError::UnusableActivation { .. }),
                        "{name}: {e}"
                    )
                }
                (_, Ok(module)) => {
                    let x = Tensor::randn([2, 3, 8], (Kind::Float, Device::Cpu));
                    assert_eq!(module.forward(&x, 0.5).size(), [2, 3, 8], "{name}");
                }
                (_, Err(e)) => panic!("{name}: {e}"),
            }
        }
        let (module, _) = build(&structure(Some("Swish")));
        assert!(
            matches!(module, Err(HypernetworkBuildError::UnknownActivation(n)) if n == "Swish")
        );
        // An unknown name only matters where an activation goes, as in A1111.
        let only_last = HypernetworkStructure {
            layer_structure: vec![1.0, 1.0],
            dropout_structure: vec![0.0; 2],
            ..structure(Some("banana"))
        };
        assert!(build(&only_last).0.is_ok());
    }

    #[test]
    fn structures_a1111_refuses_are_refused() {
        let bad =
            |s: HypernetworkStructure| build(&s).0.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad(HypernetworkStructure {
            layer_structure: vec![2.0, 1.0],
            ..structure(None)
        })
        .contains("start and end with 1"));
        assert!(bad(HypernetworkStructure {
            layer_structure: vec![],
            ..structure(None)
        })
        .contains("start and end with 1"));
        assert!(bad(HypernetworkStructure {
            dropout_structure: vec![0.0, 0.3],
            ..structure(None)
        })
        .contains("one entry per layer"));
        assert!(bad(HypernetworkStructure {
            dropout_structure: vec![0.0, 1.0, 0.0],
            ..structure(None)
        })
        .contains("below 1"));
        // [1]: an empty Sequential, whose forward is x·(1 + m).
        let (module, _) = build(&HypernetworkStructure {
            layer_structure: vec![1.0],
            ..structure(None)
        });
        let module = module.unwrap();
        assert!(module.is_empty());
        let x = Tensor::from_slice(&[1.0f32, -2.0]);
        assert_eq!(module.forward(&x, 0.5), Tensor::from_slice(&[1.5f32, -3.0]));
    }

    #[test]
    fn the_slot_chains_in_order_and_applies_only_its_widths() {
        let module = |structure: &HypernetworkStructure| build(structure).0.unwrap();
        let network = |activation: &str| {
            let s = HypernetworkStructure {
                activate_output: true,
                ..structure(Some(activation))
            };
            Hypernetwork::new(BTreeMap::from([(8, (module(&s), module(&s)))]))
        };
        let slot = HypernetworkSlot::default();
        let x = Tensor::randn([1, 4, 8], (Kind::Float, Device::Cpu));
        assert!(slot.contexts(&x).is_none());
        let (a, b) = (network("tanh"), network("relu"));
        let expected = b
            .modules(8)
            .unwrap()
            .0
            .forward(&a.modules(8).unwrap().0.forward(&x, 0.5), 2.0);
        slot.set(vec![
            ActiveHypernetwork {
                network: a,
                multiplier: 0.5,
            },
            ActiveHypernetwork {
                network: b,
                multiplier: 2.0,
            },
        ]);
        assert!(!slot.is_empty());
        let (k, _) = slot.contexts(&x).unwrap();
        assert_eq!(k, expected);
        // No module for width 16: unchanged.
        assert!(slot
            .contexts(&Tensor::randn([1, 4, 16], (Kind::Float, Device::Cpu)))
            .is_none());
        slot.clear();
        assert!(slot.is_empty());
        assert!(slot.contexts(&x).is_none());
        // An empty set is the same as a cleared one: the attention layers skip the lock.
        slot.set(Vec::new());
        assert!(slot.is_empty() && slot.contexts(&x).is_none());
    }
}
