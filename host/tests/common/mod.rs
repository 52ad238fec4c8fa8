//! Shared helpers of the integration tests: paths, the reference Python, tolerances.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf()
}

/// The Python of the project's virtual environment (override with `SDHOST_PYTHON`).
pub fn python() -> PathBuf {
    std::env::var_os("SDHOST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"))
}

/// Runs `tests/reference/<script>` with `args` in the project's venv and fails loudly if it fails.
pub fn run_reference(script: &str, args: &[&std::ffi::OsStr]) {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run `make test` (it creates the venv with the reference packages)",
        python.display()
    );
    let status = Command::new(&python)
        .arg(workspace().join("tests/reference").join(script))
        .args(args)
        .status()
        .expect("start the reference Python");
    assert!(
        status.success(),
        "reference script {script} failed: {status}"
    );
}

/// Reads a `.safetensors` file written by the reference side.
pub fn read_tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("read reference tensors")
        .into_iter()
        .collect()
}

/// Max absolute error relative to the reference's scale (its max magnitude, at least 1).
pub fn relative_error(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(
        actual.size(),
        expected.size(),
        "shape differs from the reference"
    );
    let diff = (actual.to_kind(tch::Kind::Double) - expected.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    let scale = expected
        .to_kind(tch::Kind::Double)
        .abs()
        .max()
        .double_value(&[])
        .max(1.0);
    diff / scale
}

/// Asserts parity within `tolerance` (relative, see [`relative_error`]).
pub fn assert_close(name: &str, actual: &Tensor, expected: &Tensor, tolerance: f64) {
    let err = relative_error(actual, expected);
    println!("{name}: relative max abs error {err:.3e}");
    assert!(
        err <= tolerance,
        "{name}: relative max abs error {err:.3e} > {tolerance:.0e}"
    );
}

/// Writes the tiny fp32 model of `seed` into `dir` and returns its path.
pub fn tiny_model(dir: &Path, seed: i64) -> PathBuf {
    write_tiny(dir, seed, false)
}

/// Writes the tiny fp32 inpainting (9-channel UNet) model of `seed` into `dir`.
pub fn tiny_inpainting_model(dir: &Path, seed: i64) -> PathBuf {
    write_tiny(dir, seed, true)
}

/// Writes the tiny fp32 model of `seed` with SD 1.x's four UNet levels (`Preset::TinyDeep`),
/// for sizes whose latent sides are not multiples of 8.
pub fn tiny_deep_model(dir: &Path, seed: i64, inpainting: bool) -> PathBuf {
    write_preset(dir, sdhost::tiny_model::Preset::TinyDeep, seed, inpainting)
}

fn write_tiny(dir: &Path, seed: i64, inpainting: bool) -> PathBuf {
    write_preset(dir, sdhost::tiny_model::Preset::Tiny, seed, inpainting)
}

fn write_preset(
    dir: &Path,
    preset: sdhost::tiny_model::Preset,
    seed: i64,
    inpainting: bool,
) -> PathBuf {
    let kind = if inpainting { "inpainting-" } else { "" };
    let path = dir.join(format!("{preset:?}-{kind}{seed}.safetensors").to_lowercase());
    let spec = sdhost::tiny_model::TinyModelSpec {
        preset,
        inpainting,
        seed,
        storage: tch::Kind::Float,
    };
    sdhost::tiny_model::write_tiny_model(&spec, &path).expect("write tiny model");
    path
}

/// Loads every network of the checkpoint at `path` in fp32 on the CPU.
pub fn load_fp32(path: &Path) -> sdhost::models::StableDiffusion {
    let ckpt = sdhost::checkpoint::Checkpoint::open(path).expect("open checkpoint");
    let arch = sdhost::checkpoint::infer_architecture(&ckpt).expect("infer architecture");
    sdhost::models::StableDiffusion::load(&ckpt, &arch, tch::Kind::Float, tch::Device::Cpu)
        .expect("load networks")
}

/// A smooth, non-square test picture (gradients and a disc), saved to `path`, so resizing and
/// inpainting have something to work on.
pub fn test_picture(path: &Path) -> image::RgbImage {
    let image = image::RgbImage::from_fn(100, 76, |x, y| {
        let inside = (x as i32 - 60).pow(2) + (y as i32 - 36).pow(2) < 400;
        image::Rgb([
            (x * 255 / 99) as u8,
            (y * 255 / 75) as u8,
            if inside { 230 } else { 40 },
        ])
    });
    image.save(path).unwrap();
    image
}

/// The mean and largest absolute difference of two images, per channel value.
pub fn pixel_difference(a: &image::RgbImage, b: &image::RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let (sum, max) = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .fold((0u64, 0u8), |(sum, max), (&p, &q)| {
            let d = p.abs_diff(q);
            (sum + u64::from(d), max.max(d))
        });
    (sum as f64 / a.as_raw().len() as f64, max)
}
