//! Checkpoints made here: real SD 1.x architectures and key names, random weights from a seed.
//!
//! No model can be downloaded, so every test runs on these. `Preset::Tiny` shrinks every width
//! (seconds to make and run); `Preset::Sd15` is the full-size SD 1.5 layout with random weights,
//! for proving the full architecture and measuring speed.

use crate::checkpoint::dtype_of;
use crate::models::clip::ClipConfig;
use crate::models::unet::{AttentionHeads, UNetConfig};
use crate::models::vae::{VaeConfig, SD1_LATENT_SCALE};
use crate::models::{Architecture, StableDiffusion, CLIP_PREFIX};
use crate::weights::TensorSource;
use crate::weights::{LoadError, Result};
use safetensors::tensor::TensorView;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Which architecture to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// UNet 32/64 over 2 levels, 2-layer CLIP of width 32 with the real vocabulary, VAE 32/64.
    Tiny,
    /// `Tiny` with SD 1.x's four UNet levels (three downsamples, attention on the first three):
    /// latent sides that are not multiples of 8 meet mismatched skip connections as in SD 1.5.
    TinyDeep,
    /// The exact SD 1.5 shapes (860M-parameter UNet, CLIP ViT-L/14, kl-f8 VAE).
    Sd15,
}

/// What to write: architecture, inpainting or not, seed and on-disk dtype.
#[derive(Clone, Debug)]
pub struct TinyModelSpec {
    /// Architecture preset.
    pub preset: Preset,
    /// A 9-channel (inpainting) UNet.
    pub inpainting: bool,
    /// Seed of the random weights.
    pub seed: i64,
    /// Dtype of the weights on disk (`Kind::Float` or `Kind::Half` / `Kind::BFloat16`).
    pub storage: Kind,
}

impl TinyModelSpec {
    /// The tiny 4-channel model of `seed`, stored fp32 (demo, benchmarks, tests).
    pub fn tiny(seed: i64) -> Self {
        TinyModelSpec {
            preset: Preset::Tiny,
            inpainting: false,
            seed,
            storage: Kind::Float,
        }
    }

    /// The architecture this spec describes.
    pub fn architecture(&self) -> Architecture {
        let in_channels = if self.inpainting { 9 } else { 4 };
        match self.preset {
            Preset::Sd15 => Architecture {
                unet: UNetConfig::sd15(in_channels),
                vae: VaeConfig::sd1(),
                clip: ClipConfig::vit_l14(),
                clip_prefix: format!("{CLIP_PREFIX}.text_model"),
            },
            Preset::Tiny | Preset::TinyDeep => Architecture {
                unet: UNetConfig {
                    in_channels,
                    out_channels: 4,
                    model_channels: 32,
                    channel_mult: if self.preset == Preset::Tiny {
                        vec![1, 2]
                    } else {
                        vec![1, 1, 2, 2]
                    },
                    num_res_blocks: 2,
                    attention_levels: if self.preset == Preset::Tiny {
                        vec![true, false]
                    } else {
                        vec![true, true, true, false]
                    },
                    transformer_depth: 1,
                    context_dim: 32,
                    heads: AttentionHeads::Count(8),
                    use_linear_in_transformer: false,
                },
                // Four levels keep SD's 8× latent downscale at small widths.
                vae: VaeConfig {
                    in_channels: 3,
                    out_channels: 3,
                    ch: 32,
                    ch_mult: vec![1, 1, 2, 2],
                    num_res_blocks: 1,
                    z_channels: 4,
                    scaling_factor: SD1_LATENT_SCALE,
                },
                clip: ClipConfig {
                    vocab_size: 49408,
                    hidden_size: 32,
                    intermediate_size: 128,
                    num_layers: 2,
                    num_heads: ClipConfig::heads_for_width(32),
                    max_positions: 77,
                },
                clip_prefix: format!("{CLIP_PREFIX}.text_model"),
            },
        }
    }
}

/// A tensor source that invents every tensor asked for and remembers it for saving.
///
/// Draws happen in the order the networks ask, from libtorch's global CPU generator seeded
/// once under [`crate::rng::with_global_seed`], so the same spec always gives the same bytes.
struct RandomSource {
    storage: Kind,
    made: RefCell<Vec<(String, Tensor)>>,
}

impl RandomSource {
    fn init(key: &str, shape: &[i64]) -> Tensor {
        let opts = (Kind::Float, Device::Cpu);
        let noise = Tensor::randn(shape, opts);
        match shape.len() {
            // 1-D weights are norm scales: near one. 1-D biases: small but non-zero, so that
            // parity tests exercise every bias path.
            1 if key.ends_with(".weight") => noise * 0.1 + 1.0,
            1 => noise * 0.1,
            _ => {
                let fan_in: i64 = shape[1..].iter().product();
                noise / (fan_in as f64).sqrt()
            }
        }
    }
}

impl TensorSource for RandomSource {
    fn stored_shape(&self, _key: &str) -> Option<Vec<i64>> {
        None
    }

    fn tensor(&self, key: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let stored = Self::init(key, shape).to_kind(self.storage);
        let out = stored.to_kind(kind).to_device(device);
        self.made.borrow_mut().push((key.to_string(), stored));
        Ok(out)
    }
}

/// The noise-schedule buffers real LDM checkpoints carry (scaled-linear betas, 1000 steps).
fn schedule_buffers() -> Vec<(String, Tensor)> {
    let (start, end) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let betas = Tensor::linspace(start, end, 1000, (Kind::Double, Device::Cpu)).square();
    let alphas_cumprod = (-&betas + 1.0).cumprod(0, Kind::Double);
    let prev = Tensor::cat(
        &[
            Tensor::ones([1], (Kind::Double, Device::Cpu)),
            alphas_cumprod.narrow(0, 0, 999),
        ],
        0,
    );
    [
        ("betas", betas),
        ("alphas_cumprod", alphas_cumprod),
        ("alphas_cumprod_prev", prev),
    ]
    .into_iter()
    .map(|(k, t)| (k.to_string(), t.to_kind(Kind::Float)))
    .collect()
}

/// Makes the checkpoint described by `spec` and writes it to `path`; returns its architecture.
pub fn write_tiny_model(spec: &TinyModelSpec, path: &Path) -> Result<Architecture> {
    let architecture = spec.architecture();
    let source = RandomSource {
        storage: spec.storage,
        made: RefCell::new(Vec::new()),
    };
    // The networks are built only to ask for every tensor; they are dropped right away.
    crate::rng::with_global_seed(spec.seed, || {
        StableDiffusion::load(&source, &architecture, spec.storage, Device::Cpu).map(drop)
    })?;
    let mut tensors = source.made.into_inner();
    tensors.extend(schedule_buffers());
    let ids =
        Tensor::arange(architecture.clip.max_positions, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    tensors.push((
        format!("{}.embeddings.position_ids", architecture.clip_prefix),
        ids,
    ));
    save_safetensors(&tensors, path).map(|()| architecture)
}

/// Writes named CPU tensors to a `.safetensors` file (sorted, as the format requires).
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let invalid = |reason: String| LoadError::InvalidSafetensors {
        path: PathBuf::from(path),
        reason,
    };
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| {
            invalid(format!(
                "{name}: dtype {:?} cannot be stored",
                tensor.kind()
            ))
        })?;
        let numel = tensor.numel();
        let mut bytes = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        raw.push((name.clone(), dtype, shape, bytes));
    }
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize_to_file(views, None, path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => LoadError::Io {
            path: PathBuf::from(path),
            source,
        },
        other => invalid(other.to_string()),
    })
}
