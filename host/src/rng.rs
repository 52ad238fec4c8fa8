//! Access to libtorch's global CPU generator, the one `torch.manual_seed` seeds.
//!
//! tch exposes no generator objects, so reproducible draws (torch.randn parity, tiny models)
//! seed the global generator. Every such use goes through [`with_global_seed`], whose lock
//! keeps concurrent users (test threads, jobs) from interleaving their draws.

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
