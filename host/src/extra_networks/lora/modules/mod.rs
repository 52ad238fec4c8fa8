//! The module types of a LoRA/LyCORIS file (A1111's `network_*.py`): each turns the tensors
//! stored for one layer into that layer's weight change. [`finalize_updown`] is what every
//! type shares (A1111's `NetworkModule.finalize_updown`): bias, alpha scale, DoRA, multiplier.

pub mod full;
pub mod glora;
pub mod hada;
pub mod helpers;
pub mod ia3;
pub mod lokr;
pub mod lora;
pub mod norm;
pub mod oft;

use std::collections::BTreeMap;

use tch::Tensor;

/// Builds one module type from a layer's tensors: `None` when the tensors are not of that type.
pub type ModuleConstructor = fn(&ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>>;

/// The module types in A1111's order (`networks.py: module_types`: Lora, Hada, Ia3, Lokr,
/// Full, Norm, GLora, OFT); the first that recognises a layer's keys builds its module.
pub const MODULE_TYPES: &[ModuleConstructor] = &[
    lora::create,
    hada::create,
    ia3::create,
    lokr::create,
    full::create,
    norm::create,
    glora::create,
    oft::create,
];

/// A1111's `load_network` loop over `module_types`: the module for `weights`, or `None` when
/// no type accepts its keys (A1111 then refuses the whole file).
pub fn create_module(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    MODULE_TYPES.iter().find_map(|create| create(weights))
}

/// Why a network module could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The module's tensors do not fit the layer they are mapped to.
    #[error("`{key}`: {reason}")]
    BadModule { key: String, reason: String },
    /// libtorch refused an operation.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result type of the module math.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

// The layer kinds live with the layer table (`weights.rs`), which records them as networks are
// built; modules see them through this re-export.
pub use crate::weights::LayerKind;

/// The tensors stored for one layer of a network file (A1111's `NetworkWeights`).
pub struct ModuleWeights {
    /// The key as the file names it, without the tensor suffix (`lora_unet_down_blocks_0_…`).
    pub network_key: String,
    /// The checkpoint layer it maps to, A1111-style with `_` for `.`
    /// (`diffusion_model_input_blocks_1_1_proj_in`, `transformer_text_model_encoder_…`).
    pub sd_key: String,
    /// The tensors by suffix: `lora_up.weight`, `lora_down.weight`, `alpha`, `hada_w1_a`, …
    pub w: BTreeMap<String, Tensor>,
    /// The kind of layer it patches.
    pub layer: LayerKind,
    /// The shape of that layer's weight.
    pub weight_shape: Vec<i64>,
}

/// How strongly the network is applied (the `te`/`unet` numbers of a `<lora:…>` tag).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Multipliers {
    /// Text-encoder multiplier.
    pub te: f64,
    /// UNet multiplier.
    pub unet: f64,
    /// Rank limit (`dyn`), for the types that support it.
    pub dyn_dim: Option<i64>,
}

impl Multipliers {
    /// A1111's `NetworkModule.multiplier`: the text encoder's when `transformer` occurs in the
    /// first 20 characters of the layer key, else the UNet's.
    pub fn for_key(&self, sd_key: &str) -> f64 {
        let head: String = sd_key.chars().take(20).collect();
        if head.contains("transformer") {
            self.te
        } else {
            self.unet
        }
    }
}

/// A weight change ready to add: `W' = W + updown`, `b' = b + ex_bias`.
pub struct Updown {
    /// The weight delta, shaped as the layer's weight.
    pub updown: Tensor,
    /// The bias delta, when the module has one.
    pub ex_bias: Option<Tensor>,
}

/// One layer's module of a network file (A1111's `NetworkModule`).
pub trait NetworkModule: Send {
    /// The checkpoint layer it patches (see [`ModuleWeights::sd_key`]).
    fn sd_key(&self) -> &str;
    /// The weight change for `orig_weight` at `multipliers`: A1111's `calc_updown`, which ends
    /// in [`finalize_updown`].
    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown>;
}

/// What every module type keeps for [`finalize_updown`] (the fields of A1111's
/// `NetworkModule.__init__`).
pub struct ModuleCommon {
    /// The layer key.
    pub sd_key: String,
    /// The layer's weight shape.
    pub shape: Vec<i64>,
    /// A stored `bias` delta added to the weight change (A1111 reads `w["bias"]`).
    pub bias: Option<Tensor>,
    /// `alpha` (scale is `alpha / dim`).
    pub alpha: Option<f64>,
    /// `scale`, overriding `alpha / dim`.
    pub scale: Option<f64>,
    /// `dora_scale`: DoRA's magnitude vector.
    pub dora_scale: Option<Tensor>,
    /// The rank the type sets (`self.dim`), for the alpha scale.
    pub dim: Option<i64>,
}

