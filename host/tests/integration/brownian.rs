//! The SDE samplers' Brownian-tree noise against A1111's, which is k-diffusion's
//! `BrownianTreeNoiseSampler` over torchsde 0.2.6's `BrownianTree` with torchsde's draws made
//! by A1111's `randn_local` (tests/reference/brownian_reference.py runs the real packages).
//!
//! Compared: numpy's `SeedSequence` states word for word; the tree's normalised increments for
//! a query sequence with repeated, reversed, nested and out-of-range intervals, per RNG source
//! (≤ 1e-6); and the four SDE samplers' final latents on a toy model, with a batch of two seeds
//! (one above 2³²) and the tree over the whole schedule, for full and img2img-truncated
//! schedules (≤ 1e-4). A Brownian path is rough, so anything short of the same draws at the
//! same times fails these by orders of magnitude. Statistical checks of the noise (variance,
//! independence, determinism) and of the samplers on a job's noise follow.

use std::collections::HashMap;

use crate::common::{assert_close, read_tensors, run_reference};
use sdhost::rng::seed_sequence::SeedSequence;
use sdhost::rng::{ImageRng, RngSource};
use sdhost::sampling::brownian::BrownianTreeNoise;
use sdhost::sampling::noise::{BrownianNoise, JobNoise};
use sdhost::sampling::plan::{SamplerSettings, SamplingPlan};
use sdhost::sampling::plugins::{SampleRequest, SamplerRegistry};
use sdhost::sampling::session::{Denoise, StepFailure};
use sdhost_plugin_api::Flow;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const SHAPE: [i64; 3] = [4, 16, 16];
/// Tree increments: the same draws through the same float32 arithmetic.
const INCREMENT_TOLERANCE: f64 = 1e-6;
/// Final latents of a whole sampler run (relative, see `common::relative_error`).
const SAMPLER_TOLERANCE: f64 = 1e-4;
/// A batch of two distinct seeds, one of them above 2³² (two entropy words for numpy).
const SEEDS: [u64; 2] = [3_456_789_012, (1 << 40) + 17];

/// Runs the reference on `cases` and returns each case's tensors.
fn reference(cases: &[Value]) -> Vec<HashMap<String, Tensor>> {
    let dir = tempfile::tempdir().unwrap();
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(cases).unwrap()).unwrap();
    run_reference(
        "brownian_reference.py",
        &[cases_file.as_os_str(), dir.path().as_os_str()],
    );
    (0..cases.len())
        .map(|i| read_tensors(&dir.path().join(format!("case_{i}.safetensors"))))
        .collect()
}

