//! The LoRA figure of `sdhost bench`: applying and restoring a rank-32 LoRA on the benchmark
//! model (every attention, feed-forward and projection layer of the UNet and every linear of
//! the text encoder, as kohya trains them), against the time of a 20-step 512² job.

use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::extra_networks::dirs::NetworkDirs;
use crate::pipeline::extra_networks::activate_extra_networks;
use crate::pipeline::model::GenerationModel;
use crate::tiny_model::{random_lora, save_safetensors, RandomLora};

/// The rank of the benchmark LoRA.
const RANK: i64 = 32;

/// Writes a rank-32 LoRA for `model`'s layers into `dir` as `bench32.safetensors`, kohya
/// names in LDM form (which A1111 also matches), random weights from a fixed seed.
fn write_lora(model: &GenerationModel, dir: &Path) -> anyhow::Result<usize> {
    let lora = RandomLora {
        rank: RANK,
        scale: 0.02,
        kind: Kind::Half,
        alpha: Some(16.0),
        unet_layers: &["transformer_blocks", "proj_in", "proj_out"],
        seed: 32,
    };
    let tensors = random_lora(&model.sd, &lora);
    let layers = tensors.len() / 3;
    save_safetensors(&tensors, &dir.join("bench32.safetensors"))?;
    Ok(layers)
}

/// Prints apply and restore times of the rank-32 LoRA and their share of a 20-step 512² job
/// (estimated as 20 UNet calls on a batch of two, the cond and uncond rows, without the VAE and
/// text encoder: the estimate errs towards a larger share).
pub fn print_lora_share(model_path: &Path, work: &Path) -> anyhow::Result<()> {
    let dir = work.join("Lora");
    std::fs::create_dir_all(&dir)?;
    let model = GenerationModel::load(model_path, Device::Cpu, Kind::Float, None)?
        .with_network_dirs(NetworkDirs {
            lora: vec![dir.clone()],
            ..NetworkDirs::default()
        });
    let layers = write_lora(&model, &dir)?;
    let timed_layers = |prompt: &str| -> anyhow::Result<(f64, usize)> {
        let start = Instant::now();
        let job = activate_extra_networks(&model, prompt);
        anyhow::ensure!(job.warnings.is_empty(), "bench LoRA: {:?}", job.warnings);
        Ok((start.elapsed().as_secs_f64(), job.lora_changed_layers))
    };
    let timed = |prompt: &str| timed_layers(prompt).map(|(seconds, _)| seconds);
    // The first apply also makes the CPU backups; after it, a switch costs the apply below.
    let first = timed("<lora:bench32:1>")?;
    let (repeat, repatched) = timed_layers("<lora:bench32:1>")?;
    let restore = timed("")?;
    let apply = timed("<lora:bench32:1>")?;
    timed("")?;

    let unet = &model.sd.unet;
    let channels = model.sd.architecture.unet.in_channels;
    let context_dim = model.sd.architecture.unet.context_dim;
    let x = Tensor::randn([2, channels, 64, 64], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[500.0f32, 500.0]);
    let context = Tensor::randn([2, 77, context_dim], (Kind::Float, Device::Cpu));
    drop(unet.forward(&x, &t, &context, None));
    let start = Instant::now();
    drop(unet.forward(&x, &t, &context, None));
    let step = start.elapsed().as_secs_f64();
    let job = 20.0 * step;
    println!(
        "LoRA rank {RANK}, {layers} layers: first apply (file + backups) {first:.2} s, same set again {:.1} ms ({repatched} layers patched), restore {restore:.2} s, apply {apply:.2} s; apply + restore = {:.1} % of a 20-step 512² job ({job:.0} s from a UNet step of {step:.1} s; target ≤ 5 %)",
        repeat * 1e3,
        100.0 * (apply + restore) / job
    );
    Ok(())
}
