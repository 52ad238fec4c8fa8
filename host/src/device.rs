//! Device and dtype selection from user-facing names (`cpu`, `cuda`, `cuda:1`; `fp32`, `fp16`, `bf16`).

use tch::{Device, Kind};

/// A device or dtype name that was not understood, or a device that is not available.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The name is not a device.
    #[error("unknown device `{0}` (expected cpu, cuda or cuda:N)")]
    UnknownDevice(String),
    /// CUDA was asked for but libtorch sees no CUDA device.
    #[error("device `{0}` is not available: libtorch sees {1} CUDA device(s)")]
    Unavailable(String, i64),
    /// The name is not a dtype.
    #[error("unknown dtype `{0}` (expected fp32, fp16 or bf16)")]
    UnknownDtype(String),
}

/// Parses a device name and checks that the device exists.
pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    let lower = name.trim().to_ascii_lowercase();
    let index = match lower.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::UnknownDevice(name.to_string()))?,
    };
    let count = tch::Cuda::device_count();
    if (index as i64) < count {
        Ok(Device::Cuda(index))
    } else {
        Err(DeviceError::Unavailable(name.to_string(), count))
    }
}

/// Parses a dtype name.
pub fn parse_dtype(name: &str) -> Result<Kind, DeviceError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "fp32" | "f32" | "float32" | "float" => Ok(Kind::Float),
        "fp16" | "f16" | "float16" | "half" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        _ => Err(DeviceError::UnknownDtype(name.to_string())),
    }
}

/// The user-facing name of a dtype.
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "fp32",
        Kind::Half => "fp16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "fp64",
        _ => "other",
    }
}

/// Whether this CPU computes bf16 in hardware (x86 AVX512-BF16, which every AMX CPU also has;
/// Arm's BF16). Elsewhere libtorch converts each bf16 value to fp32 and back, so bf16 runs
/// several times slower than fp32 instead of faster.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("bf16");
    #[allow(unreachable_code)]
    false
}

/// Hands the heap memory that finished stages freed back to the system. glibc keeps freed
/// buffers below its (adaptive) mmap threshold in its heaps, so without this a job's VAE
/// decode would stack its peak on top of what the sampler left behind (CPU only; the CUDA
/// caching allocator reuses its blocks itself).
pub fn release_freed_memory(device: Device) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if device == Device::Cpu {
        // SAFETY: malloc_trim only returns unused heap pages and touches no live allocation; it
        // takes each arena's lock, so other threads may allocate meanwhile.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = device;
}
