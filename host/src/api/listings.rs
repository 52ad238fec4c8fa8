//! The GET listings of A1111 v1.10.1's API (`modules/api/api.py`, `extensions-builtin/Lora`)
//! in its shapes, made from what the daemon has: sd-models (the shared catalog with A1111's
//! titles and hashes), samplers and schedulers (the sampler registry, plugins included),
//! upscalers and latent upscale modes (the ones sdhost implements), sd-vae, loras,
//! hypernetworks (the network listing), embeddings (the loaded model's), memory, cmd-flags;
//! empty lists for what sdhost does not have (scripts, styles, face restorers, Real-ESRGAN);
//! the refresh routes; and the two ControlNet probes GIMP's gimp_stableize needs (spec b.13).

use std::path::Path;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::options::known_short_hash;
use super::ApiState;
use crate::daemon::catalog::CheckpointInfo;
use crate::daemon::event::SamplerFacts;
use crate::extra_networks::catalog::read_safetensors_metadata;
use crate::extra_networks::facts::{NetworkFacts, NetworkKind};
use crate::pipeline::hires::LATENT_UPSCALE_MODES;
use crate::prompt::embeddings::EmbeddingShape;
use crate::sampling::schedule::Schedule;
use crate::upscale::{Upscaler, UpscalerClass, UpscalerDirs};

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/schedulers", get(schedulers))
        .route("/sdapi/v1/upscalers", get(upscalers))
        .route("/sdapi/v1/latent-upscale-modes", get(latent_upscale_modes))
        .route("/sdapi/v1/sd-vae", get(sd_vae))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/hypernetworks", get(hypernetworks))
        .route("/sdapi/v1/embeddings", get(embeddings))
        .route("/sdapi/v1/scripts", get(scripts))
        .route("/sdapi/v1/script-info", get(empty_list))
        .route("/sdapi/v1/prompt-styles", get(empty_list))
        .route("/sdapi/v1/face-restorers", get(empty_list))
        .route("/sdapi/v1/realesrgan-models", get(empty_list))
        .route("/sdapi/v1/memory", get(memory))
        .route("/sdapi/v1/cmd-flags", get(cmd_flags))
        .route("/sdapi/v1/refresh-checkpoints", post(refresh_checkpoints))
        .route("/sdapi/v1/refresh-vae", post(refresh_networks))
        .route("/sdapi/v1/refresh-loras", post(refresh_networks))
        .route("/sdapi/v1/refresh-embeddings", post(refresh_embeddings))
        .route("/controlnet/model_list", get(controlnet_models))
        .route("/controlnet/module_list", get(controlnet_modules))
}

/// Runs blocking listing work (file reads, hashing lookups) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::runtime(format!("the listing's thread failed: {e}")))
}

/// One `/sd-models` entry (`SDModelItem`): `config` is a `.yaml` beside the checkpoint.
pub fn sd_model_item(info: &CheckpointInfo) -> Value {
    let config = info.path.with_extension("yaml");
    json!({
        "title": info.title(),
        "model_name": info.model_name,
        "hash": info.shorthash(),
        "sha256": info.sha256,
        "filename": info.path.to_string_lossy(),
        "config": config.is_file().then(|| config.to_string_lossy().into_owned()),
    })
}

async fn sd_models(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let (loaded, short) = {
            let status = state
                .shared
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            (status.path.clone(), status.hash.clone())
        };
        let cache = crate::checkpoint::default_cache_dir();
        let mut models = state
            .shared
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .checkpoints(cache.as_deref());
        for info in models.iter_mut().filter(|info| info.path == loaded) {
            // Its title must read back as `sd_model_checkpoint` does (spec §f.8).
            known_short_hash(info, &short);
        }
        Json(Value::Array(models.iter().map(sd_model_item).collect()))
    })
    .await
}

/// One `/samplers` entry (`SamplerItem`): options are `dict[str, str]`.
pub fn sampler_item(sampler: &SamplerFacts, options: &[(String, String)]) -> Value {
    let options: Map<String, Value> = options
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    json!({"name": sampler.name, "aliases": sampler.aliases, "options": options})
}

async fn samplers(State(state): State<ApiState>) -> Json<Value> {
    let capabilities = &state.shared.capabilities;
    let items = capabilities
        .samplers
        .iter()
        .map(|sampler| {
            let options = capabilities
                .a1111_sampler_options
                .get(&sampler.name)
                .map_or(&[][..], Vec::as_slice);
            sampler_item(sampler, options)
        })
        .collect();
    Json(Value::Array(items))
}

