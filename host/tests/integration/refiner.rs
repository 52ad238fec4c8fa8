//! The SDXL refiner (`refiner_checkpoint`, `refiner_switch_at`) as A1111 runs it
//! (`modules/sd_samplers_common.py: apply_refiner`): a whole job against the reference's
//! switch (tests/reference/img2img_reference.py `--refiner`), its infotext, and the jobs that
//! cannot have one.

use crate::common;

use image::RgbImage;
use sdhost::pipeline::img2img::{run_img2img_unobserved, JobError, JobOutcome};
use sdhost::pipeline::model::GenerationModel;
use sdhost::request::GenerationRequest;
use sdhost::sampling::plan::SamplerSettings;
use sdhost::tiny_model::{write_tiny_model, TinyFamily, TinyModelSpec};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

const SWITCH_AT: f64 = 0.5;

fn write(dir: &Path, family: TinyFamily, name: &str, seed: i64) -> PathBuf {
    let path = dir.join(format!("{name}.safetensors"));
    write_tiny_model(&TinyModelSpec::family(family, seed), &path).expect("write model");
    path
}

fn params(refiner: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: "a red cat on a sofa".into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 48,
        cfg_scale: 6.5,
        seed: 4242,
        batch_size: 2,
        refiner_checkpoint: refiner.into(),
        refiner_switch_at: SWITCH_AT,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 12,
            denoising_strength: 0.9,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    }
}

fn run(model: &GenerationModel, params: &GenerationRequest, init: &RgbImage) -> JobOutcome {
    let registry = common::builtin_registry();
    run_img2img_unobserved(model, &registry, params, init, None).expect("job runs")
}

#[test]
fn sdxl_with_its_refiner_matches_a1111s_switch() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), TinyFamily::Sdxl, "base", 51);
    let refiner_path = write(dir.path(), TinyFamily::SdxlRefiner, "refiner", 52);
    let init_path = dir.path().join("init.png");
    let init = common::test_picture(&init_path);
    let cases = serde_json::json!([{
        "name": "refined", "sampler": "sample_euler", "karras": false, "steps": 12,
        "strength": 0.9, "seeds": [4242, 4243], "width": 64, "height": 48,
        "prompt": "a red cat on a sofa", "negative_prompt": "blurry", "cfg_scale": 6.5,
    }]);
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, cases.to_string()).unwrap();
    common::run_reference(
        "img2img_reference.py",
        &[
            base.as_os_str(),
            init_path.as_os_str(),
            cases_path.as_os_str(),
            dir.path().as_os_str(),
            "--refiner".as_ref(),
            refiner_path.as_os_str(),
            "--switch-at".as_ref(),
            SWITCH_AT.to_string().as_ref(),
        ],
    );

    let mut model = GenerationModel::load(&base, Device::Cpu, Kind::Float, None).unwrap();
    let without = run(&model, &params(""), &init);
    model.select_refiner(&refiner_path, None).unwrap();
    let refined = run(&model, &params("refiner"), &init);
    for (i, generated) in refined.images.iter().enumerate() {
        let expected = image::open(dir.path().join(format!("refined_{i}.png")))
            .unwrap()
            .to_rgb8();
        let (mean, max) = common::pixel_difference(&generated.image, &expected);
        println!("refined image {i}: mean |Δ| {mean:.4}, max {max}");
        assert!(mean <= 1.0, "image {i}: mean |Δ| {mean:.4}");
        // The refiner did change the picture: the base model alone is far from it.
        let (apart, _) = common::pixel_difference(&generated.image, &without.images[i].image);
        assert!(apart > 2.0, "the refiner changed nothing ({apart})");
    }
    let info = &refined.images[0].infotext;
    let refiner = model.refiner.as_deref().unwrap();
    assert_eq!(
        info.get("Refiner"),
        Some(format!("refiner [{}]", refiner.hash).as_str())
    );
    assert_eq!(info.get("Refiner switch at"), Some("0.5"));
    assert_eq!(without.images[0].infotext.get("Refiner"), None);

    // Pasting the infotext asks for the same refiner, by its short title.
    let mut pasted = GenerationRequest::default();
    pasted.apply_infotext(info);
    assert_eq!(pasted.refiner_checkpoint, refiner.short_title());
    assert_eq!(pasted.refiner_switch_at, SWITCH_AT);

    // A switch point past the end never switches: no refiner keys.
    let late = run(
        &model,
        &GenerationRequest {
            refiner_switch_at: 1.0,
            ..params("refiner")
        },
        &init,
    );
    assert_eq!(late.images[0].infotext.get("Refiner"), None);
    assert_eq!(late.images[0].image, without.images[0].image);
}

#[test]
fn jobs_that_cannot_have_their_refiner_are_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), TinyFamily::Sdxl, "base", 53);
    let sd1 = write(dir.path(), TinyFamily::Sd1, "sd1", 54);
    let init = common::test_picture(&dir.path().join("init.png"));
    let registry = common::builtin_registry();
    let mut model = GenerationModel::load(&base, Device::Cpu, Kind::Float, None).unwrap();
    let refuse = |model: &GenerationModel, params: &GenerationRequest| match run_img2img_unobserved(
        model, &registry, params, &init, None,
    ) {
        Err(error @ (JobError::Unsupported(_) | JobError::InvalidParams(_))) => error.to_string(),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("the job ran"),
    };
    assert!(refuse(&model, &params("refiner")).contains("not loaded"));
    model.select_refiner(&sd1, None).unwrap();
    assert!(refuse(&model, &params("sd1")).contains("latent space"));
    let bad = GenerationRequest {
        refiner_switch_at: 1.5,
        ..params("sd1")
    };
    assert!(refuse(&model, &bad).contains("refiner_switch_at"));
}

#[test]
fn inpainting_with_the_9_channel_sdxl_model_hands_over_to_the_4_channel_refiner() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), TinyFamily::SdxlInpaint, "inpaint", 55);
    let refiner_path = write(dir.path(), TinyFamily::SdxlRefiner, "refiner", 56);
    let init = common::test_picture(&dir.path().join("init.png"));
    let mask = crate::inpaint::test_mask(&dir.path().join("mask.png"));
    let registry = common::builtin_registry();
    let mut model = GenerationModel::load(&base, Device::Cpu, Kind::Float, None).unwrap();
    model.select_refiner(&refiner_path, None).unwrap();
    let inpaint = |params: &GenerationRequest| {
        run_img2img_unobserved(&model, &registry, params, &init, Some(&mask))
            .expect("the inpainting job runs")
    };
    let refined = inpaint(&params("refiner"));
    let alone = inpaint(&params(""));
    for (with, without) in refined.images.iter().zip(&alone.images) {
        assert!(with.patch.is_some(), "an inpainting result has its patch");
        assert_eq!(
            with.infotext.get("Refiner"),
            Some(model.refiner.as_deref().unwrap().short_title().as_str())
        );
        assert_eq!(without.infotext.get("Refiner"), None);
        // The refiner changed the masked area, not the rest: both composites keep the
        // original where the mask does.
        let (apart, _) = common::pixel_difference(&with.image, &without.image);
        assert!(apart > 0.1, "the refiner changed nothing ({apart})");
        let corner = |image: &RgbImage| *image.get_pixel(0, image.height() - 1);
        assert_eq!(corner(&with.image), corner(&without.image));
    }
}
