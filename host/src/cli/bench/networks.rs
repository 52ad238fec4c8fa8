//! The networks side by side: UNet step, VAE encode and decode, CLIP, each against diffusers'
//! on the same weights; the GEMM rate, the UNet's efficiency against it and bf16's speed-up.

use std::path::Path;

use anyhow::Context;
use serde_json::json;
use tch::{Kind, Tensor};

use super::context::BenchContext;
use super::reference::{interleaved, median, Reference, ReferenceScript};
use super::BenchArgs;
use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::device::parse_dtype;
use crate::models::unet::UNetConfig;
use crate::models::StableDiffusion;

/// FLOPs of one SD 1.5 UNet call at 64×64 latent with a CFG batch of 2 (1.61 TFLOP).
const SD15_UNET_FLOPS: f64 = 1.61e12;

/// The network cases: (case name, reference op, size).
const CASES: [(&str, &str, i64); 4] = [
    ("unet", "unet", 64),
    ("vae-encode", "vae_encode", 512),
    ("vae-decode", "vae_decode", 512),
    ("clip", "clip", 0),
];

/// One timed call of a network case on sdhost's side, its inputs already on the device.
fn time_ours(
    sd: &StableDiffusion,
    op: &str,
    size: i64,
    kind: Kind,
    context_width: i64,
    bench: &BenchContext,
) -> f64 {
    let on = (kind, bench.device);
    match op {
        "unet" => {
            let x = Tensor::randn([2, 4, size, size], on);
            let t = Tensor::from_slice(&[500.0f32, 500.0]).to_device(bench.device);
            let context = Tensor::randn([2, 77, context_width], on);
            bench.seconds(|| sd.unet.forward(&x, &t, &context, None))
        }
        "vae_encode" => {
            let image = Tensor::rand([1, 3, size, size], on) * 2.0 - 1.0;
            bench.seconds(|| sd.vae.encode(&image).mean)
        }
        "vae_decode" => {
            let latent = Tensor::randn([1, 4, size / 8, size / 8], on);
            bench.seconds(|| sd.vae.decode(&latent))
        }
        _ => {
            let ids = Tensor::randint(49000, [2, 77], (Kind::Int64, bench.device));
            bench.seconds(|| sd.text.context_of_ids(&ids))
        }
    }
}

/// Runs the network cases `wants` asks for and prints their table.
pub fn run(
    script: &ReferenceScript,
    model: &Path,
    threads: i32,
    args: &BenchArgs,
    bench: &BenchContext,
    wants: &dyn Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let cases: Vec<_> = CASES.iter().filter(|(case, _, _)| wants(case)).collect();
    if cases.is_empty() && !wants("gemm") {
        return Ok(());
    }
    let checkpoint = Checkpoint::open(model)?;
    let architecture = infer_architecture(&checkpoint)?;
    println!("networks ({}):", architecture.family_name());
    let mut reference = if cases.is_empty() {
        None
    } else {
        let mut reference = Reference::start(script, model, threads)?;
        println!("{}", bench.header(&mut reference, &args.dtypes)?);
        Some(reference)
    };
    println!(
        "{:<32} {:>12} {:>12} {:>8}",
        "case", "sdhost s", "diffusers s", "ratio"
    );
    let mut unet_times = Vec::new();
    if let Some(reference) = &mut reference {
        for dtype in &args.dtypes {
            let kind = parse_dtype(dtype)?;
            let sd = StableDiffusion::load(&checkpoint, &architecture, kind, bench.device)?;
            let context_width = architecture.unet.context_dim;
            for &&(case, op, size) in &cases {
                let (mine, theirs) = interleaved(
                    args.repeat,
                    || Ok(time_ours(&sd, op, size, kind, context_width, bench)),
                    || reference.time(json!({"op": op, "dtype": dtype, "size": size})),
                )?;
                let label = match size {
                    0 => format!("{case} {dtype} (2 chunks)"),
                    64 => format!("{case} {dtype} 64x64 latent, CFG 2"),
                    _ => format!("{case} {dtype} {size}x{size}"),
                };
                println!(
                    "{label:<32} {mine:>12.3} {theirs:>12.3} {:>8.3}",
                    mine / theirs
                );
                if op == "unet" {
                    unet_times.push((dtype.clone(), mine));
                }
            }
        }
    }
    if wants("gemm") {
        // The FLOP count is the SD 1.5 UNet's: only meaningful for that architecture.
        let sd15 = architecture.unet == UNetConfig::sd15(4);
        for dtype in &args.dtypes {
            let kind = parse_dtype(dtype)?;
            let n = 2048;
            let a = Tensor::randn([n, n], (kind, bench.device));
            let b = Tensor::randn([n, n], (kind, bench.device));
            bench.seconds(|| a.matmul(&b));
            let time = median(
                (0..args.repeat.max(1))
                    .map(|_| bench.seconds(|| a.matmul(&b)))
                    .collect(),
            );
            let flops = 2.0 * (n as f64).powi(3) / time;
            print!("gemm {dtype} {n}x{n}: {:.1} GFLOP/s", flops / 1e9);
            if let Some((_, unet)) = unet_times.iter().find(|(d, _)| d == dtype && sd15) {
                let efficiency = SD15_UNET_FLOPS / unet / flops;
                print!("; UNet efficiency {efficiency:.2} of it (target 0.7)");
            }
            println!();
        }
    }
    if let (Some((_, fp32)), Some((_, bf16))) = (
        unet_times.iter().find(|(d, _)| d == "fp32"),
        unet_times.iter().find(|(d, _)| d == "bf16"),
    ) {
        println!(
            "UNet bf16 speed-up over fp32: {:.2}x (target 1.7x)",
            fp32 / bf16
        );
    }
    Ok(())
}

