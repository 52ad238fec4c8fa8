//! Random numbers: libtorch's global CPU generator, per-image generator objects, and A1111's
//! per-image noise source built on them, and A1111's "NV" source ([`Philox`]).
//!
//! tch exposes no generator objects, so [`Generator`] wraps libtorch's own through a small C++
//! shim (csrc/generator.cpp); its draws are bit-identical to `torch.Generator(device)` +
//! `torch.randn(..., generator=g)`. [`ImageRng`] is A1111's `ImageRNG` on top of it.
//!
//! Code that still seeds the global generator (torch.randn parity, tiny models) goes through
//! [`with_global_seed`], whose lock keeps concurrent users (test threads, jobs) from
//! interleaving their draws.

mod generator;
mod image;
mod pcg64;
mod philox;
pub mod seed_sequence;
mod seeds;

pub use generator::{Generator, RngError};
pub use image::{randn_local, ImageRng, RngSource, Variation};
pub use pcg64::NumpyPcg64;
pub use philox::Philox;
pub use seeds::{fixed_seed, random_seed, SeedList, RANDOM_SEED_BOUND};

use std::sync::Mutex;

static GLOBAL_GENERATOR: Mutex<()> = Mutex::new(());

/// Runs `draw` with the global CPU generator freshly seeded with `seed`, exclusively.
pub fn with_global_seed<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    // A panic while drawing leaves no broken state behind: the next user reseeds.
    let _lock = GLOBAL_GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    draw()
}
