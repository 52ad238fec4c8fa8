//! SDXL's VAE in fp16: A1111 decodes, looks at the first value, and on NaN converts the VAE to
//! fp32 for this and every later decode (`modules/processing.py: decode_latent_batch` with
//! `auto_vae_precision`); sdhost does the same and says so once.

use crate::common;

use sdhost::checkpoint::Checkpoint;
use sdhost::pipeline::img2img::{run_img2img, JobEvent, JobOutcome};
use sdhost::pipeline::model::GenerationModel;
use sdhost::pipeline::stop::JobStop;
use sdhost::request::GenerationRequest;
use sdhost::sampling::plan::SamplerSettings;
use sdhost::tiny_model::{
    save_safetensors_with_metadata, write_tiny_model, TinyFamily, TinyModelSpec,
    PREDICTION_METADATA,
};
use sdhost_plugin_api::Flow;
use std::path::Path;
use tch::{Device, Kind};

/// A tiny SDXL file whose VAE decoder overflows fp16 at its first convolution (its weights
/// ×10⁵): finite in fp32, NaN after the group norm that follows in fp16.
fn overflowing_sdxl(dir: &Path) -> std::path::PathBuf {
    let plain = dir.join("plain.safetensors");
    write_tiny_model(&TinyModelSpec::family(TinyFamily::Sdxl, 61), &plain).unwrap();
    let tensors: Vec<(String, tch::Tensor)> = Checkpoint::open(&plain)
        .unwrap()
        .read_all()
        .unwrap()
        .into_iter()
        .map(|(key, tensor)| {
            let tensor = if key == "first_stage_model.decoder.conv_in.weight" {
                tensor * 1e5
            } else {
                tensor
            };
            (key, tensor)
        })
        .collect();
    let path = dir.join("hot-vae.safetensors");
    save_safetensors_with_metadata(&tensors, Some((PREDICTION_METADATA, "epsilon")), &path)
        .unwrap();
    path
}

fn job(model: &GenerationModel) -> (JobOutcome, Vec<String>) {
    let params = GenerationRequest {
        prompt: "a cat".into(),
        width: 32,
        height: 32,
        seed: 3,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps: 2,
            ..SamplerSettings::default()
        },
        ..GenerationRequest::default()
    };
    let init = common::test_picture(&tempfile::tempdir().unwrap().path().join("init.png"));
    let registry = common::builtin_registry();
    let mut warnings = Vec::new();
    let outcome = run_img2img(
        model,
        &registry,
        &params,
        &init,
        None,
        &JobStop::new(),
        &mut |event| {
            if let JobEvent::Warning(text) = event {
                warnings.push(text.to_string());
            }
            Flow::Continue
        },
    )
    .expect("the job runs");
    (outcome, warnings)
}

#[test]
fn an_fp16_vae_that_gives_nan_decodes_in_fp32_from_then_on() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let path = overflowing_sdxl(dir.path());
    let half = GenerationModel::load(&path, Device::Cpu, Kind::Half, None).unwrap();
    let (first, warnings) = job(&half);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("fp32"), "{}", warnings[0]);
    assert_eq!(first.warnings, warnings);
    let pixels = first.images[0].image.as_raw();
    assert!(
        pixels.iter().any(|&p| p != 0),
        "the retried decode is not the black image of NaN"
    );
    // The switch stays: the next job decodes in fp32 at once, without a new warning.
    let (second, warnings) = job(&half);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(second.images[0].image, first.images[0].image);

    // An fp32 model never retries.
    let full = GenerationModel::load(&path, Device::Cpu, Kind::Float, None).unwrap();
    let (_, warnings) = job(&full);
    assert!(warnings.is_empty());
}