/// `/schedulers` (`sd_schedulers.schedulers`): ρ defaults and whether the model's own
/// levels are needed, as A1111 declares them.
pub fn scheduler_items() -> Value {
    let items = Schedule::ALL
        .iter()
        .map(|schedule| {
            let default_rho = match schedule {
                Schedule::Karras => 7.0,
                Schedule::Polyexponential => 1.0,
                _ => -1.0,
            };
            let need_inner_model = matches!(
                schedule,
                Schedule::Uniform
                    | Schedule::SgmUniform
                    | Schedule::Simple
                    | Schedule::Normal
                    | Schedule::Ddim
                    | Schedule::Beta
            );
            let aliases = schedule.aliases();
            json!({
                "name": schedule.name(),
                "label": schedule.label(),
                "aliases": (!aliases.is_empty()).then_some(aliases),
                "default_rho": default_rho,
                "need_inner_model": need_inner_model,
            })
        })
        .collect();
    Value::Array(items)
}

async fn schedulers() -> Json<Value> {
    Json(scheduler_items())
}

/// `/upscalers`: `shared.sd_upscalers` as A1111's API lists them (`name`, the upscaler
/// class's `model_name`, the file as `model_path`, `scale`): None, Lanczos, Nearest, then the
/// models of `dirs`.
pub fn upscaler_items(dirs: &UpscalerDirs) -> Value {
    let items = Upscaler::all(dirs)
        .into_iter()
        .map(|upscaler| match upscaler {
            Upscaler::Pixel(p) => {
                json!({"name": p.name(), "model_name": null, "model_path": null, "model_url": null, "scale": 4.0})
            }
            Upscaler::Model(m) => {
                let model_name = match m.class {
                    UpscalerClass::Esrgan => Some("ESRGAN_4x"),
                    UpscalerClass::SwinIr => Some("SwinIR 4x"),
                    UpscalerClass::RealEsrgan | UpscalerClass::Dat => None,
                };
                json!({
                    "name": m.name,
                    "model_name": model_name,
                    "model_path": m.path.to_string_lossy(),
                    "model_url": null,
                    "scale": m.listed_scale.map(f64::from),
                })
            }
        })
        .collect();
    Value::Array(items)
}

async fn upscalers(State(state): State<ApiState>) -> Json<Value> {
    let dirs = state.shared.networks.dirs().upscalers.clone();
    Json(upscaler_items(&dirs))
}

async fn latent_upscale_modes() -> Json<Value> {
    let items = LATENT_UPSCALE_MODES
        .iter()
        .map(|(name, _)| json!({ "name": name }))
        .collect();
    Json(Value::Array(items))
}

/// The networks of `kinds` as last scanned.
fn networks_of(state: &ApiState, kinds: &[NetworkKind]) -> Vec<NetworkFacts> {
    state
        .shared
        .networks
        .current()
        .into_iter()
        .filter(|n| kinds.contains(&n.kind))
        .collect()
}

async fn sd_vae(State(state): State<ApiState>) -> Json<Value> {
    let items = networks_of(&state, &[NetworkKind::Vae])
        .iter()
        .map(|vae| json!({"model_name": vae.name, "filename": vae.file.to_string_lossy()}))
        .collect();
    Json(Value::Array(items))
}

/// A safetensors file's metadata as A1111's `read_metadata_from_safetensors` gives it:
/// values that look like JSON objects are parsed.
pub fn lora_metadata(path: &Path) -> Map<String, Value> {
    let Ok(metadata) = read_safetensors_metadata(path) else {
        return Map::new();
    };
    metadata
        .into_iter()
        .map(|(key, text)| {
            let value = text
                .starts_with('{')
                .then(|| serde_json::from_str::<Value>(&text).ok())
                .flatten()
                .unwrap_or(Value::String(text));
            (key, value)
        })
        .collect()
}

async fn loras(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let items = networks_of(&state, &[NetworkKind::Lora, NetworkKind::Lycoris])
            .iter()
            .map(|lora| {
                json!({
                    "name": lora.name,
                    "alias": lora.alias,
                    "path": lora.file.to_string_lossy(),
                    "metadata": lora_metadata(&lora.file),
                })
            })
            .collect();
        Json(Value::Array(items))
    })
    .await
}

