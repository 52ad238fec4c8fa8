//! The cache figures of `sdhost bench` (issue #26): a second job's prompt encoding with the
//! conditioning cache, a checkpoint made ready from a warm page cache stage by stage, and a
//! switch between two checkpoints kept loaded (`--checkpoints-limit 2`) through the daemon's
//! worker.

use std::path::Path;

use std::time::Instant;

use anyhow::Context;
use tch::{Device, Kind};

use crate::checkpoint::{
    default_cache_dir, detect_prediction, infer_architecture, Checkpoint, ModelHashes,
};

use crate::daemon::worker::Worker;

use crate::models::StableDiffusion;
use crate::pipeline::img2img::Img2ImgJob;
use crate::pipeline::model::GenerationModel;
use crate::sampling::noise_levels::NoiseLevels;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};

/// Seconds `f` takes.
fn seconds<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed().as_secs_f64())
}

/// Prints the prompt encoding of a first job and of a second job with the same prompts (the
/// conditioning cache's hit), on `model` in fp32.
pub fn print_conditioning(model_path: &Path) -> anyhow::Result<()> {
    let model = GenerationModel::load(model_path, Device::Cpu, Kind::Float, None)?;
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    let params = crate::request::GenerationRequest {
        prompt: "a photograph of an astronaut riding a horse on the moon, [detailed:sharp:0.5], \
                 (high quality:1.2)"
            .into(),
        negative_prompt: "blurry, low quality".into(),
        ..super::figures::params(512, 512, 20, 0.75)
    };
    let encode = |params: &crate::request::GenerationRequest| -> anyhow::Result<f64> {
        let job = Img2ImgJob::prepare(&model, &registry, params)?;
        let networks = job.activate_networks();
        let (conditioning, took) = seconds(|| job.condition(&networks));
        conditioning?;
        Ok(took)
    };
    // The text encoder's first call in a process is slower (kernel set-up): not timed.
    encode(&crate::request::GenerationRequest {
        prompt: "warm-up".into(),
        ..params.clone()
    })?;
    let first = encode(&params)?;
    let second = encode(&params)?;
    let (hits, misses) = model
        .conditionings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .stats();
    anyhow::ensure!(
        (hits, misses) == (1, 2),
        "the second job did not hit the cache"
    );
    println!(
        "prompt conditioning (prompt with an edit at step 10 + negative prompt, SD 1.5 fp32): first job {:.1} ms, second job with the same prompts {:.3} ms (cache hit, no text-encoder call; target 0)",
        first * 1e3,
        second * 1e3
    );
    Ok(())
}

/// Prints how long `model` takes to be ready from a warm page cache, stage by stage, in fp32
/// and bf16, then the time of switches between two checkpoints kept loaded.
pub fn print_ready_and_switch(model: &Path, work: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::metadata(model)?.len() as f64 / 1e9;
    // Warm the page cache and the hash cache.
    drop(GenerationModel::load(
        model,
        Device::Cpu,
        Kind::Float,
        None,
    )?);
    for (kind, label) in [(Kind::Float, "fp32"), (Kind::BFloat16, "bf16")] {
        let (checkpoint, open) = seconds(|| -> anyhow::Result<_> {
            let checkpoint = Checkpoint::open(model)?;
            let architecture = infer_architecture(&checkpoint)?;
            Ok((checkpoint, architecture))
        });
        let (checkpoint, architecture) = checkpoint?;
        let (sd, networks) =
            seconds(|| StableDiffusion::load(&checkpoint, &architecture, kind, Device::Cpu));
        let sd = sd?;
        let (_, levels) = seconds(|| -> anyhow::Result<()> {
            NoiseLevels::from_checkpoint(&checkpoint)?;
            detect_prediction(&checkpoint, &architecture, &sd.unet);
            Ok(())
        });
        let (_, hash) = seconds(|| ModelHashes::cached(model, default_cache_dir().as_deref()));
        drop(sd);
        let (ready, whole) = seconds(|| GenerationModel::load(model, Device::Cpu, kind, None));
        drop(ready?);
        println!(
            "checkpoint ready, {bytes:.1} GB fp16 file, warm page cache, as {label}: {whole:.2} s (target 2 s): open + architecture {:.3} s, networks (copy out of the map, fp16 → {label}) {networks:.2} s, noise levels + prediction {:.3} s, cached hash {:.3} s",
            open, levels, hash
        );
    }

    // Two checkpoints: the benchmark file and a link to it under another name.
    let dir = work.join("switch");
    std::fs::create_dir_all(&dir)?;
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    for link in [&a, &b] {
        if std::fs::hard_link(model, link).is_err() {
            std::os::unix::fs::symlink(model, link).context("link the benchmark model")?;
        }
        ModelHashes::cached(link, default_cache_dir().as_deref())?;
    }
    let mut worker = bench_worker(&dir, &a, 2)?;
    let mut select = |name: &str| -> anyhow::Result<f64> {
        let (done, took) = seconds(|| worker.load_checkpoint(name, false));
        done.map_err(|(_, message)| anyhow::anyhow!(message))?;
        Ok(took)
    };
    let load = select("b")?;
    let to_a = select("a")?;
    let to_b = select("b")?;
    println!(
        "checkpoint switch with --checkpoints-limit 2 (SD 1.5 fp32): loading the second {load:.2} s, switching back {:.3} ms and again {:.3} ms (target ≤ 0.5 s)",
        to_a * 1e3,
        to_b * 1e3
    );
    Ok(())
}

/// A daemon worker over the checkpoints of `dir` with `first` loaded, keeping `limit`.
fn bench_worker(dir: &Path, first: &Path, limit: usize) -> anyhow::Result<Worker> {
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    Ok(Worker::over_models(dir, first, limit, registry)?)
}
