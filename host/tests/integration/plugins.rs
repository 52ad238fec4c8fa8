//! Loading sampler plugins through the real dynamic path: listing, running, and every way a
//! plugin can fail (error, panic, NaN result, leaked handles, not a plugin, not a library, built against
//! another plugin API version, cancel, out of memory) without taking the host down, and a
//! cancel flag that stops even a sampler that never reports a step.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sdhost::sampling::plugins::{
    library_file_name, PluginLoadError, PluginPaths, SampleRequest, SamplerRegistry, SamplingError,
};
use sdhost::sampling::session::{Denoise, Noise, StepFailure, StepReport};
use sdhost_plugin_api::abi::HostErrorKind;
use sdhost_plugin_api::{Flow, OptionValue};
use tch::{Kind, Tensor};

/// D(x, σ) = x/(1+σ²): the exact denoiser of data concentrated at 0 with unit variance.
struct ShrinkDenoiser;

impl Denoise for ShrinkDenoiser {
    fn denoise(&mut self, x: &Tensor, sigma: f64, _: Option<f64>) -> Result<Tensor, StepFailure> {
        Ok(x / (1.0 + sigma * sigma))
    }
}

/// Fails like a device that ran out of memory.
struct OomDenoiser;

impl Denoise for OomDenoiser {
    fn denoise(&mut self, _: &Tensor, _: f64, _: Option<f64>) -> Result<Tensor, StepFailure> {
        Err(StepFailure {
            kind: HostErrorKind::OutOfMemory,
            message: "CUDA out of memory (simulated)".into(),
        })
    }
}

struct ZeroNoise;

impl Noise for ZeroNoise {
    fn noise(&mut self) -> Result<Tensor, StepFailure> {
        Ok(Tensor::zeros([1, 4, 4, 4], (Kind::Float, tch::Device::Cpu)))
    }
    fn brownian_noise(&mut self, _: f64, _: f64) -> Result<Tensor, StepFailure> {
        self.noise()
    }
}

fn target_dir() -> PathBuf {
    let paths = PluginPaths::discover(None);
    paths
        .builtin
        .expect("build the workspace first (make test does): the built-in plugin is missing")
        .parent()
        .unwrap()
        .to_path_buf()
}

fn library(stem: &str) -> PathBuf {
    target_dir().join(library_file_name(stem))
}

fn registry_with(folder: &Path) -> SamplerRegistry {
    SamplerRegistry::load(&PluginPaths {
        builtin: PluginPaths::discover(None).builtin,
        folder: Some(folder.to_path_buf()),
    })
}

/// A temporary plugin folder holding copies of the built `libraries`.
pub(crate) fn folder_with(libraries: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for stem in libraries {
        let name = library_file_name(stem);
        std::fs::copy(library(stem), dir.path().join(&name)).unwrap();
    }
    dir
}

fn request(sigmas: &[f64], options: Vec<(String, OptionValue)>) -> SampleRequest {
    SampleRequest {
        x: Tensor::ones([1, 4, 4, 4], (Kind::Float, tch::Device::Cpu)) * sigmas[0],
        sigmas: sigmas.to_vec(),
        timesteps: vec![],
        alphas_cumprod: vec![],
        options,
        cancel: None,
    }
}

