//! `sdhost bench --only interrogate`: Interrogate CLIP per call as A1111 runs it (CLIP's text
//! features of every category line computed on each call) against sdhost's (the features read
//! from its cache), both with the models loaded, side by side in one run; the cold first call
//! (models loaded, cache filled); and Interrogate DeepBooru per call.
//!
//! Models: `--interrogate-models DIR` (an A1111 models/ folder with BLIP/, clip/,
//! torch_deepdanbooru/ and interrogate/ in or beside it), else tiny random models written once
//! by tests/reference/interrogate_models.py, ranked over the real category lists scripts/setup
//! installs (about 3 300 lines at the default dict limit), so the text side does A1111's count
//! of encodings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use image::RgbImage;
use tch::Device;

use super::reference::median;
use crate::interrogate::{InterrogateFiles, InterrogateMethod, InterrogateOptions, Interrogator};

/// Where the tiny interrogation models are written (once) for the benchmark.
fn tiny_models(python: &Path) -> anyhow::Result<PathBuf> {
    let dir = crate::checkpoint::default_cache_dir()
        .context("no cache folder; pass --interrogate-models")?
        .join("bench")
        .join("interrogate-models");
    if !dir.join("clip").join("ViT-L-14.pt").exists() {
        let status = std::process::Command::new(python)
            .arg("tests/reference/interrogate_models.py")
            .arg("--write-models")
            .arg(&dir)
            .arg("--no-categories")
            .status()
            .context(
                "running tests/reference/interrogate_models.py (run from the repository root)",
            )?;
        anyhow::ensure!(
            status.success(),
            "writing the tiny interrogation models failed"
        );
    }
    Ok(dir)
}

/// A picture with some structure for the captioner to look at.
fn picture() -> RgbImage {
    RgbImage::from_fn(512, 384, |x, y| {
        image::Rgb([
            (x * 255 / 511) as u8,
            (y * 255 / 383) as u8,
            ((x ^ y) & 0xff) as u8,
        ])
    })
}

fn seconds(work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    work()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Runs the case and prints its table.
pub fn run(models: Option<&Path>, python: &Path, repeat: usize) -> anyhow::Result<()> {
    let models = match models {
        Some(dir) => dir.to_path_buf(),
        None => tiny_models(python)?,
    };
    let files = InterrogateFiles {
        models_dir: Some(models.clone()),
        ..InterrogateFiles::default()
    };
    let options = InterrogateOptions::default();
    let image = picture();
    let cache = tempfile::tempdir()?;
    println!(
        "\ninterrogate ({}, categories {}): seconds per call, median of {repeat}",
        models.display(),
        files.categories_dir()?.display()
    );
    let mut cached = Interrogator::new(files.clone(), Device::Cpu, Some(cache.path().into()));
    let mut every_call = Interrogator::new(files, Device::Cpu, None);
    let clip = InterrogateMethod::Clip;
    let cold = seconds(|| {
        cached.interrogate(&image, clip, &options)?;
        Ok(())
    })?;
    every_call.interrogate(&image, clip, &options)?;
    let (mut a1111, mut sdhost) = (Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        a1111.push(seconds(|| {
            every_call.interrogate(&image, clip, &options)?;
            Ok(())
        })?);
        sdhost.push(seconds(|| {
            cached.interrogate(&image, clip, &options)?;
            Ok(())
        })?);
    }
    let (a1111, sdhost) = (median(a1111), median(sdhost));
    println!("  CLIP, first call (load + features cached)   {cold:>8.3}");
    println!("  CLIP per call, features every call (A1111)  {a1111:>8.3}");
    println!(
        "  CLIP per call, features cached (sdhost)     {sdhost:>8.3}   {:.1}x faster",
        a1111 / sdhost
    );
    let booru = InterrogateMethod::Deepbooru;
    if cached.check(booru, &options).is_ok() {
        cached.interrogate(&image, booru, &options)?;
        let mut times = Vec::new();
        for _ in 0..repeat.max(1) {
            times.push(seconds(|| {
                cached.interrogate(&image, booru, &options)?;
                Ok(())
            })?);
        }
        println!(
            "  DeepBooru per call                          {:>8.3}",
            median(times)
        );
    }
    Ok(())
}
