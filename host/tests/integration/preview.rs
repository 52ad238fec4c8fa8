//! Live previews: "Approx cheap" against A1111's code (tests/reference/preview_reference.py)
//! and a hand-written per-pixel sum, and "Full" on the last Euler step against the job's final
//! images (Euler's last step to σ = 0 lands on that step's denoised prediction).

use crate::common;

use image::RgbImage;
use sdhost::pipeline::img2img::{run_img2img, JobEvent};
use sdhost::pipeline::model::GenerationModel;
use sdhost::pipeline::preview::{
    cheap_images, preview_image, preview_images, PreviewError, PreviewMethod, CHEAP_COEFFICIENTS,
};
use sdhost::pipeline::stop::JobStop;
use sdhost::request::GenerationRequest;
use sdhost::sampling::plan::SamplerSettings;
use sdhost_plugin_api::Flow;
use tch::{Device, Kind, Tensor};

/// Counts values differing by exactly one level; fails on any larger difference.
fn one_level_differences(name: &str, actual: &[u8], expected: &[u8]) -> usize {
    assert_eq!(actual.len(), expected.len(), "{name}: sizes differ");
    let mut differing = 0;
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(a.abs_diff(*e) <= 1, "{name}: value {i}: {a} vs {e}");
        differing += usize::from(a != e);
    }
    differing
}

#[test]
fn approx_cheap_matches_a1111_and_a_per_pixel_sum() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    common::run_reference("preview_reference.py", &[dir.path().as_os_str()]);
    let r = common::read_tensors(&dir.path().join("preview.safetensors"));
    let latent = &r["latent"];
    let (n, h, w) = (latent.size()[0], latent.size()[2], latent.size()[3]);
    let images = cheap_images(latent).unwrap();
    assert_eq!(images.len(), n as usize);

    let mut against_a1111 = 0;
    let mut against_sum = 0;
    let mut clamped = [0usize; 2];
    for (i, image) in images.iter().enumerate() {
        // Latent resolution: no upscaling, the client scales.
        assert_eq!(image.dimensions(), (w as u32, h as u32));
        let expected = Vec::<u8>::try_from(r["rgb"].get(i as i64).reshape([-1])).unwrap();
        against_a1111 += one_level_differences("A1111", image.as_raw(), &expected);

        // The same formula by hand in f64: Σ_l latent[l]·coefficient[l][c], x/2 + 1/2,
        // clamp, ×255, truncate.
        let values = Vec::<f64>::try_from(latent.get(i as i64).reshape([-1])).unwrap();
        let mut by_hand = Vec::with_capacity((h * w * 3) as usize);
        for y in 0..h as usize {
            for x in 0..w as usize {
                let latent_at = |l: usize| values[(l * h as usize + y) * w as usize + x];
                for c in 0..3 {
                    let sum: f64 = CHEAP_COEFFICIENTS
                        .iter()
                        .enumerate()
                        .map(|(l, row)| latent_at(l) * f64::from(row[c]))
                        .sum();
                    let unit = (sum * 0.5 + 0.5).clamp(0.0, 1.0);
                    clamped[0] += usize::from(unit == 0.0);
                    clamped[1] += usize::from(unit == 1.0);
                    by_hand.push((unit * 255.0) as u8);
                }
            }
        }
        against_sum += one_level_differences("per-pixel sum", image.as_raw(), &by_hand);
    }
    let total = (n * h * w * 3) as usize;
    println!(
        "{total} values: {against_a1111} one level off A1111, {against_sum} off the f64 sum; \
         clamped at 0: {}, at 255: {}",
        clamped[0], clamped[1]
    );
    // Float rounding can only move a value across a truncation boundary: at most one level,
    // on at most 1% of the values (in practice none against A1111's own arithmetic).
    assert!(against_a1111 * 100 <= total && against_sum * 100 <= total);
    assert!(
        clamped[0] > 0 && clamped[1] > 0,
        "the latent must exercise the clamp"
    );

    // bf16 latents (CUDA jobs) are computed in f32: the same pixels as their f32 values.
    let bf16 = latent.to_kind(Kind::BFloat16);
    let from_bf16 = cheap_images(&bf16).unwrap();
    let from_f32 = cheap_images(&bf16.to_kind(Kind::Float)).unwrap();
    assert_eq!(from_bf16, from_f32);
    // Anything but [n, 4, h, w] is an error, not a panic.
    assert!(matches!(
        cheap_images(&Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu))),
        Err(PreviewError::Shape { .. })
    ));
}

