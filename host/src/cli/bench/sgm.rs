//! The SD 2.x and SDXL UNets at their native sizes against diffusers' (`sd2-unet`,
//! `sdxl-unet`): one denoising step with a CFG batch of 2 on the full-size random-weight
//! layouts, in each dtype, with the peak memory of sdhost's side as weights + extra.
//!
//! An SDXL UNet is 10 GB in fp32, so where both sides' UNets would not fit in memory together
//! the sides run one after the other (each with its warm-up) instead of interleaved, and the
//! reference process of each dtype is ended before the next dtype loads.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::reference::{interleaved, median, seconds, status_kib, Reference, ReferenceScript};
use super::BenchArgs;
use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::device::{parse_dtype, release_freed_memory};
use crate::models::stable_diffusion::UNET_PREFIX;
use crate::models::unet::UNetModel;
use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
use crate::weights::VarBuilder;

/// One of the native-size UNet cases.
struct SgmCase {
    /// The case name (`--only`).
    name: &'static str,
    /// The full-size layout its random model has.
    preset: Preset,
    /// The cached model's file name in ~/.cache/sdhost/bench.
    file: &'static str,
    /// The family's native image side in pixels (the latent is an eighth of it).
    image: i64,
}

/// The cases, in the order they run.
const SGM_CASES: [SgmCase; 2] = [
    SgmCase {
        name: "sd2-unet",
        preset: Preset::Sd2V,
        file: "sd2-768v-random-bf16.safetensors",
        image: 768,
    },
    SgmCase {
        name: "sdxl-unet",
        preset: Preset::Sdxl,
        file: "sdxl-random-bf16.safetensors",
        image: 1024,
    },
];

/// Memory kept free for a step's activations on both sides before they run interleaved.
const INTERLEAVE_MARGIN_MIB: f64 = 3.0 * 1024.0;

/// The case's random model, made once. Stored bf16: half the disk and the making time of fp32,
/// and both sides convert on load as they would a real fp16/bf16 file.
fn cached_model(case: &SgmCase) -> anyhow::Result<PathBuf> {
    let dir = crate::checkpoint::default_cache_dir()
        .context("no cache folder for the benchmark models")?
        .join("bench");
    let path = dir.join(case.file);
    if !path.exists() {
        std::fs::create_dir_all(&dir)?;
        eprintln!("bench: making {} (once)", path.display());
        let spec = TinyModelSpec {
            preset: case.preset,
            inpainting: false,
            seed: 0,
            storage: Kind::BFloat16,
        };
        // Written aside and renamed, so an interrupted run leaves no truncated model behind.
        let partial = path.with_extension("partial");
        write_tiny_model(&spec, &partial)?;
        std::fs::rename(&partial, &path)?;
    }
    Ok(path)
}

/// A field of `/proc/self/status` in MiB.
fn status_mib(field: &str) -> anyhow::Result<f64> {
    let kib = status_kib(Path::new("/proc/self/status"), field)
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    Ok(kib / 1024.0)
}

/// `MemAvailable` of the machine in MiB.
fn available_mib() -> anyhow::Result<f64> {
    let kib = status_kib(Path::new("/proc/meminfo"), "MemAvailable:")
        .context("no MemAvailable in /proc/meminfo")?;
    Ok(kib / 1024.0)
}

/// The inputs of one CFG step: latents, timesteps, context and (SDXL) the vector `y`.
struct StepInputs {
    x: Tensor,
    t: Tensor,
    context: Tensor,
    y: Option<Tensor>,
}

impl StepInputs {
    fn new(unet: &UNetModel, latent: i64, kind: Kind) -> Self {
        let config = unet.config();
        let on = (kind, Device::Cpu);
        StepInputs {
            x: Tensor::randn([2, 4, latent, latent], on),
            t: Tensor::from_slice(&[500.0f32, 500.0]),
            context: Tensor::randn([2, 77, config.context_dim], on),
            y: config
                .adm_in_channels
                .map(|adm| Tensor::randn([2, adm], on)),
        }
    }

    fn time(&self, unet: &UNetModel) -> f64 {
        seconds(|| unet.forward(&self.x, &self.t, &self.context, self.y.as_ref()))
    }
}

