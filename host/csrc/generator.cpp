// libtorch generator objects for Rust: tch only exposes the global generator, while A1111
// gives every image its own torch.Generator. Every entry point catches all C++ exceptions
// (none may cross into Rust) and returns the message, NULL on success; the caller releases it
// with sdhost_generator_free_error.

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/randn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>

namespace {

// Returned when even the message cannot be copied; never freed.
char kOutOfMemory[] = "out of memory while reporting a libtorch error";

char *copy_message(const char *message) {
  char *copy = strdup(message);
  return copy != nullptr ? copy : kOutOfMemory;
}

template <typename F> char *guarded(F &&body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error &e) {
    // The C++ backtrace in what() means nothing to a Rust caller.
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

}  // namespace

extern "C" {

// Releases a message returned by the functions below.
void sdhost_generator_free_error(char *message) {
  if (message != kOutOfMemory) {
    free(message);
  }
}

// Creates a generator on CPU (device_type 0) or CUDA device `device_index` (device_type 1),
// seeded like torch.Generator(device).manual_seed(seed).
char *sdhost_generator_new(int device_type, int device_index, uint64_t seed,
                           at::Generator **out) {
  *out = nullptr;
  return guarded([&] {
    at::Generator generator;
    if (device_type == 0) {
      generator = at::make_generator<at::CPUGeneratorImpl>();
    } else if (device_type == 1) {
      // Through the hooks, so this file needs no CUDA headers; they throw without CUDA.
      const auto &hooks = at::detail::getCUDAHooks();
      TORCH_CHECK(hooks.hasCUDA(), "CUDA is not available");
      TORCH_CHECK(device_index >= 0 && device_index < hooks.getNumGPUs(), "no CUDA device ",
                  device_index, " (", hooks.getNumGPUs(), " present)");
      generator = hooks.getNewGenerator(static_cast<c10::DeviceIndex>(device_index));
    } else {
      TORCH_CHECK(false, "unsupported generator device type ", device_type);
    }
    // What Generator.manual_seed does; for CUDA it also rewinds the Philox offset.
    generator.set_current_seed(seed);
    *out = new at::Generator(std::move(generator));
  });
}

// Frees a generator made by sdhost_generator_new.
void sdhost_generator_free(at::Generator *generator) { delete generator; }

// Restarts the generator's stream as manual_seed(seed) does.
char *sdhost_generator_set_seed(at::Generator *generator, uint64_t seed) {
  return guarded([&] {
    std::lock_guard<std::mutex> lock(generator->mutex());
    generator->set_current_seed(seed);
  });
}

// torch.randn(sizes, generator=generator, dtype=dtype, device=generator.device): a new
// at::Tensor owned by the caller (a tch Tensor takes it over).
char *sdhost_generator_randn(at::Generator *generator, const int64_t *sizes, size_t ndim,
                             int dtype, at::Tensor **out) {
  *out = nullptr;
  return guarded([&] {
    auto options = at::TensorOptions()
                       .dtype(static_cast<at::ScalarType>(dtype))
                       .device(generator->device());
    at::Tensor tensor =
        at::randn(at::IntArrayRef(sizes, ndim), std::optional<at::Generator>(*generator), options);
    *out = new at::Tensor(std::move(tensor));
  });
}

}  // extern "C"
