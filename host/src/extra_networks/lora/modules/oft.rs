//! OFT and BOFT (A1111's `network_oft.py`): the layer's weight is rotated by block-diagonal
//! orthogonal matrices, and the change is `R·W − W`. Three layouts are read:
//! kohya-ss's and new LyCORIS's `oft_blocks` (skew-symmetric generators, turned orthogonal by
//! the Cayley transform, their norm capped by `alpha`), old LyCORIS's `oft_diag` (the rotations
//! themselves), and LyCORIS's BOFT (`oft_blocks` of four dimensions: butterfly stages).

use tch::{Kind, Tensor};

use super::helpers::{bad_module, required, size_at};
use super::{
    finalize_updown, LayerKind, ModuleCommon, ModuleWeights, Multipliers, NetworkModule, Result,
    Updown,
};

/// An OFT module when `weights` has `oft_blocks` or `oft_diag`.
pub fn create(weights: &ModuleWeights) -> Option<Result<Box<dyn NetworkModule>>> {
    if !(weights.w.contains_key("oft_blocks") || weights.w.contains_key("oft_diag")) {
        return None;
    }
    Some(OftModule::new(weights).map(|m| Box::new(m) as Box<dyn NetworkModule>))
}

/// How the stored blocks become rotations and are applied.
enum Layout {
    /// `oft_blocks` `[blocks, size, size]`: Cayley transform of the skew-symmetric part.
    Cayley,
    /// `oft_diag` `[blocks, size, size]`: the rotations as stored.
    Rotations,
    /// `oft_blocks` `[stages, blocks, size, size]`: Cayley transform, then butterfly stages.
    Butterfly {
        /// The number of stages (`boft_m`).
        stages: i64,
    },
}

/// One layer's OFT rotations (A1111's `NetworkModuleOFT`).
pub struct OftModule {
    common: ModuleCommon,
    blocks: Tensor,
    layout: Layout,
    /// How many diagonal blocks the weight's output rows split into.
    num_blocks: i64,
    /// The side of each block.
    block_size: i64,
    /// `alpha · out_dim`, the cap on the generators' norm; `None` for no cap.
    constraint: Option<Tensor>,
    /// `rescale`, a per-output-row factor, shaped to broadcast over the weight.
    rescale: Option<Tensor>,
}

impl OftModule {
    /// Reads the layout and the block geometry from the tensors and the layer.
    fn new(weights: &ModuleWeights) -> Result<Self> {
        let mut common = ModuleCommon::new(weights);
        // OFT has no alpha scale: A1111 sets `scale = 1.0`, overriding a stored one too, and
        // reads `alpha` as the norm constraint instead.
        common.scale = Some(1.0);
        let key = common.sd_key.clone();
        let (blocks, is_rotations) = match weights.w.get("oft_blocks") {
            Some(blocks) => (blocks.shallow_clone(), false),
            None => (
                required(&weights.w, &key, "oft_diag")?.shallow_clone(),
                true,
            ),
        };
        let name = if is_rotations {
            "oft_diag"
        } else {
            "oft_blocks"
        };
        let dim = size_at(&blocks, if is_rotations { 1 } else { 0 }, &key, name)?;
        // Only linear and convolution layers have an output size A1111 reads here.
        let out_dim = match weights.layer {
            LayerKind::Linear | LayerKind::Conv2d { .. } => {
                output_size(&weights.weight_shape, &key)?
            }
            LayerKind::LayerNorm | LayerKind::GroupNorm => {
                return Err(bad_module(
                    &key,
                    "OFT applies to linear and convolution layers only",
                ))
            }
        };
        if dim == 0 {
            return Err(bad_module(
                &key,
                format!("`{name}` has an empty block axis"),
            ));
        }
        let rescale = match weights.w.get("rescale") {
            Some(rescale) => {
                let mut shape = vec![-1];
                shape.extend(std::iter::repeat_n(
                    1,
                    weights.weight_shape.len().saturating_sub(1),
                ));
                Some(rescale.f_reshape(shape)?)
            }
            None => None,
        };
        let alpha = weights.w.get("alpha");
        let mut module = Self {
            num_blocks: dim,
            block_size: out_dim / dim,
            constraint: match alpha {
                Some(alpha) if !is_rotations => Some(alpha.f_mul_scalar(out_dim)?),
                _ => None,
            },
            rescale,
            layout: Layout::Cayley,
            blocks,
            common,
        };
        if is_rotations {
            if module.blocks.dim() == 4 {
                // A1111 marks this BOFT but never sets its stage count, and fails applying it.
                return Err(bad_module(&key, "a four-dimensional `oft_diag` is not OFT"));
            }
            module.layout = Layout::Rotations;
            module.block_size = dim;
            module.num_blocks = out_dim / dim;
        } else if module.blocks.dim() == 4 {
            let size = module.blocks.size();
            module.layout = Layout::Butterfly { stages: size[0] };
            module.num_blocks = size[1];
            module.block_size = size[2];
        }
        // An `alpha` of zero means no cap, as a missing one does.
        if let Some(constraint) = &module.constraint {
            if constraint.f_ne(0)?.f_any()?.f_int64_value(&[])? == 0 {
                module.constraint = None;
            }
        }
        Ok(module)
    }

