//! Where `sdhost bench` runs: the device, which cases and dtypes it takes, its clock (CUDA runs
//! asynchronously, so the clock is read only after the device has finished) and the line that
//! makes a pasted table say what it measured.

use std::time::Instant;

use anyhow::Context;
use tch::Device;

use super::reference::Reference;
use crate::device::{cpu_has_native_bf16, parse_device};

/// The cases that run on a CUDA device: the networks and whole jobs side by side.
pub const CUDA_CASES: &str = "unet,vae-encode,vae-decode,clip,gemm,jobs,batching";

/// Why the other cases stay on the CPU, printed when they are skipped on CUDA.
const CPU_ONLY_REASON: &str = "measures the CPU itself (peak RSS, the CPU profiler, \
    sdhost-only figures or CPU-sized models)";

/// The libtorch sdhost was built against (host/build.rs reads it from that libtorch).
pub const LIBTORCH_VERSION: &str = match option_env!("SDHOST_LIBTORCH_VERSION") {
    Some(version) => version,
    None => "unknown",
};

/// The device a benchmark runs on and how it is timed there.
pub struct BenchContext {
    /// Where both sides run their networks.
    pub device: Device,
    /// The device as the user named it for both sides (`cpu`, `cuda:0`).
    pub name: String,
}

impl BenchContext {
    /// The context for a `--device` name; an unknown or absent device is an error here,
    /// before any model is made or loaded.
    pub fn new(device: &str) -> anyhow::Result<Self> {
        let device = parse_device(device)?;
        let name = match device {
            Device::Cuda(index) => format!("cuda:{index}"),
            _ => "cpu".to_string(),
        };
        Ok(BenchContext { device, name })
    }

    /// Whether the device is a CUDA one.
    pub fn is_cuda(&self) -> bool {
        matches!(self.device, Device::Cuda(_))
    }

    /// The dtypes compared when `--dtypes` is not given: fp32 on the CPU, and bf16 where the
    /// CPU computes it in hardware (fp16 convolutions have no fast CPU kernels, emulated bf16
    /// only measures the emulation); fp16 on CUDA.
    pub fn default_dtypes(&self) -> Vec<String> {
        let names: &[&str] = if self.is_cuda() {
            &["fp16"]
        } else if cpu_has_native_bf16() {
            &["fp32", "bf16"]
        } else {
            &["fp32"]
        };
        names.iter().map(|name| name.to_string()).collect()
    }

    /// The line saying which default dtype this device left out, if any.
    pub fn dtypes_left_out(&self) -> Option<&'static str> {
        (!self.is_cuda() && !cpu_has_native_bf16()).then_some(
            "bf16 left out: this CPU has no bf16 instructions (AVX512-BF16 or Arm BF16), so \
             libtorch emulates it through fp32; --dtypes fp32,bf16 measures the emulation",
        )
    }

    /// Checks that both sides can compare `dtype` on this device.
    pub fn check_dtype(&self, dtype: &str) -> anyhow::Result<()> {
        let known: &[&str] = if self.is_cuda() {
            &["fp32", "fp16", "bf16"]
        } else {
            &["fp32", "bf16"]
        };
        anyhow::ensure!(
            known.contains(&dtype),
            "bench dtype \"{dtype}\": the {} comparison runs {}",
            if self.is_cuda() { "CUDA" } else { "CPU" },
            known.join(", ")
        );
        Ok(())
    }

    /// The cases of `only` that run on this device; on CUDA the others are named as skipped.
    pub fn runnable(&self, only: &[String]) -> Vec<String> {
        if !self.is_cuda() {
            return only.to_vec();
        }
        let (kept, skipped): (Vec<String>, Vec<String>) = only
            .iter()
            .cloned()
            .partition(|case| CUDA_CASES.split(',').any(|cuda| cuda == case));
        for case in skipped {
            println!(
                "bench: {case} is CPU-only (it {CPU_ONLY_REASON}); skipped on {}",
                self.name
            );
        }
        kept
    }

    /// Waits until the device has run everything queued on it (nothing to wait for on the CPU).
    pub fn synchronize(&self) {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
    }

    /// Seconds `f` takes on the device: on CUDA the queue is drained before the clock starts
    /// and before it is read, so the time is the kernels', not their launches'.
    pub fn seconds<T>(&self, f: impl FnOnce() -> T) -> f64 {
        self.synchronize();
        let start = Instant::now();
        let out = f();
        self.synchronize();
        let elapsed = start.elapsed().as_secs_f64();
        drop(out);
        elapsed
    }

    /// The two lines that head a table: the device (its name from the reference side's torch),
    /// the dtypes, both libtorch versions and both sides' attention kernels.
    pub fn header(&self, reference: &mut Reference, dtypes: &[String]) -> anyhow::Result<String> {
        let answer = reference.ask(serde_json::json!({"op": "describe"}))?;
        let field = |key: &str| -> anyhow::Result<String> {
            answer[key]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("the reference's describe answered {answer}"))
        };
        Ok(format!(
            "device {} ({}), {}\nsdhost on libtorch {LIBTORCH_VERSION}, attention \
             scaled_dot_product_attention; diffusers {} on torch {}, attention {}",
            self.name,
            field("device_name")?,
            dtypes.join(", "),
            field("diffusers")?,
            field("torch")?,
            field("attention")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_keeps_every_case_and_its_native_dtypes() {
        let context = BenchContext::new("cpu").unwrap();
        let only = vec!["unet".to_string(), "memory".to_string()];
        assert_eq!(context.runnable(&only), only);
        let expected: &[&str] = if cpu_has_native_bf16() {
            &["fp32", "bf16"]
        } else {
            &["fp32"]
        };
        assert_eq!(context.default_dtypes(), expected);
        assert_eq!(context.dtypes_left_out().is_some(), expected.len() == 1);
        assert!(context.check_dtype("bf16").is_ok());
        let error = context.check_dtype("fp16").unwrap_err().to_string();
        assert!(error.contains("CPU comparison runs fp32, bf16"), "{error}");
    }

    #[test]
    fn cuda_keeps_only_the_side_by_side_cases() {
        // Built by hand: this machine may have no CUDA device for `new` to accept.
        let context = BenchContext {
            device: Device::Cuda(0),
            name: "cuda:0".into(),
        };
        let only: Vec<String> = ["unet", "memory", "jobs", "profile"]
            .iter()
            .map(|case| case.to_string())
            .collect();
        assert_eq!(context.runnable(&only), ["unet", "jobs"]);
        assert_eq!(context.default_dtypes(), ["fp16"]);
        assert!(context.check_dtype("fp16").is_ok());
        assert!(context.check_dtype("fp8").is_err());
    }

    #[test]
    fn an_absent_cuda_device_is_an_error_before_any_work() {
        let count = tch::Cuda::device_count();
        let error = BenchContext::new(&format!("cuda:{count}"))
            .err()
            .expect("no such device");
        assert!(error.to_string().contains("not available"), "{error}");
        assert!(BenchContext::new("tpu").is_err());
    }

    #[test]
    fn the_clock_measures_on_the_cpu() {
        let context = BenchContext::new("cpu").unwrap();
        let seconds = context.seconds(|| std::thread::sleep(std::time::Duration::from_millis(20)));
        assert!(seconds >= 0.02, "{seconds}");
        assert_ne!(LIBTORCH_VERSION, "unknown");
    }
}