/// The reference's name for a device.
fn device_name(device: Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_device(Device::Cpu).to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn seed_sequence_states_equal_numpys() {
    // (entropy, spawn key, pool size, words)
    let items: [(u64, Vec<u64>, usize, usize); 9] = [
        (0, vec![], 4, 5),
        (1, vec![], 4, 9),
        (12345, vec![], 24, 3),
        (u64::from(u32::MAX), vec![0, 0], 24, 4),
        (1 << 32, vec![1, 1], 24, 4),
        ((1 << 40) + 17, vec![5, 3], 24, 4),
        (u64::MAX, vec![(1 << 33) + 9, 34], 24, 6),
        (987_654_321, vec![7, 8, 9], 4, 4),
        (42, vec![], 8, 16),
    ];
    let cases = [json!({
        "kind": "seed_sequence",
        "items": items.iter().map(|(entropy, key, pool, words)| json!({
            "entropy": entropy, "spawn_key": key, "pool_size": pool, "words": words,
        })).collect::<Vec<_>>(),
    })];
    let expected = &reference(&cases)[0];
    for (j, (entropy, key, pool, words)) in items.iter().enumerate() {
        let keys: Vec<u128> = key.iter().map(|&k| u128::from(k)).collect();
        let sequence = SeedSequence::new(u128::from(*entropy), &keys, *pool).unwrap();
        let u32s: Vec<i64> = Vec::try_from(&expected[&format!("u32.{j}")]).unwrap();
        let u64s: Vec<i64> = Vec::try_from(&expected[&format!("u64.{j}")]).unwrap();
        let ours32: Vec<i64> = sequence
            .generate_state_u32(*words)
            .into_iter()
            .map(i64::from)
            .collect();
        // numpy's uint64 bits, stored as int64.
        let ours64: Vec<i64> = sequence
            .generate_state_u64(*words)
            .into_iter()
            .map(|w| w as i64)
            .collect();
        assert_eq!(ours32, u32s, "uint32 state of item {j}");
        assert_eq!(ours64, u64s, "uint64 state of item {j}");
    }
    println!("SeedSequence: {} states equal numpy's", 2 * items.len());
}

/// (σ, σ_next) queries in the order asked: repeated, reversed, nested, touching the ends of
/// the range, past them, and a few grid steps wide.
const QUERIES: [(f64, f64); 16] = [
    (14.614642, 10.0),
    (10.0, 14.614642),
    (14.614642, 10.0),
    (10.0, 3.0),
    (7.0, 5.0),
    (6.5, 5.75),
    (3.0, 10.0),
    (0.029_167_5, 14.614642),
    (0.5, 0.029_167_5),
    (2.000_002_5, 2.0),
    (0.1, 0.100_002),
    (20.0, 0.01),
    (1.234_567_8, 0.987_654_3),
    (0.987_654_3, 1.234_567_8),
    (0.3, 0.2999),
    (10.0, 3.0),
];

/// Checks the tree with draws from `source` and its arithmetic on `device`.
fn check_tree_against_reference(source: RngSource, device: Device, name: &str) {
    let cases = [json!({
        "kind": "tree", "source": name, "device": device_name(device), "seeds": SEEDS,
        "shape": SHAPE, "sigma_min": 0.029_167_5, "sigma_max": 14.614642, "queries": QUERIES,
    })];
    let expected = &reference(&cases)[0];
    let mut tree =
        BrownianTreeNoise::new(&SEEDS, SHAPE, source, device, 0.029_167_5, 14.614642).unwrap();
    let mut worst: f64 = 0.0;
    for (k, &(sigma, sigma_next)) in QUERIES.iter().enumerate() {
        let ours = tree.increment(sigma, sigma_next).unwrap();
        let diff = max_abs_diff(&ours, &expected[&format!("increment.{k}")]);
        assert!(
            diff <= INCREMENT_TOLERANCE,
            "{name} query {k} ({sigma}, {sigma_next}): max abs difference {diff:.3e}"
        );
        worst = worst.max(diff);
    }
    println!("{name} tree increments: max abs difference {worst:.3e}");
}

#[test]
fn tree_increments_equal_torchsde_with_the_cpu_source() {
    check_tree_against_reference(RngSource::Torch(Device::Cpu), Device::Cpu, "CPU");
}

#[test]
fn tree_increments_equal_torchsde_with_the_nv_source() {
    check_tree_against_reference(RngSource::Nv, Device::Cpu, "NV");
}

#[test]
fn tree_increments_equal_torchsde_with_the_gpu_source_where_cuda_is() {
    if !tch::Cuda::is_available() {
        println!("no CUDA device: the GPU source is not checked here");
        return;
    }
    let cuda = Device::Cuda(0);
    check_tree_against_reference(RngSource::Torch(cuda), cuda, "GPU");
}

/// samplers_reference.py's toy D(x, σ), with σ in float32 as k-diffusion passes it.
struct ToyDenoiser;

impl Denoise for ToyDenoiser {
    fn denoise(&mut self, x: &Tensor, sigma: f64, _: Option<f64>) -> Result<Tensor, StepFailure> {
        let s = Tensor::from(sigma as f32);
        Ok(x.tanh() / (&s + 1.0) + x * 0.5 / (&s * &s + 1.0).sqrt())
    }
}

fn registry() -> SamplerRegistry {
    crate::common::builtin_registry()
}

/// Runs a sampler case on `device` with our tree over the case's whole-schedule range.
fn run_sampler(
    registry: &SamplerRegistry,
    device: Device,
    case: &Value,
    tensors: &HashMap<String, Tensor>,
) {
    let name = case["sampler"].as_str().unwrap();
    let range = Vec::<f64>::try_from(&tensors["sigma_range"]).unwrap();
    let x = tensors["x"].to_device(device);
    let shape: [i64; 3] = x.size()[1..].try_into().unwrap();
    let source = RngSource::Torch(Device::Cpu);
    let tree = BrownianTreeNoise::new(&SEEDS, shape, source, device, range[0], range[1]).unwrap();
    let rng = ImageRng::with_source(&SEEDS, shape, source).unwrap();
    let mut noise = JobNoise::new(rng, device, Kind::Float).with_brownian(Box::new(tree));
    let result = registry
        .sample(
            registry.find(name).unwrap(),
            SampleRequest {
                x,
                sigmas: Vec::<f64>::try_from(&tensors["sigmas"]).unwrap(),
                timesteps: Vec::new(),
                alphas_cumprod: Vec::new(),
                options: Vec::new(),
                cancel: None,
            },
            &mut ToyDenoiser,
            &mut noise,
            &mut |_| Flow::Continue,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_close(
        &format!("{name} {case}"),
        &result.to_device(Device::Cpu),
        &tensors["expected"],
        SAMPLER_TOLERANCE,
    );
}

/// The four SDE samplers on `device`, each on a full (txt2img) and a truncated (img2img)
/// schedule, the tree always over the whole schedule as A1111 builds it.
fn check_samplers_against_reference(device: Device) {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let registry = registry();
    let mut cases = Vec::new();
    for (i, sampler) in [
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 100 + 2 * i as u64;
        let common = json!({"kind": "sampler", "sampler": sampler, "seeds": SEEDS,
                            "device": device_name(device)});
        // txt2img: the whole schedule; img2img: from step 5 of 12, the tree over all 12.
        let mut full = common.clone();
        full["steps"] = json!(10);
        full["seed"] = json!(seed);
        let mut img2img = common;
        img2img["steps"] = json!(12);
        img2img["start"] = json!(5);
        img2img["seed"] = json!(seed + 1);
        cases.extend([full, img2img]);
    }
    cases.push(
        json!({"kind": "sampler", "sampler": "DPM++ SDE", "seeds": SEEDS,
                      "device": device_name(device), "steps": 9, "schedule": "exponential",
                      "seed": 120}),
    );
    for (case, tensors) in cases.iter().zip(reference(&cases)) {
        run_sampler(&registry, device, case, &tensors);
    }
}

#[test]
fn sde_samplers_equal_k_diffusion_with_torchsde_noise_for_full_and_img2img_schedules() {
    check_samplers_against_reference(Device::Cpu);
}

#[test]
fn sde_samplers_equal_k_diffusion_on_cuda_where_cuda_is() {
    if !tch::Cuda::is_available() {
        println!("no CUDA device: the samplers on CUDA are not checked here");
        return;
    }
    check_samplers_against_reference(Device::Cuda(0));
}

fn stats(t: &Tensor) -> (f64, f64) {
    let mean = t.mean(Kind::Double).double_value(&[]);
    let var = t.var(true).double_value(&[]);
    (mean, var)
}

#[test]
fn increments_are_brownian_and_reproducible() {
    tch::set_num_threads(1);
    let cpu = RngSource::Torch(Device::Cpu);
    let mut tree = BrownianTreeNoise::new(&[7, 8], SHAPE, cpu, Device::Cpu, 0.03, 14.6).unwrap();
    // Unit variance after normalisation, zero mean, over long and short intervals.
    for (a, b) in [(14.6, 5.0), (1.0, 0.9), (0.05, 0.03)] {
        let inc = tree.increment(a, b).unwrap();
        assert_eq!(inc.size(), [2, 4, 16, 16]);
        let (mean, var) = stats(&inc);
        assert!(
            mean.abs() < 0.1 && (var - 1.0).abs() < 0.1,
            "({a}, {b}): mean {mean}, var {var}"
        );
    }
    // Additive: W(c) − W(a) = (W(b) − W(a)) + (W(c) − W(b)), whatever the query order.
    let (a, b, c) = (6.0, 2.5, 0.7);
    let bc = tree.increment(b, c).unwrap() * (b - c).sqrt();
    let ab = tree.increment(a, b).unwrap() * (a - b).sqrt();
    let ac = tree.increment(a, c).unwrap() * (a - c).sqrt();
    let diff = (&ab + &bc - &ac).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "not additive: {diff}");
    // Disjoint intervals are independent; the two images are independent.
    let corr = (&ab * &bc).mean(Kind::Double).double_value(&[]) / ((a - b) * (b - c)).sqrt();
    assert!(corr.abs() < 0.1, "correlated increments: {corr}");
    let images = ab.select(0, 0) * ab.select(0, 1);
    assert!(images.mean(Kind::Double).double_value(&[]).abs() / (a - b) < 0.1);
    // Reversed query: the sign flips (k-diffusion's convention).
    let ba = tree.increment(b, a).unwrap() * (a - b).sqrt();
    assert!((&ab + &ba).abs().max().double_value(&[]) < 1e-6);
    // Same seeds, same noise; another seed, other noise for its image only.
    let mut again = BrownianTreeNoise::new(&[7, 8], SHAPE, cpu, Device::Cpu, 0.03, 14.6).unwrap();
    let first = again.increment(a, b).unwrap() * (a - b).sqrt();
    assert!((&first - &ab).abs().max().double_value(&[]) < 1e-6);
    let mut other = BrownianTreeNoise::new(&[9, 8], SHAPE, cpu, Device::Cpu, 0.03, 14.6).unwrap();
    let third = other.increment(a, b).unwrap() * (a - b).sqrt();
    assert!(max_abs_diff(&third.select(0, 0), &ab.select(0, 0)) > 0.1);
    assert!(max_abs_diff(&third.select(0, 1), &ab.select(0, 1)) < 1e-6);
    // An empty range is refused; a single level (a one-step schedule) is not.
    assert!(BrownianTreeNoise::new(&[1], SHAPE, cpu, Device::Cpu, 0.0, 1.0).is_err());
    assert!(BrownianTreeNoise::new(&[1], SHAPE, cpu, Device::Cpu, 2.0, 1.0).is_err());
    assert!(BrownianTreeNoise::new(&[1], SHAPE, cpu, Device::Cpu, 2.0, 2.0).is_ok());
    assert!(tree.increment(1.0, 1.0).is_err());
}

struct Shrink;

impl Denoise for Shrink {
    fn denoise(&mut self, x: &Tensor, sigma: f64, _: Option<f64>) -> Result<Tensor, StepFailure> {
        Ok(x / (1.0 + sigma * sigma))
    }
}

#[test]
fn sde_samplers_run_on_job_noise() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let registry = registry();
    let levels = sdhost::sampling::noise_levels::NoiseLevels::sd_scaled_linear();
    let run = |sampler: &str| -> Tensor {
        let settings = SamplerSettings {
            sampler: sampler.into(),
            steps: 12,
            denoising_strength: 0.7,
            ..SamplerSettings::default()
        };
        let plan = SamplingPlan::new(&registry, &settings, &levels).unwrap();
        assert!(plan.sampler.info.brownian);
        let seeds = [3u64, 4];
        let mut rng = ImageRng::new(&seeds, SHAPE, Device::Cpu).unwrap();
        let init = Tensor::ones([2, 4, 16, 16], (Kind::Float, Device::Cpu));
        let x = plan.start_latent(&init, &rng.first().unwrap(), 0.0);
        let (min, max) = plan.brownian_range();
        let brownian = BrownianTreeNoise::new(
            &seeds,
            SHAPE,
            RngSource::Torch(Device::Cpu),
            Device::Cpu,
            min,
            max,
        )
        .unwrap();
        let mut noise =
            JobNoise::new(rng, Device::Cpu, Kind::Float).with_brownian(Box::new(brownian));
        registry
            .sample(
                plan.sampler,
                plan.request(x),
                &mut Shrink,
                &mut noise,
                &mut |_| Flow::Continue,
            )
            .unwrap()
    };
    for sampler in [
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
    ] {
        let a = run(sampler);
        let b = run(sampler);
        assert_eq!(a.size(), [2, 4, 16, 16]);
        assert!(
            a.isfinite().all().int64_value(&[]) == 1,
            "{sampler}: not finite"
        );
        // The exact denoiser of N(0, 1) data shrinks toward 0; the SDE noise keeps it random.
        let (_, var) = stats(&a);
        assert!(var > 0.05 && var < 5.0, "{sampler}: variance {var}");
        assert!(
            (&a - &b).abs().max().double_value(&[]) < 1e-6,
            "{sampler}: not reproducible"
        );
    }
}