fn run(
    registry: &SamplerRegistry,
    name: &str,
    request: SampleRequest,
    denoiser: &mut dyn Denoise,
    on_step: &mut dyn FnMut(StepReport<'_>) -> Flow,
) -> Result<Tensor, SamplingError> {
    let found = registry.find(name)?;
    registry.sample(found, request, denoiser, &mut ZeroNoise, on_step)
}

#[test]
fn lists_builtin_and_folder_plugins_and_runs_a_third_party_sampler() {
    let folder = folder_with(&["example_sampler"]);
    let registry = registry_with(folder.path());
    assert!(registry.skipped.is_empty(), "{:?}", registry.skipped);
    let names: Vec<String> = registry.plugins().iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, ["sdhost built-in", "example"]);
    let midpoint = registry.find("example_midpoint").unwrap();
    assert_eq!(midpoint.info.name.as_str(), "Midpoint");
    assert_eq!(midpoint.plugin.name, "example");
    assert!(
        registry.find("EULER A").is_ok(),
        "names are case-insensitive"
    );

    // The midpoint method on D = x/(1+σ²), computed here independently.
    let sigmas = [2.0, 1.0, 0.5, 0.0];
    let mut steps = Vec::new();
    let mut on_step = |r: StepReport<'_>| {
        steps.push((r.step, r.total, r.sigma));
        Flow::Continue
    };
    let result = run(
        &registry,
        "Midpoint",
        request(&sigmas, vec![]),
        &mut ShrinkDenoiser,
        &mut on_step,
    )
    .unwrap();
    let mut x = 2.0f64;
    for pair in sigmas.windows(2) {
        let (s, n) = (pair[0], pair[1]);
        let slope = |x: f64, s: f64| (x - x / (1.0 + s * s)) / s;
        if n == 0.0 {
            x += slope(x, s) * (n - s);
        } else {
            let m = s + 0.5 * (n - s);
            let xm = x + slope(x, s) * (m - s);
            x += slope(xm, m) * (n - s);
        }
    }
    let got = result.mean(Kind::Double).double_value(&[]);
    assert!(
        (got - x).abs() < 1e-5,
        "midpoint result {got}, expected {x}"
    );
    assert_eq!(steps, [(0, 3, 2.0), (1, 3, 1.0), (2, 3, 0.5)]);

    // Options: declared and typed, checked by the host before the plugin runs.
    let bad = run(
        &registry,
        "Midpoint",
        request(
            &sigmas,
            vec![("midpoint".into(), OptionValue::Text("half".into()))],
        ),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    );
    assert!(
        matches!(bad, Err(SamplingError::BadOption { .. })),
        "{bad:?}"
    );
    let unknown = run(
        &registry,
        "Midpoint",
        request(&sigmas, vec![("eta".into(), OptionValue::Number(1.0))]),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    );
    let message = unknown.unwrap_err().to_string();
    assert!(
        message.contains("unknown option \"eta\"") && message.contains("midpoint"),
        "{message}"
    );
    // The plugin's own validation reaches the user as an option error.
    let out_of_range = run(
        &registry,
        "Midpoint",
        request(&sigmas, vec![("midpoint".into(), OptionValue::Number(3.0))]),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    );
    assert!(
        matches!(out_of_range, Err(SamplingError::BadOption { .. })),
        "{out_of_range:?}"
    );
}

#[test]
fn plugin_errors_and_panics_become_job_errors() {
    let folder = folder_with(&["faulty_sampler"]);
    let registry = registry_with(folder.path());
    let sigmas = [1.0, 0.0];
    let panicked = run(
        &registry,
        "Panics",
        request(&sigmas, vec![]),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    );
    match panicked {
        Err(SamplingError::Panic {
            plugin,
            sampler,
            message,
        }) => {
            assert_eq!((plugin.as_str(), sampler.as_str()), ("faulty", "Panics"));
            assert!(message.contains("deliberate panic"), "{message}");
        }
        other => panic!("expected a caught panic, got {other:?}"),
    }
    let failed = run(
        &registry,
        "Fails",
        request(&sigmas, vec![]),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    );
    let message = failed.unwrap_err().to_string();
    assert!(
        message.contains("faulty") && message.contains("deliberate failure"),
        "{message}"
    );
    // A result with NaN is refused, not decoded into a black image reported as done.
    let garbage = run(
        &registry,
        "NotFinite",
        request(&sigmas, vec![]),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    );
    match garbage {
        Err(SamplingError::Failed {
            plugin, message, ..
        }) => {
            assert_eq!(plugin, "faulty");
            assert!(message.contains("NaN or infinite"), "{message}");
        }
        other => panic!("expected a refused result, got {other:?}"),
    }
    // Leaked handles are freed with the session; the result is still right.
    let leaked = run(
        &registry,
        "Leaks",
        request(&sigmas, vec![]),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    )
    .unwrap();
    assert!((leaked.mean(Kind::Double).double_value(&[]) - 0.5).abs() < 1e-6);
    // The host goes on working after all of that.
    let euler = run(
        &registry,
        "Euler",
        request(&[1.0, 0.0], vec![]),
        &mut ShrinkDenoiser,
        &mut |_| Flow::Continue,
    );
    assert!(euler.is_ok());
    let unknown = registry.find("No Such Sampler").err().unwrap().to_string();
    assert!(
        unknown.contains("No Such Sampler") && unknown.contains("Euler a"),
        "{unknown}"
    );
}

