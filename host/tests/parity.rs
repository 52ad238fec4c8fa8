//! Parity of the networks with diffusers/transformers on the same weights (fp32, CPU).
//!
//! Each test writes a checkpoint with `write_tiny_model`, has `tests/reference/make_references.py`
//! run diffusers on it with fixed inputs, and compares every output within 1e-4 of its scale.

mod common;

use common::{assert_close, read_tensors, run_reference};
use sdhost::checkpoint::{infer_architecture, Checkpoint};
use sdhost::models::StableDiffusion;
use sdhost::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
use tch::{Device, Kind};

const TOLERANCE: f64 = 1e-4;

fn check_against_diffusers(spec: TinyModelSpec, latent_size: u32, image_size: u32) {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model.safetensors");
    let reference = dir.path().join("reference.safetensors");
    write_tiny_model(&spec, &model).expect("write model");
    run_reference(
        "make_references.py",
        &[
            model.as_os_str(),
            reference.as_os_str(),
            "--latent-size".as_ref(),
            latent_size.to_string().as_ref(),
            "--image-size".as_ref(),
            image_size.to_string().as_ref(),
        ],
    );
    let r = read_tensors(&reference);

    let ckpt = Checkpoint::open(&model).expect("open");
    let arch = infer_architecture(&ckpt).expect("infer");
    assert_eq!(
        arch,
        spec.architecture(),
        "inferred architecture differs from the one written"
    );
    let sd = StableDiffusion::load(&ckpt, &arch, Kind::Float, Device::Cpu).expect("load");

    let hidden = sd.clip.hidden_states(&r["clip.input_ids"]);
    assert_eq!(hidden.len() as i64, arch.clip.num_layers + 1);
    for (i, h) in hidden.iter().enumerate() {
        assert_close(
            &format!("clip hidden state {i}"),
            h,
            &r[&format!("clip.hidden.{i}")],
            TOLERANCE,
        );
    }
    assert_close(
        "clip final",
        &sd.clip.encode(&r["clip.input_ids"], 1),
        &r["clip.final"],
        TOLERANCE,
    );
    assert_close(
        "clip skip 2",
        &sd.clip.encode(&r["clip.input_ids"], 2),
        &r["clip.final_skip2"],
        TOLERANCE,
    );

    for i in 0..2 {
        let out = sd
            .unet
            .forward(&r["unet.x"], &r[&format!("unet.t{i}")], &r["unet.context"]);
        assert_close(
            &format!("unet at t{i}"),
            &out,
            &r[&format!("unet.out{i}")],
            TOLERANCE,
        );
    }

    let posterior = sd.vae.encode(&r["vae.image"]);
    assert_close("vae mean", &posterior.mean, &r["vae.mean"], TOLERANCE);
    assert_close("vae logvar", &posterior.logvar, &r["vae.logvar"], TOLERANCE);
    assert_close(
        "vae decode",
        &sd.vae.decode(&r["vae.z"]),
        &r["vae.decoded"],
        TOLERANCE,
    );
}

#[test]
fn tiny_model_matches_diffusers() {
    let spec = TinyModelSpec {
        preset: Preset::Tiny,
        inpainting: false,
        seed: 7,
        storage: Kind::Float,
    };
    check_against_diffusers(spec, 8, 64);
}

/// 9 input channels, weights stored in fp16 as most published checkpoints are.
#[test]
fn tiny_inpainting_fp16_model_matches_diffusers() {
    let spec = TinyModelSpec {
        preset: Preset::Tiny,
        inpainting: true,
        seed: 11,
        storage: Kind::Half,
    };
    check_against_diffusers(spec, 10, 48);
}

/// The exact SD 1.5 configuration (random weights, fp16 on disk): proves the full-size
/// architecture — 8 heads at every width, 4 levels, 12-layer CLIP with 12 heads, kl-f8 VAE.
#[test]
fn sd15_configuration_matches_diffusers() {
    let spec = TinyModelSpec {
        preset: Preset::Sd15,
        inpainting: false,
        seed: 3,
        storage: Kind::Half,
    };
    check_against_diffusers(spec, 32, 64);
}
