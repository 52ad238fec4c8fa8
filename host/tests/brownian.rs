//! The Brownian-tree noise of SDE samplers: a real Brownian motion per image seed
//! (consistent, right variance, independent increments, order-independent), and an SDE sampler
//! run through a job's noise.

use sdhost::rng::ImageRng;
use sdhost::sampling::brownian::BrownianTreeNoise;
use sdhost::sampling::noise::{BrownianNoise, JobNoise};
use sdhost::sampling::plan::{SamplerSettings, SamplingPlan};
use sdhost::sampling::plugins::{PluginPaths, SamplerRegistry};
use sdhost::sampling::session::{Denoise, StepFailure};
use sdhost_plugin_api::Flow;
use tch::{Kind, Tensor};

const SHAPE: [i64; 3] = [4, 16, 16];

fn stats(t: &Tensor) -> (f64, f64) {
    let mean = t.mean(Kind::Double).double_value(&[]);
    let var = t.var(true).double_value(&[]);
    (mean, var)
}

#[test]
fn increments_are_brownian_and_reproducible() {
    tch::set_num_threads(1);
    let mut tree = BrownianTreeNoise::new(&[7, 8], SHAPE, 0.03, 14.6).unwrap();
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
    // Same seeds, same noise; another seed, other noise.
    let mut again = BrownianTreeNoise::new(&[7, 8], SHAPE, 0.03, 14.6).unwrap();
    let first = again.increment(a, b).unwrap() * (a - b).sqrt();
    assert!((&first - &ab).abs().max().double_value(&[]) < 1e-6);
    let mut other = BrownianTreeNoise::new(&[9, 8], SHAPE, 0.03, 14.6).unwrap();
    let third = other.increment(a, b).unwrap() * (a - b).sqrt();
    assert!(
        (third.select(0, 0) - ab.select(0, 0))
            .abs()
            .max()
            .double_value(&[])
            > 0.1
    );
    assert!(
        (third.select(0, 1) - ab.select(0, 1))
            .abs()
            .max()
            .double_value(&[])
            < 1e-6
    );
    assert!(BrownianTreeNoise::new(&[1], SHAPE, 0.0, 1.0).is_err());
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
    let registry = SamplerRegistry::load(&PluginPaths {
        builtin: PluginPaths::discover(None).builtin,
        folder: None,
    });
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
        let mut rng = ImageRng::new(&seeds, SHAPE, tch::Device::Cpu).unwrap();
        let init = Tensor::ones([2, 4, 16, 16], (Kind::Float, tch::Device::Cpu));
        let x = plan.start_latent(&init, &rng.first().unwrap());
        let (min, max) = plan.brownian_range();
        let brownian = BrownianTreeNoise::new(&seeds, SHAPE, min, max).unwrap();
        let mut noise =
            JobNoise::new(rng, tch::Device::Cpu, Kind::Float).with_brownian(Box::new(brownian));
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