async fn hypernetworks(State(state): State<ApiState>) -> Json<Value> {
    let items = networks_of(&state, &[NetworkKind::Hypernetwork])
        .iter()
        .map(|net| json!({"name": net.name, "path": net.file.to_string_lossy()}))
        .collect();
    Json(Value::Array(items))
}

/// `/embeddings` (`EmbeddingsResponse`): sdhost does not read training metadata, so `step`
/// and the checkpoint fields are null.
pub fn embeddings_body(loaded: &[EmbeddingShape], skipped: &[EmbeddingShape]) -> Value {
    let convert = |shapes: &[EmbeddingShape]| -> Map<String, Value> {
        shapes
            .iter()
            .map(|e| {
                let item = json!({
                    "step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
                    "shape": e.shape, "vectors": e.vectors,
                });
                (e.name.clone(), item)
            })
            .collect()
    };
    json!({"loaded": convert(loaded), "skipped": convert(skipped)})
}

async fn embeddings(State(state): State<ApiState>) -> Json<Value> {
    let status = state
        .shared
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (loaded, skipped) = &status.embedding_shapes;
    Json(embeddings_body(loaded, skipped))
}

/// No selectable or always-on scripts: sdhost implements none of A1111's, and listing one
/// would make clients send its arguments (webuiapi adds ControlNet's when listed).
async fn scripts() -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}

/// Lists sdhost does not have: script-info; prompt-styles (styles are not applied to
/// prompts, so none are offered); face-restorers and realesrgan-models (no such models).
async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

/// `(total, available)` bytes of RAM from `/proc/meminfo`, and this process's resident bytes.
fn ram_numbers() -> Option<(f64, f64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |text: &str, key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    let total = kib(&meminfo, "MemTotal:")? * 1024.0;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss = kib(&status, "VmRSS:")? * 1024.0;
    Some((total, rss))
}

/// `/memory` as A1111 computes `ram`: `used` is the process's resident memory, `total` the
/// machine's, `free` their difference.
pub fn memory_body(ram: Option<(f64, f64)>, device: tch::Device) -> Value {
    let ram = match ram {
        Some((total, rss)) => json!({"free": total - rss, "used": rss as u64, "total": total}),
        None => json!({"error": "memory statistics are unavailable on this system"}),
    };
    let cuda = match device {
        tch::Device::Cuda(_) => {
            json!({"error": "CUDA memory statistics are not collected by sdhost"})
        }
        _ => json!({"error": "unavailable"}),
    };
    json!({"ram": ram, "cuda": cuda})
}

async fn memory(State(state): State<ApiState>) -> Json<Value> {
    Json(memory_body(ram_numbers(), state.device))
}

/// `/cmd-flags`: the A1111 flags that have an sdhost counterpart, with sdhost's values
/// (`--api-auth` itself is never shown).
pub fn cmd_flags_body(state: &ApiState, models_dir: Option<&Path>) -> Value {
    let config = &state.config;
    let (host, port) = config
        .address
        .rsplit_once(':')
        .map_or((config.address.as_str(), ""), |(h, p)| (h, p));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = matches!(host, "127.0.0.1" | "localhost" | "::1");
    let dir = |sub: &str| models_dir.map(|d| d.join(sub).to_string_lossy().into_owned());
    let cuda = matches!(state.device, tch::Device::Cuda(_));
    json!({
        "api": true,
        "nowebui": true,
        "listen": !local,
        "server_name": (!local).then_some(host),
        "port": port.parse::<u16>().ok(),
        "api_auth": null,
        "api_log": false,
        "cors_allow_origins": (!config.cors_origins.is_empty()).then(|| config.cors_origins.join(",")),
        "cors_allow_origins_regex": null,
        "models_dir": models_dir.map(|d| d.to_string_lossy().into_owned()),
        "ckpt_dir": dir("Stable-diffusion"),
        "vae_dir": dir("VAE"),
        "lora_dir": dir("Lora"),
        "hypernetwork_dir": dir("hypernetworks"),
        "use_cpu": if cuda { json!([]) } else { json!(["all"]) },
        "skip_torch_cuda_test": !cuda,
        "no_half": !cuda,
        "lowvram": false,
        "medvram": false,
        "xformers": false,
        "disable_safe_unpickle": false,
        "api_server_stop": false,
    })
}

