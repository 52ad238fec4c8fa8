//! `sdhost bench`: sdhost against diffusers on the same checkpoint, interleaved in one run
//! with the same threads and dtype, with medians and ratios, then sdhost's own figures
//! (docs/performance.md).

mod api;
mod batching;
mod caches;
mod context;
mod figures;
mod interrogate;
mod jobs;
mod lora;
mod memory;
mod networks;
mod reference;
mod sgm;
mod token_merging;
mod transport;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tch::Kind;

use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
use context::BenchContext;
use reference::ReferenceScript;

/// The cases a plain `sdhost bench` runs, in the order they run.
const CASES: &str =
    "unet,vae-encode,vae-decode,clip,gemm,variants,profile,jobs,memory,load,caches,switch,batching,drift,scaling,inpaint,lora,tome,transport,api";

/// Cases run only when named: they make multi-GB models once and an SDXL fp32 step needs about
/// 12 GB of memory.
const NATIVE_CASES: &str = "sd2-unet,sdxl-unet";

/// Cases run only when named that need no SD model: Interrogate CLIP and DeepBooru.
const OWN_MODEL_CASES: &str = "interrogate";

/// Arguments of `sdhost bench`.
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Checkpoint [default: a random-weight SD 1.5 made once in ~/.cache/sdhost/bench].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Timed runs per side and case (after one warm-up each).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Intra-op threads on both sides [default: the machine's cores].
    #[arg(long)]
    threads: Option<i32>,
    /// Dtypes to compare the networks in [default: fp32 on cpu, with bf16 where the CPU has
    /// bf16 instructions; fp16 on cuda].
    #[arg(long, value_delimiter = ',')]
    dtypes: Vec<String>,
    /// Device of both sides: cpu, cuda or cuda:N. On CUDA only the side-by-side cases run
    /// (unet, vae-encode, vae-decode, clip, gemm, jobs, batching); the others say they are
    /// CPU-only.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Cases to run: unet, vae-encode, vae-decode, clip, gemm (networks against diffusers),
    /// variants (channels-last and no_grad on the reference side), profile (the UNet's time by
    /// operator category in fp32 and bf16),
    /// jobs (whole img2img against diffusers' pipeline, with peak RSS), memory (peak memory by
    /// stage at 512²), load, caches (a second job's prompt encoding from the conditioning
    /// cache), switch (a checkpoint made ready, by stage, and switches between two kept
    /// loaded), batching (4 queued 512² img2img jobs as one joint batch against one after
    /// another, in the first dtype), drift, scaling, inpaint, lora (apply + restore of a rank-32 LoRA
    /// against a 20-step 512² job), tome (token merging ratios 0, 0.3, 0.5 side by side: UNet
    /// calls at --tome-sizes, a 20-step img2img job at the first with its time and picture
    /// drift), transport (sdhost's own figures), api (the A1111 HTTP API's
    /// overhead per 512² img2img request). Not in the default run,
    /// only when named: sd2-unet (SD 2.x 768-v UNet step at 768², context 1024) and sdxl-unet
    /// (SDXL UNet step at 1024² with the vector y), each against diffusers on full-size random
    /// weights made once in ~/.cache/sdhost/bench (not --model), with sdhost's peak RSS;
    /// interrogate (Interrogate CLIP per call with CLIP's text features computed every call as
    /// A1111 does, against sdhost's cached features; the cold first call; DeepBooru per call).
    #[arg(long, value_delimiter = ',', default_value = CASES)]
    only: Vec<String>,
    /// The tome case's picture sides (square): UNet calls at each, the whole job at the first.
    #[arg(long, value_delimiter = ',', default_value = "512,1024")]
    tome_sizes: Vec<u32>,
    /// The interrogate case's models: an A1111 models/ folder [default: tiny random models over
    /// the real category lists].
    #[arg(long, value_name = "DIR")]
    interrogate_models: Option<PathBuf>,
    /// The Python of the reference side [default: .venv/bin/python].
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// The reference script [default: tests/reference/bench_reference.py].
    #[arg(long, default_value = "tests/reference/bench_reference.py")]
    reference: PathBuf,
}

