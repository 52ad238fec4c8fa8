//! The sdhost-only figures of `sdhost bench`: model load, bf16 drift, time against denoising
//! strength, only-masked inpainting in a large image, socket transport.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use image::{GrayImage, RgbImage};
use tch::{Device, Kind};

use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::models::StableDiffusion;
use crate::pipeline::img2img::run_img2img_unobserved;
use crate::pipeline::model::GenerationModel;
use crate::prepare::inpaint::InpaintSettings;
use crate::request::GenerationRequest;
use crate::sampling::plan::SamplerSettings;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::tiny_model::{write_tiny_model, TinyModelSpec};

/// A smooth test picture of any size.
pub(super) fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) / 2 % 256) as u8])
    })
}

/// A one-image Euler job of the given size, steps and strength.
pub(super) fn params(width: u32, height: u32, steps: usize, strength: f64) -> GenerationRequest {
    GenerationRequest {
        prompt: "a lighthouse on a cliff".into(),
        width,
        height,
        seed: 1,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps,
            denoising_strength: strength,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    }
}

/// Seconds one img2img job takes with `model` loaded.
pub(super) fn time_job(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    params: &GenerationRequest,
    init: &RgbImage,
    mask: Option<&GrayImage>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    run_img2img_unobserved(model, registry, params, init, mask).context("benchmark job")?;
    Ok(start.elapsed().as_secs_f64())
}

/// Prints the figures.
pub fn print_figures(model: &Path, wants: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let sdhost = std::env::current_exe()?;
    let work = tempfile::tempdir()?;
    let model_arg = model.to_string_lossy().into_owned();

    if wants("load") {
        let checkpoint = Checkpoint::open(model)?;
        let architecture = infer_architecture(&checkpoint)?;
        let bytes = std::fs::metadata(model)?.len() as f64 / 1e9;
        let load = || StableDiffusion::load(&checkpoint, &architecture, Kind::Float, Device::Cpu);
        // The first load warms the page cache; the second is timed.
        drop(load()?);
        let start = Instant::now();
        drop(load()?);
        println!(
            "model load, {bytes:.1} GB file, warm page cache, as fp32: {:.2} s (target 2 s)",
            start.elapsed().as_secs_f64()
        );
    }
    if wants("drift") {
        bf16_drift(work.path())?;
    }
    let needs_model = wants("scaling") || wants("inpaint");
    if needs_model {
        let generation = GenerationModel::load(model, Device::Cpu, Kind::Float, None)?;
        let registry = SamplerRegistry::load(&PluginPaths::discover(None));
        let time_job = |params: &GenerationRequest, init: &RgbImage, mask: Option<&GrayImage>| {
            time_job(&generation, &registry, params, init, mask)
        };
        if wants("scaling") {
            let init = picture(256, 256);
            print!("img2img SD 1.5 256², 8 steps, time by denoising strength:");
            for strength in [0.25, 0.5, 0.75, 1.0] {
                let seconds = time_job(&params(256, 256, 8, strength), &init, None)?;
                let run = (strength.min(0.999) * 8.0) as usize + 1;
                print!(" {strength}: {seconds:.1} s ({run} steps)");
            }
            println!();
        }
        if wants("inpaint") {
            let plain = time_job(&params(512, 512, 2, 0.75), &picture(512, 512), None)?;
            let big = picture(4096, 4096);
            let mut mask = GrayImage::new(4096, 4096);
            for y in 1900..2156 {
                for x in 1900..2156 {
                    mask.put_pixel(x, y, image::Luma([255]));
                }
            }
            let inpaint = GenerationRequest {
                inpaint: InpaintSettings {
                    only_masked: true,
                    ..InpaintSettings::default()
                },
                ..params(512, 512, 2, 0.75)
            };
            let masked = time_job(&inpaint, &big, Some(&mask))?;
            println!(
                "only-masked inpaint of 256² in 4096² vs img2img 512² (SD 1.5, 2 steps): {masked:.1} s vs {plain:.1} s = {:.2}x (target 1.2x)",
                masked / plain
            );
        }
    }
    if wants("lora") {
        super::lora::print_lora_share(model, work.path())?;
    }
    if wants("transport") {
        super::transport::round_trip(&sdhost, &model_arg, work.path())?;
        super::transport::preview_rate(&sdhost, work.path())?;
    }
    Ok(())
}

/// How far bf16 moves an image from fp32: the same img2img job on a tiny model in both dtypes,
/// mean absolute pixel difference (0-255).
fn bf16_drift(dir: &Path) -> anyhow::Result<()> {
    let tiny = dir.join("tiny-drift.safetensors");
    write_tiny_model(&TinyModelSpec::tiny(3), &tiny)?;
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    let init = picture(128, 128);
    let job = |kind: Kind| -> anyhow::Result<RgbImage> {
        let model = GenerationModel::load(&tiny, Device::Cpu, kind, None)?;
        let outcome =
            run_img2img_unobserved(&model, &registry, &params(128, 128, 10, 0.6), &init, None)?;
        Ok(outcome.images.into_iter().next().context("an image")?.image)
    };
    let (fp32, bf16) = (job(Kind::Float)?, job(Kind::BFloat16)?);
    let total: u64 = fp32
        .as_raw()
        .iter()
        .zip(bf16.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    println!(
        "bf16 image drift vs fp32 (tiny model, 128², 10 steps, strength 0.6): mean |Δ| {:.2} of 255",
        total as f64 / fp32.as_raw().len() as f64
    );
    Ok(())
}