async fn cmd_flags(State(state): State<ApiState>) -> Json<Value> {
    let models_dir = state
        .shared
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .models_dir()
        .map(Path::to_path_buf);
    Json(cmd_flags_body(&state, models_dir.as_deref()))
}

/// Rescans the models folder (A1111 does it under the queue lock; the catalog's lock keeps a
/// model load from reading it half-written).
async fn refresh_checkpoints(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        state
            .shared
            .catalog
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .refresh();
        Json(Value::Null)
    })
    .await
}

/// VAE and LoRA files are listed by the network listing, rescanned on its own thread.
async fn refresh_networks(State(state): State<ApiState>) -> Json<Value> {
    state.shared.networks.refresh();
    Json(Value::Null)
}

/// Embeddings are read when a model loads (each model's of its width), so the next model
/// load rereads the folder; the answer is A1111's `null`.
async fn refresh_embeddings() -> Json<Value> {
    Json(Value::Null)
}

async fn controlnet_models() -> Json<Value> {
    Json(json!({"model_list": []}))
}

async fn controlnet_modules() -> Json<Value> {
    Json(json!({"module_list": ["none"]}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn models_schedulers_and_upscalers_have_a1111_shapes() {
        let mut info = CheckpointInfo {
            name: "v1-5.safetensors".into(),
            name_for_extra: "v1-5".into(),
            model_name: "v1-5".into(),
            legacy_hash: Some("e3b0c442".into()),
            sha256: None,
            path: PathBuf::from("/nowhere/v1-5.safetensors"),
        };
        let item = sd_model_item(&info);
        assert_eq!(item["title"], "v1-5.safetensors");
        assert_eq!(item["hash"], Value::Null);
        assert_eq!(item["config"], Value::Null);
        info.sha256 = Some(format!("6ce0161689{}", "a".repeat(54)));
        let item = sd_model_item(&info);
        assert_eq!(item["title"], "v1-5.safetensors [6ce0161689]");
        assert_eq!(item["hash"], "6ce0161689");
        assert_eq!(item["filename"], "/nowhere/v1-5.safetensors");
        let keys: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 6);

        let schedulers = scheduler_items();
        let list = schedulers.as_array().unwrap();
        assert_eq!(list.len(), 12);
        assert_eq!(
            list[0],
            json!({"name": "automatic", "label": "Automatic", "aliases": null, "default_rho": -1.0, "need_inner_model": false})
        );
        assert_eq!(list[2]["default_rho"], 7.0);
        assert_eq!(list[5]["aliases"], json!(["SGMUniform"]));
        assert_eq!(list[11]["name"], "beta");

        let upscalers = upscaler_items(&UpscalerDirs::default());
        let names: Vec<&str> = upscalers
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["None", "Lanczos", "Nearest"]);
    }

    #[test]
    fn sampler_options_are_strings_and_embeddings_are_keyed_by_name() {
        let facts = SamplerFacts {
            name: "DPM++ SDE".into(),
            aliases: vec!["k_dpmpp_sde".into()],
            plugin: "builtin".into(),
            default_schedule: Some("karras".into()),
            timesteps: false,
            options: Default::default(),
        };
        let options = [
            ("scheduler".to_string(), "karras".to_string()),
            ("second_order".to_string(), "True".to_string()),
        ];
        assert_eq!(
            sampler_item(&facts, &options),
            json!({"name": "DPM++ SDE", "aliases": ["k_dpmpp_sde"], "options": {"scheduler": "karras", "second_order": "True"}})
        );
        let loaded = [EmbeddingShape {
            name: "bad-hands".into(),
            shape: 768,
            vectors: 4,
        }];
        let body = embeddings_body(&loaded, &[]);
        assert_eq!(body["loaded"]["bad-hands"]["vectors"], 4);
        assert_eq!(body["loaded"]["bad-hands"]["shape"], 768);
        assert_eq!(body["skipped"], json!({}));
    }

    #[test]
    fn memory_reports_ram_and_no_cuda_on_a_cpu() {
        let body = memory_body(Some((1000.0, 300.0)), tch::Device::Cpu);
        assert_eq!(
            body,
            json!({"ram": {"free": 700.0, "used": 300, "total": 1000.0}, "cuda": {"error": "unavailable"}})
        );
        assert!(ram_numbers().is_some(), "Linux has /proc");
    }
}
