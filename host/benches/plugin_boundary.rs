//! Cost of the sampler plugin boundary per step, against the same Euler loop called directly.
//!
//! Both runs use the same trivial denoiser (x/(1+σ²)) on a 64×64 latent (batch 1), which
//! isolates the boundary (handle bookkeeping and calls through the ABI); the overhead is then
//! printed as a share of one real model step, the tiny UNet with CFG (the cheapest there is). Run with `cargo bench --bench plugin_boundary` after `cargo build --release
//! --workspace`.

use std::time::{Duration, Instant};

use sdhost::sampling::denoiser::{CfgDenoiser, Guidance, Prediction};
use sdhost::sampling::noise_levels::NoiseLevels;
use sdhost::sampling::plugins::{PluginPaths, SampleRequest, SamplerRegistry};
use sdhost::sampling::session::{Denoise, Noise, StepFailure};
use sdhost_plugin_api::Flow;
use tch::{Kind, Tensor};

const SHAPE: [i64; 4] = [1, 4, 64, 64];
const STEPS: usize = 20;

struct Shrink;

impl Denoise for Shrink {
    fn denoise(&mut self, x: &Tensor, sigma: f64, _: Option<f64>) -> Result<Tensor, StepFailure> {
        Ok(x / (1.0 + sigma * sigma))
    }
}

struct Gaussian;

impl Noise for Gaussian {
    fn noise(&mut self) -> Result<Tensor, StepFailure> {
        Ok(Tensor::randn(SHAPE, (Kind::Float, tch::Device::Cpu)))
    }
    fn brownian_noise(&mut self, _: f64, _: f64) -> Result<Tensor, StepFailure> {
        self.noise()
    }
}

fn sigmas() -> Vec<f64> {
    // Karras, ρ = 7, SD1 range.
    let (min, max, rho) = (0.0291675f64, 14.614642f64, 7.0);
    let mut s: Vec<f64> = (0..STEPS)
        .map(|i| {
            let r = i as f64 / (STEPS - 1) as f64;
            (max.powf(1.0 / rho) + r * (min.powf(1.0 / rho) - max.powf(1.0 / rho))).powf(rho)
        })
        .collect();
    s.push(0.0);
    s
}

/// The Euler loop of the built-in plugin, written directly against tch.
fn direct_euler(denoiser: &mut dyn Denoise, noise: &mut dyn Noise, x: Tensor) -> Tensor {
    let sigmas = sigmas();
    let mut x = x;
    for i in 0..STEPS {
        let _unused = noise.noise().unwrap(); // A1111 draws churn noise every step
        let denoised = denoiser.denoise(&x, sigmas[i], None).unwrap();
        let d = (&x - &denoised) / sigmas[i];
        x = &x + d * (sigmas[i + 1] - sigmas[i]);
    }
    x
}

fn plugin_euler(
    registry: &SamplerRegistry,
    denoiser: &mut dyn Denoise,
    noise: &mut dyn Noise,
    x: Tensor,
) -> Tensor {
    let euler = registry.find("Euler").unwrap();
    let request = SampleRequest {
        x,
        sigmas: sigmas(),
        timesteps: vec![],
        alphas_cumprod: vec![],
        options: vec![],
        cancel: None,
    };
    registry
        .sample(euler, request, denoiser, noise, &mut |_| Flow::Continue)
        .unwrap()
}

/// Median time per step over `rounds` runs of `run`.
fn per_step(rounds: usize, mut run: impl FnMut() -> Tensor) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let _ = run();
            start.elapsed() / STEPS as u32
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

fn main() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let registry = SamplerRegistry::load(&PluginPaths {
        builtin: PluginPaths::discover(None).builtin,
        folder: None,
    });
    assert!(
        !registry.plugins().is_empty(),
        "build the workspace first: the built-in sampler plugin is missing"
    );
    let x = Tensor::randn(SHAPE, (Kind::Float, tch::Device::Cpu)) * 14.6;

    // Interleave the two to share any drift of the machine.
    let rounds = 31;
    let mut direct = Vec::new();
    let mut plugin = Vec::new();
    for _ in 0..5 {
        direct.push(per_step(rounds, || {
            direct_euler(&mut Shrink, &mut Gaussian, x.copy())
        }));
        plugin.push(per_step(rounds, || {
            plugin_euler(&registry, &mut Shrink, &mut Gaussian, x.copy())
        }));
    }
    direct.sort();
    plugin.sort();
    let (direct, plugin) = (direct[2], plugin[2]);
    let overhead = plugin.saturating_sub(direct);
    println!("64x64 latent, {STEPS} Euler steps, trivial denoiser (per step):");
    println!("  direct call   {:>9.1} µs", direct.as_secs_f64() * 1e6);
    println!("  through ABI   {:>9.1} µs", plugin.as_secs_f64() * 1e6);
    println!(
        "  ratio plugin/direct {:.3}   boundary overhead {:.1} µs/step",
        plugin.as_secs_f64() / direct.as_secs_f64(),
        overhead.as_secs_f64() * 1e6
    );

    // The cheapest real step: the tiny UNet with CFG (2 rows) on the same latent.
    let dir = std::env::temp_dir().join("sdhost-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny-bench.safetensors");
    let spec = sdhost::tiny_model::TinyModelSpec {
        preset: sdhost::tiny_model::Preset::Tiny,
        inpainting: false,
        seed: 1,
        storage: Kind::Float,
    };
    sdhost::tiny_model::write_tiny_model(&spec, &model).unwrap();
    let ckpt = sdhost::checkpoint::Checkpoint::open(&model).unwrap();
    let arch = sdhost::checkpoint::infer_architecture(&ckpt).unwrap();
    let sd =
        sdhost::models::StableDiffusion::load(&ckpt, &arch, Kind::Float, tch::Device::Cpu).unwrap();
    let levels = NoiseLevels::from_checkpoint(&ckpt).unwrap();
    let cond = || {
        vec![sdhost::prompt::conditioning::ScheduledCond {
            end_at_step: usize::MAX,
            cond: Tensor::zeros([77, 32], (Kind::Float, tch::Device::Cpu)).into(),
        }]
    };
    let guidance = Guidance {
        conds: vec![vec![sdhost::prompt::conditioning::CondPart {
            schedule: cond(),
            weight: 1.0,
        }]],
        unconds: vec![cond()],
        cfg_scale: 7.0,
    };
    let mut denoiser = CfgDenoiser::new(&sd.unet, &levels, Prediction::Epsilon, guidance);
    let mut calls: Vec<Duration> = (0..3)
        .map(|_| {
            let start = Instant::now();
            let _ = denoiser.denoise(&x, 3.0, None).unwrap();
            start.elapsed()
        })
        .collect();
    calls.sort();
    let model_step = calls[1];
    println!(
        "tiny UNet with CFG (2 rows), one model call: {:.1} ms",
        model_step.as_secs_f64() * 1e3
    );
    println!(
        "boundary overhead as a share of that step: {:.5}%",
        100.0 * overhead.as_secs_f64() / model_step.as_secs_f64()
    );
}
