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
/// panics carrying the error text), made readable by [`torch_message`]. Every part of the host
/// uses this one; the plugin API crate keeps a private copy (`plugin-api/src/export.rs`),
/// since plugins must not depend on the host.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let raw = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown error");
    torch_message(raw)
}

/// libtorch's error text without what users cannot act on: tch's panic wrapping
/// (`` called `Result::unwrap()` on an `Err` value: Torch("…") ``, escaped), libtorch's C++
/// backtrace (`Exception raised from …`, `frame #0: …`, kilobytes of it) and its
/// `[enforce fail at file:line]` prefix. Other text is returned as it is.
pub fn torch_message(raw: &str) -> String {
    let text = match raw.split_once("Torch(\"") {
        Some((_, inner)) => inner
            .strip_suffix("\")")
            .unwrap_or(inner)
            .replace("\\n", "\n")
            .replace("\\\"", "\""),
        None => raw.to_string(),
    };
    let end = ["\nException raised from", "\nframe #"]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .unwrap_or(text.len());
    let text = text[..end].trim();
    let text = text
        .strip_prefix("[enforce fail at ")
        .and_then(|rest| rest.split_once("] "))
        .map_or(text, |(_, message)| message);
    text.trim().to_string()
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
    fn libtorch_messages_lose_the_wrapping_and_the_backtrace() {
        let payload =
            catch_unwind(|| Tensor::empty([TOO_MANY], (Kind::Float, Device::Cpu))).unwrap_err();
        let message = panic_message(&*payload);
        assert!(message.contains("DefaultCPUAllocator"), "{message}");
        assert!(
            !message.contains("frame #") && !message.contains("unwrap"),
            "{message}"
        );
        assert!(message.len() < 200, "{message}");
        let wrapped = "called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. \
                       Tried to allocate 2.00 GiB\\nException raised from malloc at x.cpp:1\\n\
                       frame #0: f() + 0x6a\")";
        assert_eq!(
            torch_message(wrapped),
            "CUDA out of memory. Tried to allocate 2.00 GiB"
        );
        // A plugin's own panic text, lines included, stays as it is.
        assert_eq!(torch_message("bad σ\nsecond line"), "bad σ\nsecond line");
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
