//! `sdhost serve`: the generation daemon. It keeps a model resident and serves editors over a
//! local socket (docs/protocol.md): `protocol` frames bytes, `request` and `event` type what
//! the frames say, `connection` reads and writes them for one client, `queue` orders jobs,
//! `worker` runs them on the model, `server` listens and connects.

pub mod catalog;
pub mod config;
pub mod connection;
pub mod event;
pub mod protocol;
pub mod queue;
pub mod request;
pub mod server;
pub mod worker;

use std::path::{Path, PathBuf};

pub use catalog::ModelCatalog;

/// The file name of the demo model made when no model is configured.
pub const DEMO_MODEL_FILE: &str = "tiny-sd1-demo.safetensors";

/// Makes (once) the random-weight demo model in `dir` and returns its path.
pub fn demo_model(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(DEMO_MODEL_FILE);
    if !path.exists() {
        std::fs::create_dir_all(dir)?;
        crate::tiny_model::write_tiny_model(&crate::tiny_model::TinyModelSpec::tiny(0), &path)?;
    }
    Ok(path)
}