/// The default benchmark model: the SD 1.5 shapes with random weights, stored fp16.
fn default_model() -> anyhow::Result<PathBuf> {
    let dir = crate::checkpoint::default_cache_dir()
        .context("no cache folder; pass --model")?
        .join("bench");
    let path = dir.join("sd15-random-fp16.safetensors");
    if !path.exists() {
        std::fs::create_dir_all(&dir)?;
        eprintln!("bench: making {} (2.1 GB, once)", path.display());
        let spec = TinyModelSpec {
            preset: Preset::Sd15,
            inpainting: false,
            seed: 0,
            storage: Kind::Half,
        };
        write_tiny_model(&spec, &path)?;
    }
    Ok(path)
}

impl From<&BenchArgs> for ReferenceScript {
    fn from(args: &BenchArgs) -> Self {
        ReferenceScript {
            python: args.python.clone(),
            script: args.reference.clone(),
            device: args.device.clone(),
        }
    }
}

/// Runs the benchmark and prints its tables.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let context = BenchContext::new(&args.device)?;
    for case in &args.only {
        anyhow::ensure!(
            CASES
                .split(',')
                .chain(NATIVE_CASES.split(','))
                .chain(OWN_MODEL_CASES.split(','))
                .any(|known| known == case),
            "unknown bench case \"{case}\" (known: {CASES},{NATIVE_CASES},{OWN_MODEL_CASES})"
        );
    }
    for dtype in &args.dtypes {
        context.check_dtype(dtype)?;
    }
    for &side in &args.tome_sizes {
        anyhow::ensure!(
            side >= 64 && side % 8 == 0 && side <= crate::request::MAX_SIDE,
            "--tome-sizes {side}: a side is a multiple of 8 from 64 to {}",
            crate::request::MAX_SIDE
        );
    }
    anyhow::ensure!(!args.tome_sizes.is_empty(), "--tome-sizes needs a size");
    let mut args = args.clone();
    if args.dtypes.is_empty() {
        args.dtypes = context.default_dtypes();
        if let Some(line) = context.dtypes_left_out() {
            println!("{line}");
        }
    }
    args.only = context.runnable(&args.only);
    if args.only.is_empty() {
        return Ok(());
    }
    let args = &args;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();
    let wants = |case: &str| args.only.iter().any(|o| o == case);
    if args
        .only
        .iter()
        .all(|case| NATIVE_CASES.split(',').any(|native| native == case))
    {
        // The native-size cases bring their own models: no SD 1.5 model to make or name.
        println!(
            "sdhost bench: {threads} threads, {} timed runs per side, medians",
            args.repeat
        );
        return sgm::run(&ReferenceScript::from(args), threads, args, &wants);
    }
    if wants("interrogate") {
        interrogate::run(
            args.interrogate_models.as_deref(),
            &args.python,
            args.repeat,
        )?;
        if args.only.iter().all(|case| case == "interrogate") {
            return Ok(());
        }
    }
    if args.only.iter().all(|case| case == "api") {
        // The API's overhead needs no SD 1.5 model: its job is a tiny model's.
        println!("sdhost bench: {threads} threads");
        return api::run(tempfile::tempdir()?.path());
    }
    let model = match &args.model {
        Some(path) => path.clone(),
        None => default_model()?,
    };
    let script = ReferenceScript::from(args);
    println!(
        "sdhost bench: {}, {threads} threads, {} timed runs per side, medians",
        model.display(),
        args.repeat
    );
    networks::run(&script, &model, threads, args, &context, &wants)?;
    sgm::run(&script, threads, args, &wants)?;
    if wants("variants") {
        networks::variants(&script, &model, threads, args)?;
    }
    if wants("profile") {
        networks::profile(&script, &model, threads, &args.dtypes)?;
    }
    if wants("jobs") {
        jobs::run(&script, &model, threads, args, &context)?;
    }
    if wants("memory") {
        memory::profile(&model, 512)?;
    }
    if wants("batching") {
        batching::run(&model, &context, &args.dtypes[0], args.repeat)?;
    }
    figures::print_figures(&model, &wants)?;
    if wants("caches") {
        caches::print_conditioning(&model)?;
    }
    if wants("switch") {
        caches::print_ready_and_switch(&model, tempfile::tempdir()?.path())?;
    }
    if wants("tome") {
        token_merging::run(&token_merging::TomeCase {
            model: &model,
            sizes: &args.tome_sizes,
            dtypes: &args.dtypes,
            repeat: args.repeat,
        })?;
    }
    if wants("api") {
        api::run(tempfile::tempdir()?.path())?;
    }
    Ok(())
}
