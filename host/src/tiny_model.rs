//! Checkpoints made here: real SD 1.x, SD 2.x and SDXL architectures and key names in A1111's
//! single-file layouts, random weights from a seed.
//!
//! No model can be downloaded, so every test runs on these. The tiny presets shrink every width
//! (seconds to make and run) but keep every family's structure; `Preset::Sd15`, `Sd2V` and
//! `Sdxl` are the full-size layouts with random weights, for proving the full architectures and
//! measuring speed.

use crate::checkpoint::{dtype_of, SIZE_EMBEDDING_DIM};
use crate::models::clip::ClipConfig;
use crate::models::open_clip::OpenClipConfig;
use crate::models::text_encoders::{ModelFamily, TextConfig};
use crate::models::unet::{AttentionHeads, UNetConfig};
use crate::models::vae::{VaeConfig, SD1_LATENT_SCALE, SDXL_LATENT_SCALE};
use crate::models::{Architecture, Prediction, StableDiffusion, CLIP_PREFIX, UNET_PREFIX};
use crate::weights::TensorSource;
use crate::weights::{LoadError, Result};
use safetensors::tensor::TensorView;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Which architecture to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// SD 1.x: UNet 32/64 over 2 levels, 2-layer CLIP of width 32 with the real vocabulary,
    /// VAE 32/64.
    Tiny,
    /// `Tiny` with SD 1.x's four UNet levels (three downsamples, attention on the first three):
    /// latent sides that are not multiples of 8 meet mismatched skip connections as in SD 1.5.
    TinyDeep,
    /// The exact SD 1.5 shapes (860M-parameter UNet, CLIP ViT-L/14, kl-f8 VAE).
    Sd15,
    /// SD 2.x (ε-prediction): 3-block OpenCLIP of width 128 (two heads), UNet 64/128/128 with
    /// linear projections and 64-wide heads.
    TinySd2,
    /// `TinySd2` marked as v-prediction (the 768-v models).
    TinySd2V,
    /// SDXL: CLIP-L of width 32 and bigG of width 128 (context 160), UNet 32/64/128 without
    /// attention at the first level and transformer depths 1 and 2, vector input 96 + 6·256.
    TinySdxl,
    /// SDXL refiner: bigG of width 128 alone, UNet 32/64/128/128 with attention at the middle
    /// levels, vector input 96 + 5·256.
    TinySdxlRefiner,
    /// The exact SD 2.x 768-v shapes (OpenCLIP ViT-H/14, 865M-parameter UNet).
    Sd2V,
    /// The exact SDXL base 1.0 shapes (CLIP-L + bigG, 2.6B-parameter UNet).
    Sdxl,
}

impl Preset {
    /// What the UNet predicts for models of this preset (stored in the file's metadata).
    pub fn prediction(self) -> Prediction {
        match self {
            Self::TinySd2V | Self::Sd2V => Prediction::V,
            _ => Prediction::Epsilon,
        }
    }
}

/// The model kinds `sdhost dev make-tiny-model --family` makes at tiny widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TinyFamily {
    /// SD 1.x.
    Sd1,
    /// SD 1.x inpainting (9 channels).
    Sd1Inpaint,
    /// SD 2.x 512-base (ε).
    Sd2,
    /// SD 2.x 768-v.
    Sd2V,
    /// SD 2.x inpainting.
    Sd2Inpaint,
    /// SDXL base.
    Sdxl,
    /// SDXL inpainting.
    SdxlInpaint,
    /// SDXL refiner.
    SdxlRefiner,
}

