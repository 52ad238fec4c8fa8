//! The init image into the latent space and latents back to 8-bit pixels, against A1111's
//! conversions on diffusers' AutoencoderKL (tiny model).

use crate::common;

use crate::common::{assert_close, read_tensors, run_reference};
use sdhost::pipeline::decode::decode_latents;
use sdhost::pipeline::encode::{encode_image, InitLatent};
use sdhost::rng::Generator;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

#[test]
fn vae_round_trip_matches_a1111_conversions() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 9);
    run_reference(
        "vae_io_reference.py",
        &[model.as_os_str(), dir.path().as_os_str()],
    );
    let r = read_tensors(&dir.path().join("latents.safetensors"));
    let sd = common::load_fp32(&model);
    let init = image::open(dir.path().join("init.png")).unwrap().to_rgb8();

    let mean = encode_image(&sd.vae, &init, InitLatent::Mean, Device::Cpu, Kind::Float).unwrap();
    assert_close("latent mean", &mean, &r["mean"], 1e-4);
    let mut generator = Generator::new(77, Device::Cpu).unwrap();
    let sample = encode_image(
        &sd.vae,
        &init,
        InitLatent::Sample(&mut generator),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    assert_close("latent sample", &sample, &r["sample"], 1e-4);
    let spread = common::relative_error(&r["sample"], &r["mean"]);
    assert!(
        spread > 1e-3,
        "the sample must differ from the mean ({spread:.1e})"
    );

    let resized = sdhost::pipeline::encode::resize_latent(&r["z"], 9, 7).unwrap();
    assert_close("latent upscale", &resized, &r["z_resized"], 1e-6);

    let images = decode_latents(&sd.vae, &r["z"], None);
    assert_eq!(images.len(), 2);
    let mut differing = 0;
    for (i, image) in images.iter().enumerate() {
        let expected = image::open(dir.path().join(format!("decoded_{i}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(image.dimensions(), expected.dimensions());
        for (a, e) in image.as_raw().iter().zip(expected.as_raw()) {
            // Truncation turns float noise of 1e-6 into a 1-level step at exact boundaries.
            assert!(a.abs_diff(*e) <= 1, "decoded {i}: {a} vs {e}");
            differing += usize::from(a != e);
        }
    }
    println!("decoded pixels differing by one level: {differing}");
}

#[test]
fn tiled_vae_matches_diffusers_enable_tiling() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let (sd, r) = tiny_vae_and_reference("vae_tiling_reference.py", "tiling.safetensors");
    // 64-pixel tiles: a 136×200 image is 3×5 tiles, a 21×27 latent 4×5 (partial ones at the edges).
    let tiling = Some(sdhost::models::vae::VaeTiling {
        tile_size: 64,
        overlap: 0.25,
    });
    let encoded = sd.vae.encode_tiled(&r["image"], tiling);
    assert_close("tiled encode mean", &encoded.mean, &r["mean"], 1e-5);
    assert_close("tiled encode logvar", &encoded.logvar, &r["logvar"], 1e-5);
    let decoded = sd.vae.decode_tiled(&r["z"], tiling);
    assert_eq!(decoded.size(), vec![1, 3, 168, 216]);
    assert_close("tiled decode", &decoded, &r["decoded"], 1e-5);
    // The tiles really are seen on their own: an untiled run differs.
    let whole = sd.vae.decode(&r["z"]);
    let seams = common::relative_error(&whole, &r["decoded"]);
    assert!(seams > 1e-3, "tiling must change the result ({seams:.1e})");
}

#[test]
fn vae_in_row_bands_matches_diffusers_untiled() {
    // 800×768: the full-resolution activations pass 64 MiB, so encode and decode run their
    // large layers in bands of rows (models::row_bands), the last band shorter.
    tch::set_num_threads(2);
    let _guard = tch::no_grad_guard();
    let (sd, r) = tiny_vae_and_reference("vae_bands_reference.py", "bands.safetensors");
    let encoded = sd.vae.encode(&r["image"]);
    assert_close("banded encode mean", &encoded.mean, &r["mean"], 1e-5);
    let decoded = sd.vae.decode(&r["z"]);
    assert_eq!(decoded.size(), vec![1, 3, 800, 768]);
    assert_close("banded decode", &decoded, &r["decoded"], 1e-5);
}

/// The tiny model (seed 4) loaded in fp32, and the tensors `script` wrote into `file` from it.
fn tiny_vae_and_reference(
    script: &str,
    file: &str,
) -> (sdhost::models::StableDiffusion, HashMap<String, Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 4);
    run_reference(script, &[model.as_os_str(), dir.path().as_os_str()]);
    (
        common::load_fp32(&model),
        read_tensors(&dir.path().join(file)),
    )
}
