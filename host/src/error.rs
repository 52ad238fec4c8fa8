//! How the host reads the failures libtorch reports: tch turns libtorch errors into panics (or
//! `TchError`s) carrying libtorch's text, which the host catches at each stage
//! ([`panic_message`]) and classifies once ([`torch_failure`]: out of memory or not).
//!
//! All of this needs `panic = "unwind"` (the workspace `Cargo.toml` says so): with "abort"
//! the first libtorch error would end the daemon.

/// What kind of failure libtorch reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchFailure {
    /// An allocation failed on the device or in the CPU allocator: a smaller size, batch or
    /// tiling may work, so users get their own error code for it.
    OutOfMemory,
    /// Any other libtorch error (device error, unsupported operation, …).
    Other,
}

/// Classifies a libtorch error message, from a `TchError` or a caught tch panic. This is the
/// one place that reads libtorch's wording: CUDA's `c10::OutOfMemoryError` ("CUDA out of
/// memory. Tried to allocate …"), MPS ("MPS backend out of memory") and the CPU allocator
/// ("DefaultCPUAllocator: can't allocate memory: …").
pub fn torch_failure(message: &str) -> TorchFailure {
    if message.to_lowercase().contains("out of memory") || message.contains("DefaultCPUAllocator") {
        TorchFailure::OutOfMemory
    } else {
        TorchFailure::Other
    }
}

/// The message of a caught panic (tch reports libtorch errors, out-of-memory included, as
/// panics carrying the error text). Every part of the host uses this one; the plugin API
/// crate keeps a private copy (`plugin-api/src/export.rs`), since plugins must not depend on
/// the host.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::catch_unwind;
    use tch::{Device, Kind, Tensor};

    /// 2⁵⁴ floats, 64 PiB: more than any address space holds, so the CPU allocator refuses.
    const TOO_MANY: i64 = 1 << 54;

    #[test]
    fn libtorch_running_out_of_memory_is_out_of_memory() {
        let error = Tensor::f_empty([TOO_MANY], (Kind::Float, Device::Cpu)).unwrap_err();
        assert_eq!(
            torch_failure(&error.to_string()),
            TorchFailure::OutOfMemory,
            "{error}"
        );
        // tch's infallible operations panic with the same text.
        let payload =
            catch_unwind(|| Tensor::empty([TOO_MANY], (Kind::Float, Device::Cpu))).unwrap_err();
        assert_eq!(
            torch_failure(&panic_message(&*payload)),
            TorchFailure::OutOfMemory
        );
    }

    #[test]
    fn other_libtorch_errors_are_not() {
        let (a, b) = (
            Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
            Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
        );
        let error = a.f_matmul(&b).unwrap_err();
        assert_eq!(
            torch_failure(&error.to_string()),
            TorchFailure::Other,
            "{error}"
        );
    }

    #[test]
    fn each_backends_wording_is_recognised() {
        for message in [
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)",
            "MPS backend out of memory (MPS allocated: 17.00 GB)",
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: \
             you tried to allocate 1099511627776 bytes.",
        ] {
            assert_eq!(
                torch_failure(message),
                TorchFailure::OutOfMemory,
                "{message}"
            );
        }
        assert_eq!(
            torch_failure("device-side assert triggered"),
            TorchFailure::Other
        );
    }
}
