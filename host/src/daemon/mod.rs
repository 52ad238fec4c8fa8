//! `sdhost serve`: the generation daemon. It keeps a model resident and serves editors over a
//! local socket (docs/protocol.md): `protocol` frames bytes, `request` reads requests,
//! `queue` orders jobs, `worker` runs them on the model, `server` listens and connects.

pub mod config;
pub mod catalog;
pub mod protocol;
pub mod queue;
pub mod request;
pub mod server;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sdhost_plugin_api::{OptionValue, ScheduleInput};
use serde_json::json;

pub use catalog::ModelCatalog;

use crate::pipeline::preview::PreviewMethod;
use crate::prepare::modes::Img2ImgMode;
use crate::request::GenerationRequest;
use crate::sampling::plugins::SamplerRegistry;
use crate::sampling::schedule::Schedule;

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

/// What the daemon can do, for `welcome` and `list`: samplers with their plugin, schedules,
/// modes, preview methods, limits.
pub fn capabilities(registry: &SamplerRegistry, limits: &config::Limits) -> serde_json::Value {
    let samplers: Vec<serde_json::Value> = registry
        .samplers()
        .map(|found| {
            let info = found.info;
            let options: serde_json::Map<String, serde_json::Value> = info
                .options
                .iter()
                .map(|o| {
                    let default = match &o.default {
                        OptionValue::Number(n) => json!(n),
                        OptionValue::Text(t) => json!(t.as_str()),
                    };
                    (o.name.to_string(), default)
                })
                .collect();
            json!({
                "name": info.name.as_str(),
                "aliases": info.aliases.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                "plugin": found.plugin.name,
                "default_schedule": info.default_schedule.as_ref().into_option().map(|s| s.as_str()),
                "timesteps": info.input == ScheduleInput::Timesteps,
                "options": options,
            })
        })
        .collect();
    json!({
        "samplers": samplers,
        "schedules": Schedule::ALL.iter().map(|s| s.label()).collect::<Vec<_>>(),
        "modes": Img2ImgMode::ALL.iter().map(|m| m.name()).collect::<Vec<_>>(),
        // Every field `params` takes, with its doc and A1111's UI default: clients build their
        // dialogs and defaults from this rather than from a copy.
        "request_fields": GenerationRequest::fields(),
        "resize_modes": ["just-resize", "crop-and-resize", "resize-and-fill", "latent-upscale"],
        "formats": ["rgba8", "y8", "png"],
        "preview_methods": PreviewMethod::ALL.iter().map(|m| m.label()).collect::<Vec<_>>(),
        "limits": {
            "max_frame_bytes": limits.max_frame_bytes,
            "max_pixels": limits.max_pixels,
            "max_images": limits.max_images,
            "max_prompt_chars": limits.max_prompt_chars,
            "queue_capacity": limits.queue_capacity,
        },
    })
}

/// Shared state for a daemon with this status.
pub fn shared_state(
    limits: config::Limits,
    status: Arc<Mutex<worker::ModelStatus>>,
    registry: &SamplerRegistry,
    catalog: &ModelCatalog,
) -> server::Shared {
    server::Shared::new(
        limits.clone(),
        status,
        capabilities(registry, &limits),
        catalog.names(),
    )
}
