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
    let name = format!("{preset:?}-{kind}{seed}.safetensors").to_lowercase();
    let cached = model_cache().join(&name);
    {
        // One writer per model: made once for the whole test run, then copied.
        let _made = MODEL_CACHE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !cached.exists() {
            let spec = sdhost::tiny_model::TinyModelSpec {
                preset,
                inpainting,
                seed,
                storage: tch::Kind::Float,
            };
            let partial = cached.with_extension("partial");
            sdhost::tiny_model::write_tiny_model(&spec, &partial).expect("write tiny model");
            std::fs::rename(&partial, &cached).expect("publish cached tiny model");
        }
    }
    let path = dir.join(name);
    std::fs::copy(&cached, &path).expect("copy cached tiny model");
    path
}

static MODEL_CACHE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The test run's cache of tiny models (tests share them; each gets its own copy), in Cargo's
/// scratch folder for integration tests; earlier runs' caches are removed when it is made.
fn model_cache() -> &'static Path {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("tiny-models-")
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(format!("tiny-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the tiny-model cache");
        dir
    })
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

/// The built-in sampler plugin, loaded as the host loads it (nothing may be skipped).
pub fn builtin_registry() -> sdhost::sampling::plugins::SamplerRegistry {
    use sdhost::sampling::plugins::{PluginPaths, SamplerRegistry};
    let paths = PluginPaths::discover(None);
    assert!(
        paths.builtin.is_some(),
        "the built-in sampler plugin was not found next to the test binary: \
         run `cargo build --release --workspace` first (make test does)"
    );
    let registry = SamplerRegistry::load(&PluginPaths {
        builtin: paths.builtin,
        folder: None,
    });
    assert!(registry.skipped.is_empty(), "{:?}", registry.skipped);
    registry
}
