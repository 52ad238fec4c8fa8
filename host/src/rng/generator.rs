//! libtorch generator objects through the C++ shim in csrc/generator.cpp.

use std::ffi::{c_char, c_int, CStr};
use std::ptr::NonNull;
use tch::{Device, Kind, Tensor};

/// What can go wrong making or drawing from a generator.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Generators live on the CPU or a CUDA device only.
    #[error("random number generators are supported on the CPU and CUDA only, not {0:?}")]
    UnsupportedDevice(Device),
    /// `randn` makes floating-point (or complex) tensors only.
    #[error("randn cannot make {0:?} tensors")]
    UnsupportedKind(Kind),
    /// A noise shape that cannot be drawn (wrong rank, negative size).
    #[error("invalid noise shape {0:?}")]
    InvalidShape(Vec<i64>),
    /// A batch needs at least one seed.
    #[error("no seeds given")]
    NoSeeds,
    /// libtorch threw while making or using a generator (CUDA unavailable, out of memory, ...).
    #[error("libtorch generator: {0}")]
    Torch(String),
    /// A tensor operation on the drawn noise failed.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
}

/// The shim's `at::Generator`, only ever handled through a pointer.
#[repr(C)]
struct AtGenerator {
    _opaque: [u8; 0],
}

extern "C" {
    fn sdhost_generator_free_error(message: *mut c_char);
    fn sdhost_generator_new(
        device_type: c_int,
        device_index: c_int,
        seed: u64,
        out: *mut *mut AtGenerator,
    ) -> *mut c_char;
    fn sdhost_generator_free(generator: *mut AtGenerator);
    fn sdhost_generator_set_seed(generator: *mut AtGenerator, seed: u64) -> *mut c_char;
    fn sdhost_generator_randn(
        generator: *mut AtGenerator,
        sizes: *const i64,
        ndim: usize,
        dtype: c_int,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut c_char;
}

/// Turns the shim's returned message (null on success) into a result, releasing it.
fn check(message: *mut c_char) -> Result<(), RngError> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string the shim hands over to us.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: released exactly once, by the shim that allocated it.
    unsafe { sdhost_generator_free_error(message) };
    Err(RngError::Torch(text))
}

/// c10's ScalarType code of the kinds `randn` can make.
fn scalar_type(kind: Kind) -> Result<c_int, RngError> {
    // Values of c10/core/ScalarType.h; tch keeps its own mapping private.
    Ok(match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::ComplexHalf => 8,
        Kind::ComplexFloat => 9,
        Kind::ComplexDouble => 10,
        Kind::BFloat16 => 15,
        other => return Err(RngError::UnsupportedKind(other)),
    })
}

/// A libtorch random number generator of its own, like `torch.Generator(device)`.
///
/// Each generator has its own state, so generators on different threads do not interfere
/// (unlike [`super::with_global_seed`], which serialises all users of the global one).
pub struct Generator {
    raw: NonNull<AtGenerator>,
    device: Device,
}

// SAFETY: the at::Generator is owned by this value alone and libtorch guards its state with
// the generator's own mutex, so it may be used from whichever thread owns the value.
unsafe impl Send for Generator {}

impl Generator {
    /// A generator on `device` seeded like `torch.Generator(device).manual_seed(seed)`.
    pub fn new(seed: u64, device: Device) -> Result<Self, RngError> {
        let (device_type, device_index) = match device {
            Device::Cpu => (0, -1),
            Device::Cuda(index) => (
                1,
                c_int::try_from(index).map_err(|_| RngError::UnsupportedDevice(device))?,
            ),
            Device::Mps | Device::Vulkan => return Err(RngError::UnsupportedDevice(device)),
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the shim sets it only on success.
        check(unsafe { sdhost_generator_new(device_type, device_index, seed, &mut raw) })?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| RngError::Torch("the shim returned no generator".into()))?;
        Ok(Self { raw, device })
    }

    /// The device this generator draws on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Restarts the stream from `seed`, like `Generator.manual_seed(seed)`.
    pub fn manual_seed(&mut self, seed: u64) -> Result<(), RngError> {
        // SAFETY: `raw` is a live generator owned by `self`.
        check(unsafe { sdhost_generator_set_seed(self.raw.as_ptr(), seed) })
    }

    /// The next draw, like `torch.randn(shape, generator=g, dtype=kind, device=g.device)`.
    pub fn randn(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor, RngError> {
        let dtype = scalar_type(kind)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: `raw` is live, `shape` outlives the call, `out` is a valid out-pointer.
        check(unsafe {
            sdhost_generator_randn(
                self.raw.as_ptr(),
                shape.as_ptr(),
                shape.len(),
                dtype,
                &mut out,
            )
        })?;
        if out.is_null() {
            return Err(RngError::Torch("the shim returned no tensor".into()));
        }
        // SAFETY: `out` is a heap at::Tensor made by `new`, which the tch Tensor now owns and
        // deletes on drop, as for every tensor torch-sys returns.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // SAFETY: `raw` came from sdhost_generator_new and is freed only here.
        unsafe { sdhost_generator_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}
