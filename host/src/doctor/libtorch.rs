//! The libtorch this process really runs on (from `/proc/self/maps`, not from where it was
//! built), its `sdhost-libtorch.json` manifest, CUDA, and whether the configured device works.

use std::path::{Path, PathBuf};

use tch::Device;

use super::Check;
use crate::daemon::config::ServeConfig;
use crate::device::{parse_device, parse_dtype};

/// The manifest a libtorch variant root carries, two folders above `torch/lib`.
const MANIFEST: &str = "sdhost-libtorch.json";

/// The mapped file whose name is `name`, from `/proc/self/maps`.
fn loaded_library(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let suffix = format!("/{name}");
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with(&suffix))
        .map(PathBuf::from)
}

/// Whether this process has libtorch's CUDA part loaded (the build links it when present).
fn cuda_loaded() -> bool {
    loaded_library("libtorch_cuda.so").is_some()
}

/// "torch 2.13.0, variant cpu (from …/sdhost-libtorch.json)" or the pip package's version.
fn describe_version(lib_dir: &Path) -> String {
    let Some(root) = lib_dir.parent().and_then(Path::parent) else {
        return "version unknown".into();
    };
    let manifest = root.join(MANIFEST);
    if let Ok(text) = std::fs::read_to_string(&manifest) {
        return match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(json) => format!(
                "torch {}, variant {} (from {})",
                json["torch"].as_str().unwrap_or("?"),
                json["variant"].as_str().unwrap_or("?"),
                manifest.display()
            ),
            Err(e) => format!("{} is not valid JSON: {e}", manifest.display()),
        };
    }
    // The pip package (`.venv/libtorch`) has no manifest but its version.py.
    let version = lib_dir
        .parent()
        .and_then(|torch| std::fs::read_to_string(torch.join("version.py")).ok())
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim_matches(['\'', '"', ' ']).to_string())
        });
    match version {
        Some(v) => format!("torch {v} (pip package, no {MANIFEST})"),
        None => format!("version unknown (no {MANIFEST})"),
    }
}

/// The libtorch and CUDA lines.
pub(super) fn check() -> Vec<Check> {
    let reinstall = "rebuild and reinstall: `make install` in the sdhost clone (scripts/install)";
    let libtorch = match loaded_library("libtorch_cpu.so") {
        Some(file) => {
            let version = file
                .parent()
                .map(describe_version)
                .unwrap_or_else(|| "version unknown".into());
            Check::ok("libtorch", format!("{}; {version}", file.display()))
        }
        None => Check::problem(
            "libtorch",
            "libtorch_cpu.so is not among the loaded libraries (/proc/self/maps unreadable?)",
            reinstall,
        ),
    };
    let cuda = if cuda_loaded() {
        if tch::Cuda::is_available() {
            Check::ok(
                "cuda",
                format!(
                    "compiled in; available, {} device(s)",
                    tch::Cuda::device_count()
                ),
            )
        } else {
            Check::ok("cuda", "compiled in; no usable GPU here (device cpu works)")
        }
    } else {
        Check::ok("cuda", "not compiled in (a CPU libtorch)")
    };
    vec![libtorch, cuda]
}

/// Whether the configured device and dtype can run here.
pub(super) fn device(config: &ServeConfig, config_file: &str) -> Vec<Check> {
    let name = config.device.as_deref().unwrap_or("cpu");
    let dtype = config.dtype.as_deref().unwrap_or("fp32");
    let use_cpu = format!("set device = \"cpu\" in {config_file} (or pass --device cpu)");
    if let Err(e) = parse_dtype(dtype) {
        return vec![Check::problem(
            "device",
            e.to_string(),
            format!("set dtype = \"fp32\" (or fp16, bf16) in {config_file}"),
        )];
    }
    let device = match parse_device(name) {
        Ok(device) => device,
        Err(e) => return vec![Check::problem("device", e.to_string(), use_cpu)],
    };
    let check = match device {
        Device::Cuda(index) => {
            if !cuda_loaded() {
                Check::problem(
                    "device",
                    format!("{name} is configured but this libtorch has no CUDA"),
                    format!(
                        "{use_cpu}, or rebuild with the CUDA libtorch: \
                         `SDHOST_TORCH_VARIANT=cuda make install` in the sdhost clone"
                    ),
                )
            } else if !tch::Cuda::is_available() {
                Check::problem(
                    "device",
                    format!("{name} is configured but no CUDA GPU is usable"),
                    format!("check the NVIDIA driver (`nvidia-smi`), or {use_cpu}"),
                )
            } else {
                let count = tch::Cuda::device_count();
                if i64::try_from(index).is_ok_and(|i| i < count) {
                    Check::ok("device", format!("{name}, {dtype}"))
                } else {
                    Check::problem(
                        "device",
                        format!("{name} is configured but there are {count} GPU(s)"),
                        format!("set device = \"cuda:0\" in {config_file}"),
                    )
                }
            }
        }
        _ => Check::ok("device", format!("{name}, {dtype}")),
    };
    vec![check]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_libtorch_is_found_in_the_process_maps() {
        // Test binaries link libtorch like the sdhost binary does.
        let file = loaded_library("libtorch_cpu.so").expect("libtorch_cpu.so is mapped");
        assert!(file.is_file(), "{}", file.display());
        assert!(loaded_library("libnot-a-library.so").is_none());
        let checks = check();
        assert_eq!(checks[0].status, super::super::Status::Ok, "{checks:?}");
    }
}