impl TinyFamily {
    /// The preset and whether it is an inpainting model.
    pub fn preset(self) -> (Preset, bool) {
        match self {
            Self::Sd1 => (Preset::Tiny, false),
            Self::Sd1Inpaint => (Preset::Tiny, true),
            Self::Sd2 => (Preset::TinySd2, false),
            Self::Sd2V => (Preset::TinySd2V, false),
            Self::Sd2Inpaint => (Preset::TinySd2, true),
            Self::Sdxl => (Preset::TinySdxl, false),
            Self::SdxlInpaint => (Preset::TinySdxl, true),
            Self::SdxlRefiner => (Preset::TinySdxlRefiner, false),
        }
    }
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

/// The real vocabulary and positions every text tower keeps.
const VOCAB: i64 = 49408;

/// A tiny OpenCLIP tower: width 128 (two 64-wide heads), three blocks, projection 96 (≠ the
/// width, so a transposed `text_projection` cannot go unnoticed).
fn tiny_open_clip() -> OpenClipConfig {
    OpenClipConfig {
        vocab_size: VOCAB,
        width: 128,
        mlp_width: 512,
        layers: 3,
        heads: 2,
        context_length: 77,
        projection_dim: Some(96),
    }
}

/// A tiny CLIP-L of `width` and `layers` with the real vocabulary.
fn tiny_clip(width: i64, layers: i64) -> ClipConfig {
    ClipConfig {
        vocab_size: VOCAB,
        hidden_size: width,
        intermediate_size: 4 * width,
        num_layers: layers,
        num_heads: ClipConfig::heads_for_width(width),
        max_positions: 77,
    }
}

/// The tiny autoencoder: four levels keep SD's 8× latent downscale at small widths.
fn tiny_vae(scaling_factor: f64) -> VaeConfig {
    VaeConfig {
        in_channels: 3,
        out_channels: 3,
        ch: 32,
        ch_mult: vec![1, 1, 2, 2],
        num_res_blocks: 1,
        z_channels: 4,
        scaling_factor,
    }
}

/// A UNet of SD2/SDXL style (linear projections, 64-wide heads).
fn unet(
    in_channels: i64,
    (model_channels, channel_mult): (i64, Vec<i64>),
    transformer_depth: Vec<i64>,
    transformer_depth_middle: i64,
    context_dim: i64,
    adm_in_channels: Option<i64>,
) -> UNetConfig {
    UNetConfig {
        in_channels,
        out_channels: 4,
        model_channels,
        channel_mult,
        num_res_blocks: 2,
        attention_levels: transformer_depth.iter().map(|&d| d > 0).collect(),
        transformer_depth,
        transformer_depth_middle,
        adm_in_channels,
        context_dim,
        heads: AttentionHeads::Width(64),
        use_linear_in_transformer: true,
    }
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

    /// The tiny model of `family` and `seed`, stored fp32.
    pub fn family(family: TinyFamily, seed: i64) -> Self {
        let (preset, inpainting) = family.preset();
        TinyModelSpec {
            preset,
            inpainting,
            seed,
            storage: Kind::Float,
        }
    }

    /// The architecture this spec describes.
    pub fn architecture(&self) -> Architecture {
        let in_channels = if self.inpainting { 9 } else { 4 };
        let sd1_text = |clip| TextConfig::Sd1 {
            clip,
            prefix: format!("{CLIP_PREFIX}.text_model"),
        };
        let sd2_text = |open_clip| TextConfig::Sd2 {
            open_clip,
            prefix: "cond_stage_model.model".into(),
        };
        let sdxl_text = |clip_l, big_g| TextConfig::Sdxl {
            clip_l,
            clip_l_prefix: "conditioner.embedders.0.transformer.text_model".into(),
            big_g,
            big_g_prefix: "conditioner.embedders.1.model".into(),
        };
        let six_sizes = 6 * SIZE_EMBEDDING_DIM;
        match self.preset {
            Preset::Sd15 => Architecture {
                unet: UNetConfig::sd15(in_channels),
                vae: VaeConfig::sd1(),
                text: sd1_text(ClipConfig::vit_l14()),
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
                    transformer_depth: if self.preset == Preset::Tiny {
                        vec![1, 0]
                    } else {
                        vec![1, 1, 1, 0]
                    },
                    transformer_depth_middle: 1,
                    adm_in_channels: None,
                    context_dim: 32,
                    heads: AttentionHeads::Count(8),
                    use_linear_in_transformer: false,
                },
                vae: tiny_vae(SD1_LATENT_SCALE),
                text: sd1_text(ClipConfig {
                    num_layers: 2,
                    ..tiny_clip(32, 2)
                }),
            },
            Preset::TinySd2 | Preset::TinySd2V => Architecture {
                unet: unet(
                    in_channels,
                    (64, vec![1, 2, 2]),
                    vec![1, 1, 0],
                    1,
                    128,
                    None,
                ),
                vae: tiny_vae(SD1_LATENT_SCALE),
                text: sd2_text(tiny_open_clip()),
            },
            Preset::TinySdxl => Architecture {
                unet: unet(
                    in_channels,
                    (32, vec![1, 2, 4]),
                    vec![0, 1, 2],
                    2,
                    32 + 128,
                    Some(96 + six_sizes),
                ),
                vae: tiny_vae(SDXL_LATENT_SCALE),
                text: sdxl_text(tiny_clip(32, 3), tiny_open_clip()),
            },
            Preset::TinySdxlRefiner => Architecture {
                unet: unet(
                    in_channels,
                    (32, vec![1, 2, 4, 4]),
                    vec![0, 1, 1, 0],
                    1,
                    128,
                    Some(96 + 5 * SIZE_EMBEDDING_DIM),
                ),
                vae: tiny_vae(SDXL_LATENT_SCALE),
                text: TextConfig::SdxlRefiner {
                    big_g: tiny_open_clip(),
                    prefix: "conditioner.embedders.0.model".into(),
                },
            },
            Preset::Sd2V => Architecture {
                unet: unet(
                    in_channels,
                    (320, vec![1, 2, 4, 4]),
                    vec![1, 1, 1, 0],
                    1,
                    1024,
                    None,
                ),
                vae: VaeConfig::sd1(),
                text: sd2_text(OpenClipConfig {
                    vocab_size: VOCAB,
                    width: 1024,
                    mlp_width: 4096,
                    layers: 24,
                    heads: 16,
                    context_length: 77,
                    projection_dim: Some(1024),
                }),
            },
            Preset::Sdxl => Architecture {
                unet: unet(
                    in_channels,
                    (320, vec![1, 2, 4]),
                    vec![0, 2, 10],
                    10,
                    2048,
                    Some(1280 + six_sizes),
                ),
                vae: VaeConfig {
                    scaling_factor: SDXL_LATENT_SCALE,
                    ..VaeConfig::sd1()
                },
                text: sdxl_text(
                    ClipConfig::vit_l14(),
                    OpenClipConfig {
                        vocab_size: VOCAB,
                        width: 1280,
                        mlp_width: 5120,
                        layers: 32,
                        heads: 20,
                        context_length: 77,
                        projection_dim: Some(1280),
                    },
                ),
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
    // LDM files carry the noise schedule; sgm's SDXL files do not (A1111 computes it).
    if !architecture.family().is_sdxl() {
        tensors.extend(schedule_buffers());
    }
    tensors.extend(unused_text_keys(&architecture.text));
    // SD 1.x files stay as they always were (their hashes are in tests); the others say
    // their prediction type, which no A1111 rule can read from tiny widths.
    let prediction = match (architecture.family(), spec.preset.prediction()) {
        (ModelFamily::Sd1, _) => None,
        (_, Prediction::Epsilon) => Some((PREDICTION_METADATA, "epsilon")),
        (_, Prediction::V) => Some((PREDICTION_METADATA, "v")),
    };
    write_safetensors(tensors, prediction, path).map(|()| architecture)
}

/// The safetensors metadata key kohya's ModelSpec uses for the prediction type.
pub const PREDICTION_METADATA: &str = "modelspec.prediction_type";

/// Keys real files carry that no network reads: CLIP's `position_ids` and OpenCLIP's
/// `logit_scale` (ln 100, as trained CLIP models end).
fn unused_text_keys(text: &TextConfig) -> Vec<(String, Tensor)> {
    let position_ids = |prefix: &str| {
        (
            format!("{prefix}.embeddings.position_ids"),
            Tensor::arange(77, (Kind::Int64, Device::Cpu)).unsqueeze(0),
        )
    };
    let logit_scale = |prefix: &str| (format!("{prefix}.logit_scale"), Tensor::from(100f32.ln()));
    match text {
        TextConfig::Sd1 { prefix, .. } => vec![position_ids(prefix)],
        TextConfig::Sd2 { prefix, .. } | TextConfig::SdxlRefiner { prefix, .. } => {
            vec![logit_scale(prefix)]
        }
        TextConfig::Sdxl {
            clip_l_prefix,
            big_g_prefix,
            ..
        } => vec![position_ids(clip_l_prefix), logit_scale(big_g_prefix)],
    }
}

/// A LoRA of random weights for a model's layers, in kohya's names of the LDM layers (which
/// A1111 matches as it matches trained ones).
pub struct RandomLora<'a> {
    /// The rank of every layer's down and up matrices.
    pub rank: i64,
    /// The standard deviation of the weights.
    pub scale: f64,
    /// The stored dtype.
    pub kind: Kind,
    /// The `alpha` of every layer, or none (then A1111 scales by 1).
    pub alpha: Option<f64>,
    /// The UNet layers trained: those whose key contains one of these.
    pub unet_layers: &'a [&'a str],
    /// The seed of the weights.
    pub seed: i64,
}

/// The tensors of `lora` for `sd`: the UNet layers it names and every linear of the text
/// encoder's blocks, as kohya trains them (convolutions get 1×1 kernels).
pub fn random_lora(sd: &StableDiffusion, lora: &RandomLora<'_>) -> Vec<(String, Tensor)> {
    // Exclusively: tests that make models and LoRAs at once share the global generator.
    crate::rng::with_global_seed(lora.seed, || random_lora_tensors(sd, lora))
}

fn random_lora_tensors(sd: &StableDiffusion, lora: &RandomLora<'_>) -> Vec<(String, Tensor)> {
    let clip_prefix = format!("{}.", sd.architecture.text.clip_prefix());
    let mut tensors = Vec::new();
    for (key, layer) in &sd.layers {
        let size = layer.weight.size();
        let unet_rest = key
            .strip_prefix(UNET_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'));
        let name = if let Some(rest) = unet_rest {
            if !lora
                .unet_layers
                .iter()
                .any(|trained| rest.contains(trained))
                || size.len() < 2
            {
                continue;
            }
            format!("lora_unet_{}", rest.replace('.', "_"))
        } else if let Some(rest) = key.strip_prefix(&clip_prefix) {
            if !rest.starts_with("encoder.layers.") || size.len() != 2 {
                continue;
            }
            format!("lora_te_text_model_{}", rest.replace('.', "_"))
        } else {
            continue;
        };
        let kernel = vec![1; size.len() - 2];
        let options = (lora.kind, Device::Cpu);
        let down: Vec<i64> = [vec![lora.rank, size[1]], kernel.clone()].concat();
        let up: Vec<i64> = [vec![size[0], lora.rank], kernel].concat();
        tensors.push((
            format!("{name}.lora_down.weight"),
            Tensor::randn(down.as_slice(), options) * lora.scale,
        ));
        tensors.push((
            format!("{name}.lora_up.weight"),
            Tensor::randn(up.as_slice(), options) * lora.scale,
        ));
        if let Some(alpha) = lora.alpha {
            tensors.push((
                format!("{name}.alpha"),
                Tensor::from(alpha).to_kind(lora.kind),
            ));
        }
    }
    tensors
}

/// Writes named CPU tensors to a `.safetensors` file (sorted, as the format requires).
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    save_safetensors_with_metadata(tensors, None, path)
}

/// [`save_safetensors`] with one `__metadata__` entry. The `safetensors` crate writes the
/// header from a hash map, so one entry is what keeps the bytes (and the model hash) the same
/// from run to run.
pub fn save_safetensors_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: Option<(&str, &str)>,
    path: &Path,
) -> Result<()> {
    let shared = tensors
        .iter()
        .map(|(name, tensor)| (name.clone(), tensor.shallow_clone()))
        .collect();
    write_safetensors(shared, metadata, path)
}

/// [`save_safetensors_with_metadata`] taking the tensors, each dropped once its bytes are
/// copied out: a full-size SDXL model then peaks near one copy (7 GB in bf16), not two.
fn write_safetensors(
    tensors: Vec<(String, Tensor)>,
    metadata: Option<(&str, &str)>,
    path: &Path,
) -> Result<()> {
    let invalid = |reason: String| LoadError::InvalidSafetensors {
        path: PathBuf::from(path),
        reason,
    };
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        // Consumed: this tensor's memory goes when the iteration ends.
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
        raw.push((name, dtype, shape, bytes));
    }
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = metadata.map(|(k, v)| [(k.to_string(), v.to_string())].into_iter().collect());
    safetensors::tensor::serialize_to_file(views, metadata, path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => LoadError::Io {
            path: PathBuf::from(path),
            source,
        },
        other => invalid(other.to_string()),
    })
}
