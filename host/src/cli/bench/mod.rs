//! `sdhost bench`: sdhost's networks against diffusers' on the same checkpoint, interleaved in
//! one run with the same threads and dtype, with medians and ratios (docs/performance.md).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::device::parse_dtype;
use crate::models::StableDiffusion;
use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};

/// FLOPs of one SD 1.5 UNet call at 64×64 latent with a CFG batch of 2 (1.61 TFLOP).
const SD15_UNET_FLOPS: f64 = 1.61e12;

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
    /// Dtypes to compare.
    #[arg(long, value_delimiter = ',', default_value = "fp32,bf16")]
    dtypes: Vec<String>,
    /// Cases to run: unet, vae-encode, vae-decode, clip, gemm.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "unet,vae-encode,vae-decode,clip,gemm"
    )]
    only: Vec<String>,
    /// The Python of the reference side [default: .venv/bin/python].
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// The reference script [default: tests/reference/bench_reference.py].
    #[arg(long, default_value = "tests/reference/bench_reference.py")]
    reference: PathBuf,
}

/// The diffusers side, a process answering timing requests.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    fn start(args: &BenchArgs, model: &Path, threads: i32) -> anyhow::Result<Self> {
        let mut child = Command::new(&args.python)
            .arg(&args.reference)
            .arg(model)
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} {}",
                    args.python.display(),
                    args.reference.display()
                )
            })?;
        let stdin = child.stdin.take().context("reference stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("reference stdout")?);
        Ok(Reference {
            child,
            stdin,
            stdout,
        })
    }

    fn time(&mut self, op: &str, dtype: &str, size: i64) -> anyhow::Result<f64> {
        let command = serde_json::json!({"op": op, "dtype": dtype, "size": size});
        writeln!(self.stdin, "{command}")?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the reference process ended");
        }
        let answer: serde_json::Value = serde_json::from_str(&line)?;
        answer["seconds"]
            .as_f64()
            .with_context(|| format!("reference answered {answer}"))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{{\"op\": \"quit\"}}");
        let _ = self.child.wait();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn timed(f: impl FnOnce() -> Tensor) -> f64 {
    let start = Instant::now();
    let _ = f();
    start.elapsed().as_secs_f64()
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

/// Runs the benchmark and prints the table.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();
    let model = match &args.model {
        Some(path) => path.clone(),
        None => default_model()?,
    };
    let checkpoint = Checkpoint::open(&model)?;
    let architecture = infer_architecture(&checkpoint)?;
    let mut reference = Reference::start(args, &model, threads)?;
    println!(
        "sdhost bench: {} ({}), {threads} threads, {} timed runs per side, medians",
        model.display(),
        architecture.family(),
        args.repeat
    );
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "case", "sdhost s", "diffusers s", "ratio"
    );
    let wants = |case: &str| args.only.iter().any(|o| o == case);
    let mut unet_times = Vec::new();
    for dtype in &args.dtypes {
        let kind = parse_dtype(dtype)?;
        let sd = StableDiffusion::load(&checkpoint, &architecture, kind, Device::Cpu)?;
        let context_width = architecture.unet.context_dim;
        let cases: Vec<(&str, &str, i64)> = [
            ("unet", "unet", 64),
            ("vae-encode", "vae_encode", 512),
            ("vae-decode", "vae_decode", 512),
            ("clip", "clip", 0),
        ]
        .into_iter()
        .filter(|(case, _, _)| wants(case))
        .collect();
        for (case, op, size) in cases {
            let ours = || -> f64 {
                match op {
                    "unet" => {
                        let x = Tensor::randn([2, 4, size, size], (kind, Device::Cpu));
                        let t = Tensor::from_slice(&[500.0f32, 500.0]);
                        let context = Tensor::randn([2, 77, context_width], (kind, Device::Cpu));
                        timed(|| sd.unet.forward(&x, &t, &context))
                    }
                    "vae_encode" => {
                        let image =
                            Tensor::rand([1, 3, size, size], (kind, Device::Cpu)) * 2.0 - 1.0;
                        timed(|| sd.vae.encode(&image).mean)
                    }
                    "vae_decode" => {
                        let latent = Tensor::randn([1, 4, size / 8, size / 8], (kind, Device::Cpu));
                        timed(|| sd.vae.decode(&latent))
                    }
                    _ => {
                        let ids = Tensor::randint(49000, [2, 77], (Kind::Int64, Device::Cpu));
                        timed(|| sd.clip.encode(&ids, 1))
                    }
                }
            };
            // One warm-up each, then alternate so both sides see the same machine state.
            ours();
            reference.time(op, dtype, size)?;
            let (mut mine, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..args.repeat.max(1) {
                mine.push(ours());
                theirs.push(reference.time(op, dtype, size)?);
            }
            let (mine, theirs) = (median(mine), median(theirs));
            let label = match size {
                0 => format!("{case} {dtype} (2 chunks)"),
                64 => format!("{case} {dtype} 64x64 latent, CFG 2"),
                _ => format!("{case} {dtype} {size}x{size}"),
            };
            println!(
                "{label:<28} {mine:>12.3} {theirs:>12.3} {:>8.3}",
                mine / theirs
            );
            if op == "unet" {
                unet_times.push((dtype.clone(), mine));
            }
        }
    }
    if wants("gemm") {
        for dtype in &args.dtypes {
            let kind = parse_dtype(dtype)?;
            let n = 2048;
            let a = Tensor::randn([n, n], (kind, Device::Cpu));
            let b = Tensor::randn([n, n], (kind, Device::Cpu));
            timed(|| a.matmul(&b));
            let seconds = median(
                (0..args.repeat.max(1))
                    .map(|_| timed(|| a.matmul(&b)))
                    .collect(),
            );
            let flops = 2.0 * (n as f64).powi(3) / seconds;
            print!("gemm {dtype} {n}x{n}: {:.1} GFLOP/s", flops / 1e9);
            // The FLOP count is the SD 1.5 UNet's: only meaningful for that architecture.
            let sd15 = architecture.unet == crate::models::unet::UNetConfig::sd15(4);
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
    drop(reference);
    super::bench_figures::print_figures(&model, &wants)
}