/// Layout and grad-mode variants of the UNet call on the reference side (the same libtorch
/// kernels sdhost calls), each against the default: channels-last tensors, and `no_grad`
/// instead of inference mode.
pub fn variants(
    script: &ReferenceScript,
    model: &Path,
    threads: i32,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let mut reference = Reference::start(script, model, threads)?;
    println!("UNet call variants on the reference side, 64x64 latent, CFG 2 (variant / default):");
    for dtype in &args.dtypes {
        let default = json!({"op": "unet", "dtype": dtype, "size": 64});
        for (label, variant) in [
            (
                "channels-last",
                json!({"op": "unet", "dtype": dtype, "size": 64, "channels_last": true}),
            ),
            (
                "no_grad instead of inference mode",
                json!({"op": "unet", "dtype": dtype, "size": 64, "grad_mode": "no_grad"}),
            ),
        ] {
            // Both sides are the one reference process, so they alternate here by hand.
            reference.time(variant.clone())?;
            reference.time(default.clone())?;
            let (mut with, mut without) = (Vec::new(), Vec::new());
            for _ in 0..args.repeat.max(1) {
                with.push(reference.time(variant.clone())?);
                without.push(reference.time(default.clone())?);
            }
            let (with, without) = (median(with), median(without));
            println!(
                "  {dtype} {label:<36} {with:>8.3} s vs {without:>8.3} s = {:.3}",
                with / without
            );
        }
    }
    Ok(())
}

/// Where a UNet call's time goes in fp32 and, when `dtypes` has it, bf16, by operator category
/// (the reference's profiler over the same kernels), with each category's bf16 speed-up.
pub fn profile(
    script: &ReferenceScript,
    model: &Path,
    threads: i32,
    dtypes: &[String],
) -> anyhow::Result<()> {
    let mut reference = Reference::start(script, model, threads)?;
    let profiled: Vec<&str> = ["fp32", "bf16"]
        .into_iter()
        .filter(|dtype| *dtype == "fp32" || dtypes.iter().any(|d| d == dtype))
        .collect();
    let mut parts = Vec::new();
    for dtype in &profiled {
        let command = json!({"op": "profile", "dtype": dtype, "size": 64});
        reference.ask(command.clone())?; // warm-up
        parts.push(reference.ask(command)?);
    }
    let categories = |answer: &serde_json::Value| -> anyhow::Result<Vec<(String, f64)>> {
        let ops = answer["ops"]
            .as_array()
            .with_context(|| format!("the reference's profile answered {answer}"))?;
        Ok(ops
            .iter()
            .filter_map(|pair| Some((pair[0].as_str()?.to_string(), pair[1].as_f64()?)))
            .collect())
    };
    let ops = parts
        .iter()
        .map(categories)
        .collect::<anyhow::Result<Vec<_>>>()?;
    // One column per profiled dtype, and bf16's speed-up when both were profiled.
    let row = |label: &str, values: &[f64]| {
        let columns: String = values.iter().map(|v| format!(" {v:>9.3}")).collect();
        match values {
            [fp32, bf16] => println!("  {label:<24}{columns} {:>8.2}x", fp32 / bf16),
            _ => println!("  {label:<24}{columns}"),
        }
    };
    println!("UNet call by operator category, 64x64 latent, CFG 2 (self CPU seconds):");
    let columns: String = profiled.iter().map(|d| format!(" {d:>9}")).collect();
    let speed_up = if profiled.len() == 2 {
        "  speed-up"
    } else {
        ""
    };
    println!("  {:<24}{columns}{speed_up}", "category");
    for (i, (category, _)) in ops[0].iter().enumerate() {
        let values: Vec<f64> = ops
            .iter()
            .map(|o| o.get(i).map_or(f64::NAN, |(_, seconds)| *seconds))
            .collect();
        row(category, &values);
    }
    let totals: Vec<f64> = parts
        .iter()
        .map(|part| part["seconds"].as_f64().unwrap_or(f64::NAN))
        .collect();
    row("wall (profiled)", &totals);
    Ok(())
}