#[test]
fn full_preview_of_the_last_euler_step_is_the_final_image() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = common::tiny_model(dir.path(), 14);
    let init = common::test_picture(&dir.path().join("init.png"));
    let model = GenerationModel::load(&checkpoint, Device::Cpu, Kind::Float, None).unwrap();
    let registry = crate::common::builtin_registry();
    let params = GenerationRequest {
        prompt: "a lighthouse".into(),
        width: 48,
        height: 40,
        seed: 5,
        batch_size: 2,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 6,
            denoising_strength: 0.8,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    };
    let mut steps_per_batch = 0;
    let mut first: Option<Vec<RgbImage>> = None;
    let mut last: Option<Vec<RgbImage>> = None;
    let mut cheap_sizes = Vec::new();
    let outcome = run_img2img(
        &model,
        &registry,
        &params,
        &init,
        None,
        &JobStop::new(),
        &mut |event| {
            match event {
                JobEvent::Started {
                    steps_per_batch: steps,
                    ..
                } => steps_per_batch = steps,
                JobEvent::Step { step, denoised, .. } => {
                    let full = || {
                        preview_images(
                            PreviewMethod::Full,
                            denoised,
                            &model.sd.vae,
                            model.kind,
                            None,
                        )
                    };
                    if step == 1 {
                        first = Some(full().unwrap());
                    }
                    if step == steps_per_batch {
                        let images = full().unwrap();
                        // One image of the batch alone is that image's preview.
                        let second = preview_image(
                            PreviewMethod::Full,
                            denoised,
                            1,
                            &model.sd.vae,
                            model.kind,
                            None,
                        )
                        .unwrap();
                        assert_eq!(second, images[1]);
                        last = Some(images);
                    }
                    let cheap = cheap_images(denoised).unwrap();
                    cheap_sizes.extend(cheap.iter().map(|i| i.dimensions()));
                }
                JobEvent::Image(_) | JobEvent::Warning(_) => {}
            }
            Flow::Continue
        },
    )
    .unwrap();
    assert!(steps_per_batch > 1);
    assert!(cheap_sizes.iter().all(|&size| size == (6, 5)));
    let (first, last) = (first.unwrap(), last.unwrap());
    for (i, generated) in outcome.images.iter().enumerate() {
        assert_eq!(last[i].dimensions(), (48, 40));
        // x_final = x + (x − denoised)/σ·(0 − σ): the denoised prediction up to float
        // rounding, which truncation can turn into one level at a boundary.
        let (mean, max) = common::pixel_difference(&last[i], &generated.image);
        println!("image {i}: last full preview vs final: mean |Δ| {mean:.5}, max {max}");
        assert!(max <= 1 && mean < 0.01, "mean {mean}, max {max}");
        // The comparison can tell: the first step's prediction is another picture.
        let (mean, _) = common::pixel_difference(&first[i], &generated.image);
        println!("image {i}: first full preview vs final: mean |Δ| {mean:.2}");
        assert!(mean > 1.0, "first preview already final: {mean}");
    }
    assert!(matches!(
        preview_image(
            PreviewMethod::Full,
            &Tensor::zeros([2, 4, 5, 6], (Kind::Float, Device::Cpu)),
            2,
            &model.sd.vae,
            model.kind,
            None
        ),
        Err(PreviewError::Shape { index: 2, .. })
    ));
}
