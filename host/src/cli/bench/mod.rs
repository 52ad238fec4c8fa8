//! `sdhost bench`: sdhost against diffusers on the same checkpoint, interleaved in one run
//! with the same threads and dtype, with medians and ratios, then sdhost's own figures
//! (docs/performance.md).

mod figures;
mod jobs;
mod lora;
mod memory;
mod networks;
mod reference;
mod transport;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tch::Kind;

use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
use reference::ReferenceScript;

/// Every case, in the order they run.
const CASES: &str =
    "unet,vae-encode,vae-decode,clip,gemm,variants,profile,jobs,memory,load,drift,scaling,inpaint,lora,transport";

/// Arguments of `sdhost bench`.
#[derive(Args)]
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
    /// Dtypes to compare the networks in.
    #[arg(long, value_delimiter = ',', default_value = "fp32,bf16")]
    dtypes: Vec<String>,
    /// Cases to run: unet, vae-encode, vae-decode, clip, gemm (networks against diffusers),
    /// variants (channels-last and no_grad on the reference side), profile (the UNet's time by
    /// operator category in fp32 and bf16),
    /// jobs (whole img2img against diffusers' pipeline, with peak RSS), memory (peak memory by
    /// stage at 512²), load, drift, scaling, inpaint, lora (apply + restore of a rank-32 LoRA
    /// against a 20-step 512² job), transport (sdhost's own figures).
    #[arg(long, value_delimiter = ',', default_value = CASES)]
    only: Vec<String>,
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

/// Runs the benchmark and prints its tables.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    for case in &args.only {
        anyhow::ensure!(
            CASES.split(',').any(|known| known == case),
            "unknown bench case \"{case}\" (known: {CASES})"
        );
    }
    for dtype in &args.dtypes {
        // The reference side knows these two; fp16 convolutions have no fast CPU kernels.
        anyhow::ensure!(
            matches!(dtype.as_str(), "fp32" | "bf16"),
            "bench dtype \"{dtype}\": the CPU comparison runs fp32 and bf16"
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();
    let model = match &args.model {
        Some(path) => path.clone(),
        None => default_model()?,
    };
    let script = ReferenceScript {
        python: args.python.clone(),
        script: args.reference.clone(),
    };
    let wants = |case: &str| args.only.iter().any(|o| o == case);
    println!(
        "sdhost bench: {}, {threads} threads, {} timed runs per side, medians",
        model.display(),
        args.repeat
    );
    networks::run(&script, &model, threads, args, &wants)?;
    if wants("variants") {
        networks::variants(&script, &model, threads, args)?;
    }
    if wants("profile") {
        networks::profile(&script, &model, threads)?;
    }
    if wants("jobs") {
        jobs::run(&script, &model, threads, args.repeat)?;
    }
    if wants("memory") {
        memory::profile(&model, 512)?;
    }
    figures::print_figures(&model, &wants)
}
