//! Whole txt2img jobs, with and without Hires. fix, on the tiny model against
//! tests/reference/txt2img_reference.py: A1111 v1.10.1's txt2img (`modules/processing.py:
//! StableDiffusionProcessingTxt2Img.sample`, `sample_hr_pass`) on diffusers' networks with
//! k-diffusion's samplers and A1111's DDIM loop. Both sides read the same A1111 API parameters.

use serde_json::{json, Map, Value};

use crate::common;
use sdhost::pipeline::model::GenerationModel;
use sdhost::pipeline::stop::JobStop;
use sdhost::pipeline::txt2img::run_txt2img;
use sdhost::request::GenerationRequest;
use sdhost_plugin_api::Flow;
use tch::{Device, Kind};

/// Mean absolute difference per channel value allowed against the reference, as for img2img.
const MEAN_TOLERANCE: f64 = 1.0;

/// Every case's base: 64×48, a batch of two (seeds 31337 and 31338).
fn base() -> Value {
    json!({
        "prompt": "a red cat on a sofa", "negative_prompt": "blurry", "width": 64,
        "height": 48, "cfg_scale": 6.5, "seed": 31337, "batch_size": 2, "steps": 10,
    })
}

/// `base` with `changes`.
fn case(changes: Value) -> Map<String, Value> {
    let mut params = base().as_object().cloned().unwrap();
    params.extend(changes.as_object().cloned().unwrap());
    params
}

/// Runs the named jobs here and in the reference and compares each image.
fn compare_with_reference(cases: &[(&str, Map<String, Value>)]) {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = common::tiny_model(dir.path(), 21);
    let listed: Vec<Value> = cases
        .iter()
        .map(|(name, params)| json!({"name": name, "params": params}))
        .collect();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&listed).unwrap()).unwrap();
    common::run_reference(
        "txt2img_reference.py",
        &[
            checkpoint.as_os_str(),
            cases_path.as_os_str(),
            dir.path().as_os_str(),
        ],
    );

    let model = GenerationModel::load(&checkpoint, Device::Cpu, Kind::Float, None).unwrap();
    let registry = common::builtin_registry();
    for (name, changes) in cases {
        let params = GenerationRequest::txt2img_ui_defaults()
            .overlay(changes)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let outcome = run_txt2img(&model, &registry, &params, &JobStop::new(), &mut |_| {
            Flow::Continue
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outcome.images.len(), 2, "{name}");
        let expected = |i: usize| {
            image::open(dir.path().join(format!("{name}_{i}.png")))
                .unwrap()
                .to_rgb8()
        };
        // With variation seeds on, every image has the seed and its own variation seed.
        let varied = params.subseed_strength != 0.0;
        for (i, generated) in outcome.images.iter().enumerate() {
            assert_eq!(generated.seed, 31337 + if varied { 0 } else { i as u64 });
            let expected = expected(i);
            assert_eq!(
                generated.image.dimensions(),
                expected.dimensions(),
                "{name} image {i}"
            );
            let (mean, max) = common::pixel_difference(&generated.image, &expected);
            let (w, h) = expected.dimensions();
            println!("{name} ({w}x{h}) image {i}: mean |Δ| {mean:.4}, max {max} (of 255)");
            assert!(
                mean <= MEAN_TOLERANCE,
                "{name} image {i}: mean |Δ| {mean:.4} > {MEAN_TOLERANCE}"
            );
        }
        // The comparison can tell: the batch's other image (another seed or variation seed)
        // is far off.
        let (mean, _) = common::pixel_difference(&outcome.images[0].image, &expected(1));
        println!("  {name}: the other seed's image is {mean:.2} away");
        assert!(
            mean > 5.0 * MEAN_TOLERANCE,
            "{name}: seeds indistinguishable ({mean:.2})"
        );
    }
}

#[test]
fn txt2img_matches_a1111() {
    compare_with_reference(&[
        ("euler_a", case(json!({"sampler_name": "Euler a"}))),
        (
            "dpmpp_2m_karras",
            case(json!({"sampler_name": "DPM++ 2M", "scheduler": "Karras"})),
        ),
        ("ddim", case(json!({"sampler_name": "DDIM"}))),
        (
            "variation",
            case(
                json!({"sampler_name": "Euler a", "subseed": 7, "subseed_strength": 0.3,
                         "seed_resize_from_w": 48, "seed_resize_from_h": 32}),
            ),
        ),
    ]);
}

#[test]
fn hires_fix_with_latent_upscalers_matches_a1111() {
    let hires = |changes: Value| {
        let mut params = case(json!({"enable_hr": true, "steps": 8}));
        params.extend(changes.as_object().cloned().unwrap());
        params
    };
    compare_with_reference(&[
        (
            "latent",
            hires(
                json!({"sampler_name": "Euler a", "hr_scale": 2.0, "hr_upscaler": "Latent",
                          "denoising_strength": 0.6}),
            ),
        ),
        (
            "nearest_exact",
            hires(
                json!({"sampler_name": "DPM++ 2M", "scheduler": "Karras", "hr_scale": 1.5,
                          "hr_upscaler": "Latent (nearest-exact)", "denoising_strength": 0.55}),
            ),
        ),
        // Its own sampler, steps and prompt; "resize to" 96×96 from 64×48: the latent is
        // upscaled to 128×96 and cropped (A1111's truncate_x).
        (
            "own_sampler",
            hires(json!({"sampler_name": "DPM++ 2M", "scheduler": "Karras",
                          "hr_resize_x": 96, "hr_resize_y": 96, "hr_upscaler": "Latent",
                          "hr_sampler_name": "Euler a", "hr_scheduler": "Automatic",
                          "hr_second_pass_steps": 5, "hr_prompt": "a blue cat on a sofa",
                          "denoising_strength": 0.7})),
        ),
        (
            "variation",
            hires(
                json!({"sampler_name": "Euler", "subseed": 7, "subseed_strength": 0.3,
                          "hr_upscaler": "Latent", "denoising_strength": 0.6}),
            ),
        ),
        (
            "bicubic_antialiased",
            hires(json!({"sampler_name": "Euler", "hr_scale": 1.75,
                          "hr_upscaler": "Latent (bicubic antialiased)",
                          "denoising_strength": 0.6})),
        ),
    ]);
}

#[test]
fn hires_fix_with_pixel_upscalers_matches_a1111() {
    let hires = |changes: Value| {
        let mut params = case(json!({"enable_hr": true, "steps": 8}));
        params.extend(changes.as_object().cloned().unwrap());
        params
    };
    compare_with_reference(&[
        (
            "lanczos",
            hires(
                json!({"sampler_name": "Euler", "hr_scale": 2.0, "hr_upscaler": "Lanczos",
                          "denoising_strength": 0.5}),
            ),
        ),
        (
            "nearest",
            hires(
                json!({"sampler_name": "DPM++ 2M", "scheduler": "Karras", "hr_scale": 2.5,
                          "hr_upscaler": "Nearest", "denoising_strength": 0.45}),
            ),
        ),
        (
            "none_ddim",
            hires(
                json!({"sampler_name": "Euler a", "hr_scale": 1.5, "hr_upscaler": "None",
                          "hr_sampler_name": "DDIM", "hr_second_pass_steps": 6,
                          "denoising_strength": 0.6}),
            ),
        ),
    ]);
}