    /// The orthogonal blocks: the stored rotations, or the Cayley transform
    /// `(I + Q)(I − Q)⁻¹` of the skew-symmetric `Q = B − Bᵀ`, its norm capped first.
    fn rotations(&self, orig_weight: &Tensor) -> Result<Tensor> {
        let blocks = self.blocks.f_to_device(orig_weight.device())?;
        if let Layout::Rotations = self.layout {
            return Ok(blocks);
        }
        // The identity in the default dtype, as `torch.eye`: the transform runs in float32
        // whatever the stored dtype.
        let eye = Tensor::f_eye(self.block_size, (Kind::Float, blocks.device()))?;
        let mut q = blocks.f_sub(&blocks.f_transpose(-1, -2)?)?;
        if let Some(constraint) = &self.constraint {
            let norm = q.f_flatten(0, -1)?.f_norm()?;
            let capped = norm.f_clamp_max_tensor(&constraint.f_to_device(blocks.device())?)?;
            let ratio = capped
                .f_add_scalar(1e-8)?
                .f_div(&norm.f_add_scalar(1e-8)?)?;
            q = q.f_mul(&ratio)?;
        }
        let inverse = eye.f_sub(&q)?.f_to_kind(Kind::Float)?.f_inverse()?;
        Ok(eye.f_add(&q)?.f_matmul(&inverse)?)
    }
}

/// A linear or convolution weight's output size (its first dimension).
fn output_size(shape: &[i64], key: &str) -> Result<i64> {
    shape
        .first()
        .copied()
        .ok_or_else(|| bad_module(key, "the layer's weight has no dimensions"))
}

impl NetworkModule for OftModule {
    fn sd_key(&self) -> &str {
        &self.common.sd_key
    }

    fn calc_updown(&self, orig_weight: &Tensor, multipliers: &Multipliers) -> Result<Updown> {
        let r = self.rotations(orig_weight)?;
        let rest = orig_weight.size().get(1..).unwrap_or_default().to_vec();
        let merged = match self.layout {
            Layout::Cayley | Layout::Rotations => {
                // Rows in blocks; each block's rows are mixed by its rotation, transposed.
                let mut shape = vec![self.num_blocks, self.block_size];
                shape.extend(&rest);
                let grouped = orig_weight.f_reshape(shape)?;
                let rotated =
                    Tensor::f_einsum("k n m, k n ... -> k m ...", &[&r, &grouped], None::<&[i64]>)?;
                rotated.f_flatten(0, 1)?
            }
            Layout::Butterfly { stages } => self.butterfly(orig_weight, &r, stages, &rest)?,
        };
        let merged = match &self.rescale {
            Some(rescale) => rescale
                .f_to_device(merged.device())?
                .f_to_kind(merged.kind())?
                .f_mul(&merged)?,
            None => merged,
        };
        let updown = merged
            .f_to_device(orig_weight.device())?
            .f_sub(&orig_weight.f_to_kind(merged.kind())?)?;
        let output_shape = orig_weight.size();
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

impl OftModule {
    /// BOFT's butterfly: stage `i` pairs rows `2ⁱ·size/2` apart, rotates each block of the
    /// regrouped rows by that stage's blocks, and undoes the regrouping.
    fn butterfly(
        &self,
        orig_weight: &Tensor,
        r: &Tensor,
        stages: i64,
        rest: &[i64],
    ) -> Result<Tensor> {
        let key = self.common.sd_key.as_str();
        let rows = size_at(orig_weight, 0, key, "the layer's weight")?;
        let half = self.block_size / 2;
        // A1111's BOFT fixes this scale at 1 (`R₀·1 + 0·I`); kept, since it changes the rounding.
        let scale = 1.0;
        let eye = Tensor::f_eye(self.block_size, (Kind::Float, r.device()))?;
        let mut inp = orig_weight.shallow_clone();
        for i in 0..stages {
            let mut stage = r.f_get(i)?;
            if i == 0 {
                stage = stage
                    .f_mul_scalar(scale)?
                    .f_add(&eye.f_mul_scalar(1.0 - scale)?)?;
            }
            let k = (1i64 << i) * half;
            let group = 2 * k;
            if group == 0 || rows % group != 0 || rows % self.block_size != 0 {
                return Err(bad_module(
                    key,
                    format!(
                        "BOFT stage {i} groups {group} rows of a {rows}-row weight into blocks \
                         of {}",
                        self.block_size
                    ),
                ));
            }
            // (c g k) → (c k g): interleave the two halves of each group of 2k rows.
            inp = swap_axes(&inp, &[rows / group, 2, k], rest)?;
            let mut blocked = vec![rows / self.block_size, self.block_size];
            blocked.extend(rest);
            let rotated = Tensor::f_einsum(
                "b i j, b j ... -> b i ...",
                &[&stage, &inp.f_reshape(blocked)?],
                None::<&[i64]>,
            )?;
            // (c k g) → (c g k): back to the original row order.
            inp = swap_axes(&rotated.f_flatten(0, 1)?, &[rows / group, k, 2], rest)?;
        }
        Ok(inp)
    }
}

/// Splits the rows of `t` into `split` (three factors), swaps the last two and flattens them
/// back: einops' `(c a b) ... -> (c b a) ...`.
fn swap_axes(t: &Tensor, split: &[i64; 3], rest: &[i64]) -> Result<Tensor> {
    let mut shape = split.to_vec();
    shape.extend(rest);
    let mut order: Vec<i64> = vec![0, 2, 1];
    order.extend((3..3 + rest.len() as i64).collect::<Vec<_>>());
    let mut flat = vec![-1];
    flat.extend(rest);
    Ok(t.f_reshape(shape)?.f_permute(order)?.f_reshape(flat)?)
}
