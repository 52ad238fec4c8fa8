//! Whole img2img jobs against diffusers' `StableDiffusionImg2ImgPipeline` on the same weights:
//! the job alone with the model loaded (interleaved medians), and a fresh process each from
//! loading the file to the PNG, with its peak RSS. On CUDA the jobs run in the first
//! `--dtypes` dtype, and the loaded-model table adds the reference's CUDA allocator peak.

use std::path::Path;

use anyhow::Context;
use serde_json::json;

use super::context::BenchContext;
use super::figures::{params, picture, time_job};
use super::reference::{interleaved, job_process, Reference, ReferenceScript};
use super::BenchArgs;
use crate::checkpoint::Checkpoint;
use crate::device::parse_dtype;
use crate::models::{CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use crate::pipeline::model::GenerationModel;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::tiny_model::{write_tiny_model, TinyModelSpec};

/// The memory target at 512²: the fp32 weights plus this much (the 1.2 GB).
const RSS_HEADROOM_MIB: f64 = 1144.0;

/// Bytes of the three networks' weights in fp32.
fn fp32_weights_mib(model: &Path) -> anyhow::Result<f64> {
    let checkpoint = Checkpoint::open(model)?;
    let parameters: u64 = [UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX]
        .iter()
        .map(|prefix| checkpoint.size_under(prefix).0)
        .sum();
    Ok(parameters as f64 * 4.0 / (1024.0 * 1024.0))
}

/// Runs the job cases and prints their tables.
pub fn run(
    script: &ReferenceScript,
    model: &Path,
    threads: i32,
    args: &BenchArgs,
    bench: &BenchContext,
) -> anyhow::Result<()> {
    let repeat = args.repeat;
    // The CPU comparison has always run the jobs in fp32; a GPU runs them as users do there.
    let dtype = if bench.is_cuda() {
        args.dtypes.first().map_or("fp16", String::as_str)
    } else {
        "fp32"
    };
    let kind = parse_dtype(dtype)?;
    let work = tempfile::tempdir()?;
    let init_path = work.path().join("init.png");
    let init = picture(512, 512);
    init.save(&init_path)?;
    let tiny = work.path().join("tiny.safetensors");
    write_tiny_model(&TinyModelSpec::tiny(0), &tiny)?;
    let text = |path: &Path| path.to_string_lossy().into_owned();
    let (model_arg, tiny_arg, init_arg) = (text(model), text(&tiny), text(&init_path));

    println!("whole img2img jobs against diffusers' img2img pipeline (Euler, CFG 7, strength 1, {dtype}, one image):");
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    let mut reference = Reference::start(script, model, threads)?;
    println!("{}", bench.header(&mut reference, &[dtype.to_string()])?);
    print!(
        "{:<34} {:>12} {:>12} {:>8}",
        "job, model loaded", "sdhost s", "diffusers s", "ratio"
    );
    if bench.is_cuda() {
        // tch has no binding for the caching allocator's statistics: only diffusers' is known.
        print!(" {:>11} {:>11}", "sdhost MiB", "diff. MiB");
    }
    println!();
    for (label, path, size, steps) in [
        ("tiny model, 512², 20 steps", &tiny_arg, 512u32, 20usize),
        ("SD 1.5, 256², 4 steps", &model_arg, 256, 4),
    ] {
        let generation = GenerationModel::load(Path::new(path), bench.device, kind, None)?;
        let job = params(size, size, steps, 1.0);
        let mut their_peak = 0.0f64;
        let (mine, theirs) = interleaved(
            repeat,
            || {
                // A job ends in host pixels, which waits for the device: only its start needs
                // the queue drained.
                bench.synchronize();
                time_job(&generation, &registry, &job, &init, None)
            },
            || {
                let answer = reference.ask(json!({
                    "op": "img2img", "model": path, "init": init_arg, "size": size,
                    "steps": steps, "dtype": dtype,
                }))?;
                their_peak = their_peak.max(answer["peak_mib"].as_f64().unwrap_or(0.0));
                answer["seconds"]
                    .as_f64()
                    .with_context(|| format!("reference answered {answer}"))
            },
        )?;
        print!(
            "{label:<34} {mine:>12.3} {theirs:>12.3} {:>8.3}",
            mine / theirs
        );
        if bench.is_cuda() {
            print!(" {:>11} {their_peak:>11.0}", "n/a");
        }
        println!();
    }
    drop(reference);

    if bench.is_cuda() {
        println!(
            "(processes on {}: MiB is the host's peak RSS, not the GPU's memory)",
            bench.name
        );
    }
    println!(
        "{:<34} {:>12} {:>12} {:>8} {:>11} {:>11} {:>8}",
        "process, file to PNG",
        "sdhost s",
        "diffusers s",
        "ratio",
        "sdhost MiB",
        "diff. MiB",
        "ratio"
    );
    let sdhost = std::env::current_exe()?;
    let threads = threads.to_string();
    let out_dir = text(&work.path().join("out"));
    let out_png = text(&work.path().join("diffusers.png"));
    let mut sd15_512_rss = None;
    for (label, path, size, steps) in [
        ("tiny model, 512², 20 steps", &tiny_arg, "512", "20"),
        ("SD 1.5, 256², 4 steps", &model_arg, "256", "4"),
        ("SD 1.5, 512², 1 step", &model_arg, "512", "1"),
    ] {
        let (mine, my_rss) = job_process(
            &sdhost,
            &[
                "img2img",
                "--model",
                path,
                "--init-image",
                &init_arg,
                "--prompt",
                "a lighthouse on a cliff",
                "--sampler",
                "Euler",
                "--width",
                size,
                "--height",
                size,
                "--steps",
                steps,
                "--denoising-strength",
                "1",
                "--seed",
                "1",
                "--threads",
                &threads,
                "--device",
                &bench.name,
                "--dtype",
                dtype,
                "--out-dir",
                &out_dir,
            ],
        )?;
        let (theirs, their_rss) = job_process(
            &script.python,
            &[
                &text(&script.script),
                "--job",
                path,
                &threads,
                &init_arg,
                size,
                steps,
                &out_png,
                &bench.name,
                dtype,
            ],
        )?;
        println!(
            "{label:<34} {mine:>12.1} {theirs:>12.1} {:>8.2} {my_rss:>11.0} {their_rss:>11.0} {:>8.2}",
            mine / theirs,
            my_rss / their_rss
        );
        if path == &model_arg && size == "512" {
            sd15_512_rss = Some(my_rss);
        }
    }
    // The RSS target is the CPU's: on CUDA the weights live in the GPU's memory.
    if let Some(rss) = sd15_512_rss.filter(|_| !bench.is_cuda()) {
        let weights = fp32_weights_mib(model)?;
        println!(
            "peak RSS at 512²: {rss:.0} MiB = fp32 weights {weights:.0} MiB + {:.0} MiB (target + {RSS_HEADROOM_MIB:.0})",
            rss - weights
        );
    }
    Ok(())
}
