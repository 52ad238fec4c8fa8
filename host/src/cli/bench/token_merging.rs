//! `--only tome`: A1111's token merging (`token_merging_ratio`) side by side with ratio 0 in
//! one run: a UNet call per dtype at every size, and at the first size a whole img2img job
//! (DPM++ 2M Karras, 20 steps, strength 0.75) with its time and the drift of its picture from
//! the unmerged one.

use std::time::Instant;

use anyhow::Context;
use image::RgbImage;
use tch::{Device, Kind, Tensor};

use super::figures::{params, picture};
use super::reference::{median, seconds};
use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::device::parse_dtype;
use crate::models::unet::TokenMerging;
use crate::models::StableDiffusion;
use crate::pipeline::img2img::run_img2img_unobserved;
use crate::pipeline::model::GenerationModel;
use crate::request::GenerationRequest;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::sampling::schedule::Schedule;

/// The ratios compared, 0 first (the reference of the speed-ups and the drift).
const RATIOS: [f64; 3] = [0.0, 0.3, 0.5];

/// What the case runs.
pub struct TomeCase<'a> {
    /// The checkpoint.
    pub model: &'a std::path::Path,
    /// Picture sides (square) of the UNet calls; the job runs at the first.
    pub sizes: &'a [u32],
    /// Dtypes of the UNet calls.
    pub dtypes: &'a [String],
    /// Timed runs per ratio (medians).
    pub repeat: usize,
}

/// Median seconds of a UNet call with a CFG batch of 2 on a `latent`² latent per ratio.
fn unet_calls(sd: &StableDiffusion, latent: i64, kind: Kind, repeat: usize) -> Vec<f64> {
    let on = (kind, Device::Cpu);
    let x = Tensor::randn([2, 4, latent, latent], on);
    let t = Tensor::from_slice(&[500.0f32, 500.0]);
    let context = Tensor::randn([2, 77, sd.architecture.unet.context_dim], on);
    let call = |ratio: f64| {
        seconds(|| {
            sd.unet
                .forward_merging(&x, &t, &context, None, TokenMerging::new(ratio))
        })
    };
    for ratio in RATIOS {
        call(ratio);
    }
    // Interleaved, so every ratio sees the same machine state.
    let mut times = vec![Vec::new(); RATIOS.len()];
    for _ in 0..repeat.max(1) {
        for (i, ratio) in RATIOS.iter().enumerate() {
            times[i].push(call(*ratio));
        }
    }
    times.into_iter().map(median).collect()
}

/// The img2img job at `side`² with a token merging ratio.
fn job(side: u32, ratio: f64) -> GenerationRequest {
    let mut request = params(side, side, 20, 0.75);
    request.sampler.sampler = "DPM++ 2M".into();
    request.sampler.schedule = Schedule::Karras;
    request.token_merging_ratio = ratio;
    request
}

/// Seconds and picture of one job.
fn run_job(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    request: &GenerationRequest,
    init: &RgbImage,
) -> anyhow::Result<(f64, RgbImage)> {
    let start = Instant::now();
    let outcome = run_img2img_unobserved(model, registry, request, init, None)
        .context("token merging job")?;
    let seconds = start.elapsed().as_secs_f64();
    let image = outcome
        .images
        .into_iter()
        .next()
        .context("the job made no image")?
        .image;
    Ok((seconds, image))
}

/// Mean and largest absolute difference of two pictures, in 8-bit levels.
fn drift(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    let pairs = a.as_raw().iter().zip(b.as_raw());
    let (mut sum, mut most) = (0u64, 0u8);
    for (x, y) in pairs {
        let d = x.abs_diff(*y);
        sum += u64::from(d);
        most = most.max(d);
    }
    (sum as f64 / a.as_raw().len().max(1) as f64, most)
}

/// `ratio: seconds (speed-up)` for each ratio after the first.
fn with_speedups(times: &[f64]) -> String {
    RATIOS
        .iter()
        .zip(times)
        .map(|(ratio, t)| {
            if *ratio == 0.0 {
                format!("0: {t:.2} s")
            } else {
                format!("{ratio}: {t:.2} s ({:.2}x)", times[0] / t)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the case and prints its lines.
pub fn run(case: &TomeCase<'_>) -> anyhow::Result<()> {
    let checkpoint = Checkpoint::open(case.model)?;
    let architecture = infer_architecture(&checkpoint)?;
    println!(
        "token merging ({}; A1111's tomesd settings: first level, self-attention, 2×2 cells):",
        architecture.family_name()
    );
    for dtype in case.dtypes {
        let kind = parse_dtype(dtype)?;
        let sd = StableDiffusion::load(&checkpoint, &architecture, kind, Device::Cpu)?;
        for &side in case.sizes {
            let latent = i64::from(side / 8);
            let times = unet_calls(&sd, latent, kind, case.repeat);
            println!(
                "  UNet call {side}² ({latent}² latent, CFG batch 2), {dtype}: {}",
                with_speedups(&times)
            );
        }
    }
    let model = GenerationModel::load(case.model, Device::Cpu, Kind::Float, None)?;
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    // A whole job at the larger sizes takes most of an hour on a CPU.
    if let Some(&side) = case.sizes.first() {
        let init = picture(side, side);
        let mut times = Vec::new();
        let mut pictures = Vec::new();
        for ratio in RATIOS {
            let (seconds, image) = run_job(&model, &registry, &job(side, ratio), &init)?;
            times.push(seconds);
            pictures.push(image);
        }
        let drifts: Vec<String> = RATIOS
            .iter()
            .zip(&pictures)
            .skip(1)
            .map(|(ratio, image)| {
                let (mean, most) = drift(&pictures[0], image);
                format!("{ratio}: mean |Δ| {mean:.2}, max {most}")
            })
            .collect();
        println!(
            "  img2img job {side}², DPM++ 2M Karras, 20 steps, strength 0.75, fp32: {}; drift from ratio 0 (8-bit levels) {}",
            with_speedups(&times),
            drifts.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_the_mean_and_largest_level_difference() {
        let a = RgbImage::from_pixel(2, 1, image::Rgb([10, 20, 30]));
        let mut b = a.clone();
        b.put_pixel(1, 0, image::Rgb([16, 20, 30]));
        assert_eq!(drift(&a, &b), (1.0, 6));
        assert_eq!(drift(&a, &a), (0.0, 0));
    }
}