#[test]
fn cancel_and_out_of_memory_stop_the_sampler() {
    let registry = registry_with(Path::new("/nonexistent"));
    let sigmas = [3.0, 2.0, 1.0, 0.0];
    let mut seen = 0;
    let cancelled = run(
        &registry,
        "Euler",
        request(&sigmas, vec![]),
        &mut ShrinkDenoiser,
        &mut |_| {
            seen += 1;
            Flow::Cancel
        },
    );
    assert!(
        matches!(cancelled, Err(SamplingError::Cancelled)),
        "{cancelled:?}"
    );
    assert_eq!(seen, 1, "the sampler stops at the first cancelled step");
    let oom = run(
        &registry,
        "Euler a",
        request(&sigmas, vec![]),
        &mut OomDenoiser,
        &mut |_| Flow::Continue,
    );
    match oom {
        Err(SamplingError::OutOfMemory { sampler, message }) => {
            assert_eq!(sampler, "Euler a");
            assert!(message.contains("out of memory"));
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
}

/// Sets the job's cancel flag during its `cancel_at`-th model call, as the daemon's connection
/// thread does while the worker is inside the model.
struct CancellingDenoiser {
    calls: usize,
    cancel_at: Option<usize>,
    flag: Arc<AtomicBool>,
}

impl Denoise for CancellingDenoiser {
    fn denoise(&mut self, x: &Tensor, sigma: f64, _: Option<f64>) -> Result<Tensor, StepFailure> {
        self.calls += 1;
        if self.cancel_at == Some(self.calls) {
            self.flag.store(true, Ordering::SeqCst);
        }
        Ok(x / (1.0 + sigma * sigma))
    }
}

/// Zero noise that counts its draws and sets the cancel flag during the `cancel_at`-th.
struct CancellingNoise {
    draws: usize,
    cancel_at: Option<usize>,
    flag: Arc<AtomicBool>,
}

impl Noise for CancellingNoise {
    fn noise(&mut self) -> Result<Tensor, StepFailure> {
        self.draws += 1;
        if self.cancel_at == Some(self.draws) {
            self.flag.store(true, Ordering::SeqCst);
        }
        ZeroNoise.noise()
    }
    fn brownian_noise(&mut self, _: f64, _: f64) -> Result<Tensor, StepFailure> {
        self.noise()
    }
}

#[test]
fn cancel_flag_stops_a_sampler_that_never_reports_a_step() {
    // "Silent" draws noise and calls the model once per σ and never calls back, so only the
    // host's own check of the flag can stop it.
    let folder = folder_with(&["faulty_sampler"]);
    let registry = registry_with(folder.path());
    let sigmas = [4.0, 3.0, 2.0, 1.0, 0.0];
    // Returns (result, model calls, noise draws, steps reported).
    let run_silent = |denoise_cancel_at, noise_cancel_at| {
        let flag = Arc::new(AtomicBool::new(false));
        let mut denoiser = CancellingDenoiser {
            calls: 0,
            cancel_at: denoise_cancel_at,
            flag: flag.clone(),
        };
        let mut noise = CancellingNoise {
            draws: 0,
            cancel_at: noise_cancel_at,
            flag: flag.clone(),
        };
        let mut steps = 0;
        let request = SampleRequest {
            cancel: Some(flag),
            ..request(&sigmas, vec![])
        };
        let result = registry.sample(
            registry.find("Silent").unwrap(),
            request,
            &mut denoiser,
            &mut noise,
            &mut |_| {
                steps += 1;
                Flow::Continue
            },
        );
        (result, denoiser.calls, noise.draws, steps)
    };

    let (result, calls, draws, steps) = run_silent(None, None);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        (calls, draws, steps),
        (5, 5, 0),
        "uncancelled, it runs to the end"
    );

    // Cancelled during the second model call: the third noise draw fails.
    let (result, calls, draws, _) = run_silent(Some(2), None);
    assert!(
        matches!(result, Err(SamplingError::Cancelled)),
        "{result:?}"
    );
    assert_eq!((calls, draws), (2, 2));

    // Cancelled during the second noise draw: the second model call fails.
    let (result, calls, draws, _) = run_silent(None, Some(2));
    assert!(
        matches!(result, Err(SamplingError::Cancelled)),
        "{result:?}"
    );
    assert_eq!((calls, draws), (1, 2));
}

#[test]
fn refuses_libraries_that_are_not_plugins() {
    let folder = folder_with(&["not_a_plugin"]);
    std::fs::write(
        folder.path().join(library_file_name("garbage")),
        b"not an ELF file",
    )
    .unwrap();
    let registry = registry_with(folder.path());
    assert_eq!(
        registry.plugins().len(),
        1,
        "only the built-in plugin loads"
    );
    assert_eq!(registry.skipped.len(), 2, "{:?}", registry.skipped);
    let garbage = registry
        .skipped
        .iter()
        .find(|e| matches!(e, PluginLoadError::NotALibrary { .. }))
        .expect("the garbage file is not a library");
    assert!(garbage.to_string().contains("libgarbage"), "{garbage}");
    let plain = registry
        .skipped
        .iter()
        .find(|e| matches!(e, PluginLoadError::NotAPlugin { .. }))
        .expect("a library without the root module symbol is not a plugin");
    assert!(plain.to_string().contains("not_a_plugin"), "{plain}");
}

/// The version of sdhost-plugin-api in this tree (plugin-api/Cargo.toml).
const API_VERSION: &str = "0.2.0";

/// Builds the example plugin against a copy of sdhost-plugin-api with another `version` and
/// its `abi.rs` passed through `edit`, in `target/fixtures/<name>`.
fn build_plugin_against_changed_api(
    name: &str,
    version: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let root = common::workspace();
    let work = root.join("target/fixtures").join(name);
    let api = work.join("plugin-api");
    let plugin = work.join("example-sampler");
    for dir in [&api.join("src"), &plugin.join("src")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for entry in std::fs::read_dir(root.join("plugin-api/src")).unwrap() {
        let entry = entry.unwrap();
        let mut text = std::fs::read_to_string(entry.path()).unwrap();
        if entry.file_name() == "abi.rs" {
            text = edit(text);
        }
        std::fs::write(api.join("src").join(entry.file_name()), text).unwrap();
    }
    let manifest = std::fs::read_to_string(root.join("plugin-api/Cargo.toml"))
        .unwrap()
        .replace(
            &format!("version = \"{API_VERSION}\""),
            &format!("version = \"{version}\""),
        )
        .replace("edition.workspace = true", "edition = \"2021\"")
        .replace("license.workspace = true", "")
        .replace("rust-version.workspace = true", "")
        .replace("abi_stable.workspace = true", "abi_stable = \"0.11\"");
    assert!(manifest.contains(version));
    std::fs::write(api.join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(
        root.join("plugins/example-sampler/src/lib.rs"),
        plugin.join("src/lib.rs"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(root.join("plugins/example-sampler/Cargo.toml"))
        .unwrap()
        .replace("../../plugin-api", "../plugin-api");
    std::fs::write(plugin.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(
        work.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"plugin-api\", \"example-sampler\"]\n",
    )
    .unwrap();
    // The same dependency versions as the main build, without the network.
    std::fs::copy(root.join("Cargo.lock"), work.join("Cargo.lock")).unwrap();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--offline",
            "--quiet",
            "-p",
            "example-sampler",
        ])
        .current_dir(&work)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the fixture plugin failed");
    work.join("target/release")
        .join(library_file_name("example_sampler"))
}

#[test]
fn refuses_a_plugin_built_against_another_api_version() {
    let built = build_plugin_against_changed_api("plugin-api-0.3", "0.3.0", |abi| abi);
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join(library_file_name("example_sampler_v2"));
    std::fs::copy(&built, &path).unwrap();
    let registry = registry_with(folder.path());
    assert_eq!(registry.plugins().len(), 1);
    match &registry.skipped[..] {
        [error @ PluginLoadError::VersionMismatch { plugin, host, .. }] => {
            assert_eq!((plugin.as_str(), host.as_str()), ("0.3.0", API_VERSION));
            let message = error.to_string();
            assert!(
                message.contains("example_sampler_v2")
                    && message.contains("0.3.0")
                    && message.contains(API_VERSION),
                "{message}"
            );
        }
        other => panic!("expected one version mismatch, got {other:?}"),
    }
}

#[test]
fn refuses_a_plugin_whose_abi_layout_differs() {
    // Same version number, one more operation in an enum: abi_stable's layout check catches it.
    let built = build_plugin_against_changed_api("plugin-api-layout", API_VERSION, |abi| {
        let changed = abi.replace(
            "pub enum ScalarOp {\n",
            "pub enum ScalarOp {\n    /// x·s\n    Mul,\n",
        );
        assert_ne!(changed, abi, "the fixture edit must apply");
        changed
    });
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(
        &built,
        folder.path().join(library_file_name("example_changed")),
    )
    .unwrap();
    let registry = registry_with(folder.path());
    assert_eq!(registry.plugins().len(), 1);
    match &registry.skipped[..] {
        [error @ PluginLoadError::AbiMismatch { detail, .. }] => {
            let message = error.to_string();
            assert!(message.contains("example_changed"), "{message}");
            assert!(
                detail.lines().count() <= 5 && detail.len() < 600,
                "{detail}"
            );
        }
        other => panic!("expected one ABI mismatch, got {other:?}"),
    }
}