/// sdhost's UNet of `model` alone (the text encoders and VAE are not timed here), in `kind`.
fn load_unet(model: &Path, kind: Kind) -> anyhow::Result<UNetModel> {
    let checkpoint = Checkpoint::open(model)?;
    let architecture = infer_architecture(&checkpoint)?;
    let vb = VarBuilder::new(&checkpoint, kind, Device::Cpu);
    Ok(UNetModel::new(&vb.pp(UNET_PREFIX), &architecture.unet)?)
}

/// Runs the native-size UNet cases `wants` asks for and prints their table.
pub fn run(
    script: &ReferenceScript,
    threads: i32,
    args: &BenchArgs,
    wants: &dyn Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let cases: Vec<_> = SGM_CASES.iter().filter(|case| wants(case.name)).collect();
    if cases.is_empty() {
        return Ok(());
    }
    let models = cases
        .iter()
        .map(|case| cached_model(case))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("SD 2.x / SDXL UNets at their native size, random full-size weights, CFG batch 2:");
    println!(
        "{:<32} {:>12} {:>12} {:>8}",
        "case", "sdhost s", "diffusers s", "ratio"
    );
    let mut notes = Vec::new();
    for (case, model) in cases.iter().zip(&models) {
        let latent = case.image / 8;
        let mut times = Vec::new();
        for dtype in &args.dtypes {
            let kind = parse_dtype(dtype)?;
            release_freed_memory(Device::Cpu);
            let before = status_mib("VmRSS:")?;
            let unet = load_unet(model, kind)?;
            release_freed_memory(Device::Cpu);
            let loaded = status_mib("VmRSS:")?;
            let weights = loaded - before;
            let inputs = StepInputs::new(&unet, latent, kind);
            // The peak from here on is the steps' own (Linux resets VmHWM on "5").
            std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
            let command = json!({"op": "sgm_unet", "dtype": dtype, "size": latent});
            // The reference builds the same network in the same dtype, holding the stored
            // tensors beside it for a while (at most twice the weights): interleave only where
            // that fits next to sdhost's UNet with room for the activations.
            let together = available_mib()? > 2.0 * weights + INTERLEAVE_MARGIN_MIB;
            let (mine, theirs, extra) = if together {
                let mut reference = Reference::start(script, model, threads)?;
                let (mine, theirs) = interleaved(
                    args.repeat,
                    || Ok(inputs.time(&unet)),
                    || reference.time(command.clone()),
                )?;
                (mine, theirs, status_mib("VmHWM:")? - loaded)
            } else {
                // One side after the other, each with its warm-up; sdhost's UNet is dropped
                // before the reference builds its own.
                inputs.time(&unet);
                let mine = median(
                    (0..args.repeat.max(1))
                        .map(|_| inputs.time(&unet))
                        .collect(),
                );
                let extra = status_mib("VmHWM:")? - loaded;
                drop((inputs, unet));
                release_freed_memory(Device::Cpu);
                let mut reference = Reference::start(script, model, threads)?;
                reference.time(command.clone())?;
                let theirs = median(
                    (0..args.repeat.max(1))
                        .map(|_| reference.time(command.clone()))
                        .collect::<anyhow::Result<_>>()?,
                );
                notes.push(format!("{} {dtype}", case.name));
                (mine, theirs, extra)
            };
            let label = format!("{} {dtype} {latent}x{latent} latent", case.name);
            println!(
                "{label:<32} {mine:>12.3} {theirs:>12.3} {:>8.3}",
                mine / theirs
            );
            times.push((dtype.clone(), mine, weights, extra));
        }
        for (dtype, _, weights, extra) in &times {
            println!(
                "  {} {dtype} at {}²: sdhost peak RSS {:.2} GiB = weights {:.2} + extra {:.2} GiB \
                 (target extra ≤ 3 GB)",
                case.name,
                case.image,
                (weights + extra) / 1024.0,
                weights / 1024.0,
                extra / 1024.0
            );
        }
        let time_of = |want: &str| times.iter().find(|(d, ..)| d == want).map(|t| t.1);
        if let (Some(fp32), Some(bf16)) = (time_of("fp32"), time_of("bf16")) {
            println!(
                "  {} bf16 speed-up over fp32: {:.2}x",
                case.name,
                fp32 / bf16
            );
        }
    }
    if !notes.is_empty() {
        println!(
            "  sides run one after the other, not interleaved (too little memory for both): {}",
            notes.join(", ")
        );
    }
    Ok(())
}