impl ModuleCommon {
    /// Takes the shared fields from `weights`.
    pub fn new(weights: &ModuleWeights) -> Self {
        // A1111's `.item()`: any one-element tensor; a malformed one counts as absent.
        let scalar = |name: &str| {
            weights
                .w
                .get(name)
                .filter(|t| t.numel() == 1)
                .and_then(|t| t.reshape([1i64]).f_double_value(&[0]).ok())
        };
        Self {
            sd_key: weights.sd_key.clone(),
            shape: weights.weight_shape.clone(),
            bias: weights.w.get("bias").map(Tensor::shallow_clone),
            alpha: scalar("alpha"),
            scale: scalar("scale"),
            dora_scale: weights.w.get("dora_scale").map(Tensor::shallow_clone),
            dim: None,
        }
    }

    /// A1111's `calc_scale`: `scale`, else `alpha / dim`, else 1.
    pub fn calc_scale(&self) -> f64 {
        match (self.scale, self.dim, self.alpha) {
            (Some(scale), _, _) => scale,
            (None, Some(dim), Some(alpha)) => alpha / dim as f64,
            _ => 1.0,
        }
    }
}

/// A1111's `NetworkModule.finalize_updown`: adds a stored bias, reshapes to the layer's
/// weight, scales by alpha, applies DoRA's weight decomposition, then the multiplier (in that
/// order: DoRA sees the alpha-scaled change but not the multiplier).
pub fn finalize_updown(
    common: &ModuleCommon,
    updown: Tensor,
    orig_weight: &Tensor,
    output_shape: &[i64],
    ex_bias: Option<Tensor>,
    multipliers: &Multipliers,
) -> Result<Updown> {
    let mut updown = updown;
    // Fallible forms throughout: the shapes come from the file, and a mismatch is the file's
    // fault (A1111 skips such a layer with a logged error).
    if let Some(bias) = &common.bias {
        let bias = bias
            .f_to_device(orig_weight.device())?
            .f_to_kind(updown.kind())?;
        updown = updown
            .f_reshape(bias.size())?
            .f_add(&bias)?
            .f_reshape(output_shape)?;
    }
    if output_shape.len() == 4 {
        updown = updown.f_reshape(output_shape)?;
    }
    if orig_weight.numel() == updown.numel() {
        updown = updown.f_reshape(orig_weight.size())?;
    }
    let multiplier = multipliers.for_key(&common.sd_key);
    let ex_bias = ex_bias.map(|b| b.f_mul_scalar(multiplier)).transpose()?;
    updown = updown.f_mul_scalar(common.calc_scale())?;
    if let Some(dora_scale) = &common.dora_scale {
        updown = apply_weight_decompose(&updown, orig_weight, dora_scale, common)?;
    }
    Ok(Updown {
        updown: updown.f_mul_scalar(multiplier)?,
        ex_bias,
    })
}

/// A1111's `apply_weight_decompose` (DoRA): rescales `W + ΔW` column-wise (over the input
/// axis) to the magnitudes `dora_scale` and returns the result minus `W`.
fn apply_weight_decompose(
    updown: &Tensor,
    orig_weight: &Tensor,
    dora_scale: &Tensor,
    common: &ModuleCommon,
) -> Result<Tensor> {
    let orig_weight = orig_weight.f_to_kind(updown.kind())?;
    let dora_scale = dora_scale
        .f_to_device(orig_weight.device())?
        .f_to_kind(updown.kind())?;
    let merged = updown.f_add(&orig_weight)?;
    let Some(&columns) = merged.size().get(1) else {
        return Err(helpers::bad_module(
            &common.sd_key,
            format!(
                "DoRA needs a weight of two or more dimensions, the change has shape {:?}",
                merged.size()
            ),
        ));
    };
    let mut norm_shape = vec![columns];
    norm_shape.extend(std::iter::repeat_n(1, common.shape.len().saturating_sub(1)));
    let norm = merged
        .f_transpose(0, 1)?
        .f_reshape([columns, -1])?
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_reshape(norm_shape.as_slice())?
        .f_transpose(0, 1)?;
    Ok(merged
        .f_mul(&dora_scale.f_div(&norm)?)?
        .f_sub(&orig_weight)?)
}
