//! GET/POST `/sdapi/v1/options`: A1111's settings (`modules/api/api.py: get_config,
//! set_config`). GET answers A1111 v1.10.1's defaults of the options clients read, with every
//! posted key over them and the loaded model's title and hash live; POST stores any key,
//! switches the model synchronously through the daemon's queue when `sd_model_checkpoint`
//! names another one (any alias A1111 accepts), and answers `null`.
//!
//! The options that are request fields (`CLIP_stop_at_last_layers`, `sd_vae`, `randn_source`
//! …) are the base every HTTP generation starts from: [`request_base`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::body::LimitedBody;
use super::error::{ApiError, ValidationItem};
use super::lax;
use super::ApiState;
use crate::daemon::catalog::CheckpointInfo;
use crate::daemon::event::{Event, Outgoing};
use crate::daemon::queue::{Job, JobKind, SubmitError};
use crate::pipeline::stop::JobStop;
use crate::request::{GenerationRequest, RngChoice};

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/sdapi/v1/options", get(get_options).post(set_options))
}

/// An option's default, made when asked.
type DefaultValue = fn() -> Value;

/// A1111 options that are request fields here, with A1111's defaults (also
/// [`GenerationRequest::api_defaults`]'s). Only these reach generation: a client's other
/// stored keys (`samples_format` …) never change a job.
const REQUEST_OPTIONS: &[(&str, DefaultValue)] = &[
    ("CLIP_stop_at_last_layers", || json!(1)),
    ("sd_vae", || json!("Automatic")),
    ("randn_source", || json!("GPU")),
    ("eta_noise_seed_delta", || json!(0)),
    ("img2img_color_correction", || json!(false)),
    ("inpainting_mask_weight", || json!(1.0)),
    ("initial_noise_multiplier", || json!(1.0)),
    ("img2img_extra_noise", || json!(0.0)),
    ("token_merging_ratio", || json!(0.0)),
    ("token_merging_ratio_img2img", || json!(0.0)),
    ("token_merging_ratio_hr", || json!(0.0)),
    ("img2img_fix_steps", || json!(false)),
];

/// A1111 v1.10.1's defaults of other options clients read or that describe what sdhost does
/// (`modules/shared_options.py`). `use_scale_latent_for_hires_fix` must stay absent: its
/// presence makes openOutpaint use the pre-1.0 hires API (spec §f.19).
fn other_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("samples_save", json!(true)),
        ("samples_format", json!("png")),
        ("grid_save", json!(true)),
        ("grid_format", json!("png")),
        ("enable_pnginfo", json!(true)),
        ("jpeg_quality", json!(80)),
        ("return_grid", json!(true)),
        ("face_restoration", json!(false)),
        ("face_restoration_model", json!("CodeFormer")),
        ("sd_unet", json!("Automatic")),
        ("emphasis", json!("Original")),
        ("enable_batch_seeds", json!(true)),
        ("comma_padding_backtrack", json!(20)),
        ("upcast_attn", json!(false)),
        ("tiling", json!(false)),
        ("hires_fix_refiner_pass", json!("second pass")),
        ("sd_vae_overrides_per_model_preferences", json!(true)),
        ("img2img_background_color", json!("#ffffff")),
        ("return_mask", json!(false)),
        ("return_mask_composite", json!(false)),
        ("s_min_uncond", json!(0.0)),
        ("live_previews_enable", json!(true)),
        ("live_previews_image_format", json!("png")),
        ("show_progress_every_n_steps", json!(10)),
        ("show_progress_type", json!("Approx NN")),
        ("live_preview_content", json!("Prompt")),
        ("hide_samplers", json!([])),
        ("eta_ddim", json!(0.0)),
        ("eta_ancestral", json!(1.0)),
        ("ddim_discretize", json!("uniform")),
        ("s_churn", json!(0.0)),
        ("s_tmin", json!(0.0)),
        ("s_tmax", json!(0.0)),
        ("s_noise", json!(1.0)),
        ("sigma_min", json!(0.0)),
        ("sigma_max", json!(0.0)),
        ("rho", json!(0.0)),
        ("always_discard_next_to_last_sigma", json!(false)),
        ("sgm_noise_multiplier", json!(false)),
        ("uni_pc_variant", json!("bh1")),
        ("uni_pc_skip_type", json!("time_uniform")),
        ("uni_pc_order", json!(3)),
        ("uni_pc_lower_order_final", json!(true)),
        ("beta_dist_alpha", json!(0.6)),
        ("beta_dist_beta", json!(0.6)),
        ("upscaling_max_images_in_cache", json!(5)),
        ("api_enable_requests", json!(false)),
        ("api_forbid_local_requests", json!(true)),
    ]
}

/// The options as GET answers them: the defaults, the stored keys over them, the loaded
/// model's title (exactly its `/sd-models` title) and full hash, and the daemon's
/// `sd_checkpoints_limit`.
pub fn options_view(
    stored: &Map<String, Value>,
    model: &CheckpointInfo,
    checkpoints_limit: usize,
) -> Map<String, Value> {
    let mut options = Map::new();
    options.insert("sd_model_checkpoint".into(), Value::from(model.title()));
    options.insert("sd_checkpoint_hash".into(), json!(model.sha256));
    for (key, default) in REQUEST_OPTIONS {
        options.insert((*key).into(), default());
    }
    for (key, value) in other_defaults() {
        options.insert(key.into(), value);
    }
    for (key, value) in stored {
        if !matches!(key.as_str(), "sd_model_checkpoint" | "sd_checkpoint_hash") {
            options.insert(key.clone(), value.clone());
        }
    }
    // What the daemon does (`--checkpoints-limit`), whatever a client stored.
    options.insert(CHECKPOINTS_LIMIT.into(), json!(checkpoints_limit));
    options
}

/// The option of the daemon's checkpoints limit (`--checkpoints-limit`).
const CHECKPOINTS_LIMIT: &str = "sd_checkpoints_limit";

/// A posted `sd_checkpoints_limit`: a whole number in A1111's 1 … 10 (null: unchanged).
fn checkpoints_limit_option(value: &Value) -> Result<Option<usize>, ApiError> {
    let number =
        lax::int(value).map_err(|e| ApiError::Validation(vec![e.at(CHECKPOINTS_LIMIT)]))?;
    let max = crate::daemon::resident::MAX_CHECKPOINTS_LIMIT;
    match number {
        None => Ok(None),
        Some(n) if (1..=max as i64).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::field(
            CHECKPOINTS_LIMIT,
            format!("{CHECKPOINTS_LIMIT} {n}: keep 1 to {max} checkpoints loaded"),
            "value_error",
        )),
    }
}

/// A posted value of a request option read as its default's type (pydantic's lax reading:
/// `"2"` for 2), then checked as the request field; other keys are kept as sent.
fn typed_option(key: &str, value: &Value) -> Result<Value, ApiError> {
    let Some((_, default)) = REQUEST_OPTIONS.iter().find(|(k, _)| *k == key) else {
        return Ok(value.clone());
    };
    let read = match default() {
        Value::Bool(_) => lax::boolean(value).map(|v| v.map(Value::from)),
        Value::Number(n) if n.is_i64() => lax::int(value).map(|v| v.map(Value::from)),
        Value::Number(_) => lax::float(value).map(|v| v.map(Value::from)),
        _ => lax::string(value).map(|v| v.map(Value::from)),
    };
    let typed = read
        .map_err(|e| ApiError::Validation(vec![e.at(key)]))?
        .unwrap_or_else(default);
    let field = GenerationRequest::setting_field(key).unwrap_or(key);
    let one: Map<String, Value> = [(field.to_string(), typed.clone())].into_iter().collect();
    GenerationRequest::api_defaults()
        .overlay(&one)
        .map_err(|e| ApiError::field(key, e.to_string(), "value_error"))?;
    Ok(typed)
}

/// The request every HTTP generation starts from: A1111's API defaults with the request
/// options laid over ([`REQUEST_OPTIONS`], as stored). A1111's "GPU" noise source draws on
/// the model's device, which on a CPU is the CPU generator: sdhost's CPU source.
pub fn request_base(state: &ApiState) -> GenerationRequest {
    base_from(&state.options(), state.device)
}

fn base_from(stored: &Map<String, Value>, device: tch::Device) -> GenerationRequest {
    let mut base = GenerationRequest::api_defaults();
    for (key, _) in REQUEST_OPTIONS {
        let (Some(value), Some(field)) = (stored.get(*key), GenerationRequest::setting_field(key))
        else {
            continue;
        };
        let one: Map<String, Value> = [(field.to_string(), value.clone())].into_iter().collect();
        // Stored values were checked when posted.
        if let Ok(next) = base.overlay(&one) {
            base = next;
        }
    }
    if base.randn_source == RngChoice::Gpu && !matches!(device, tch::Device::Cuda(_)) {
        base.randn_source = RngChoice::Cpu;
    }
    base
}

/// The loaded model as A1111 describes it (its title as `/sd-models` lists it).
pub fn loaded_checkpoint(state: &ApiState) -> CheckpointInfo {
    let (path, short) = {
        let status = state
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (status.path.clone(), status.hash.clone())
    };
    let cache = crate::checkpoint::default_cache_dir();
    let mut info = state
        .shared
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .checkpoint_of(&path, cache.as_deref());
    known_short_hash(&mut info, &short);
    info
}

/// A loaded model's hash is known even where the hash cache is not kept: its title then
/// carries the short hash the model was loaded with.
pub fn known_short_hash(info: &mut CheckpointInfo, short: &str) {
    if info.sha256.is_none() && !short.is_empty() {
        info.sha256 = Some(short.to_string());
    }
}

async fn get_options(State(state): State<ApiState>) -> Json<Map<String, Value>> {
    let view = tokio::task::spawn_blocking(move || {
        let model = loaded_checkpoint(&state);
        let limit = state
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checkpoints_limit;
        options_view(&state.options(), &model, limit)
    })
    .await
    .unwrap_or_default();
    Json(view)
}

/// Python's `repr` of a posted checkpoint name, as A1111's error message shows it.
fn py_repr(value: &Value) -> String {
    match value {
        Value::String(text) if text.contains('\'') && !text.contains('"') => format!("\"{text}\""),
        Value::String(text) => format!("'{}'", text.replace('\'', "\\'")),
        other => super::pyjson::dumps(other),
    }
}

async fn set_options(
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    tokio::task::spawn_blocking(move || set_config(&state, client, &body))
        .await
        .map_err(|e| ApiError::runtime(format!("the request's thread failed: {e}")))??;
    Ok(Json(Value::Null))
}

/// A1111's `set_config`: the checkpoint is checked before anything is set, loaded before
/// the answer; every other key is stored (request options checked and typed first).
fn set_config(state: &ApiState, client: SocketAddr, body: &[u8]) -> Result<(), ApiError> {
    let body = lax::json_object(body)?;
    let mut typed = Map::new();
    let mut errors: Vec<ValidationItem> = Vec::new();
    let mut checkpoints_limit = None;
    for (key, value) in &body {
        if matches!(key.as_str(), "sd_model_checkpoint" | "sd_checkpoint_hash") {
            continue;
        }
        if key == CHECKPOINTS_LIMIT {
            match checkpoints_limit_option(value) {
                Ok(limit) => checkpoints_limit = limit,
                Err(ApiError::Validation(items)) => errors.extend(items),
                Err(other) => return Err(other),
            }
            continue;
        }
        match typed_option(key, value) {
            Ok(value) => {
                typed.insert(key.clone(), value);
            }
            Err(ApiError::Validation(items)) => errors.extend(items),
            Err(other) => return Err(other),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if let Some(wanted) = body.get("sd_model_checkpoint").filter(|v| !v.is_null()) {
        let not_found = || ApiError::runtime(format!("model {} not found", py_repr(wanted)));
        let alias = wanted.as_str().ok_or_else(not_found)?;
        let found = {
            let catalog = state
                .shared
                .catalog
                .read()
                .unwrap_or_else(|p| p.into_inner());
            catalog
                .find(alias)
                .and_then(|path| catalog.name_of(&path).map(|name| (path, name)))
        };
        let (path, name) = found.ok_or_else(not_found)?;
        let loaded = state
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .path
            .clone();
        if path != loaded {
            select_model(state, client, &name)?;
        }
    }
    if let Some(limit) = checkpoints_limit {
        // The worker reads it at the next model switch (A1111 applies it at the next load).
        let mut status = state
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        status.checkpoints_limit = limit;
    }
    let mut options = state.options.write().unwrap_or_else(|p| p.into_inner());
    options.extend(typed);
    // The live previews `/progress` shows follow A1111's two options.
    let enabled = options.get("live_previews_enable").and_then(Value::as_bool) != Some(false);
    let every = options
        .get("show_progress_every_n_steps")
        .and_then(Value::as_u64)
        .unwrap_or(crate::daemon::live::DEFAULT_PREVIEW_EVERY as u64);
    let every = if enabled {
        usize::try_from(every).unwrap_or(usize::MAX)
    } else {
        0
    };
    state.shared.live.set_preview_every(every);
    Ok(())
}

/// Loads the catalog's model `name` through the daemon's queue (after the jobs before it,
/// like any job) and waits for it.
pub fn select_model(state: &ApiState, client: SocketAddr, name: &str) -> Result<(), ApiError> {
    let shared = &state.shared;
    let (events, received) = crossbeam_channel::unbounded::<Outgoing>();
    let job = Job {
        id: shared.next_job_id(),
        request_id: Value::from(format!("http {client}")),
        conn: state.conn_of(client.ip()),
        kind: JobKind::SelectModel(name.to_string()),
        stop: JobStop::new(),
        events,
    };
    shared.queue.submit(job, |_, _| {}).map_err(|error| {
        let status = match error {
            SubmitError::Full | SubmitError::ShuttingDown => {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::http(status, error.to_string())
    })?;
    for outgoing in received {
        match outgoing.event {
            Event::Done { .. } => return Ok(()),
            Event::Error { message, .. } => return Err(ApiError::runtime(message)),
            Event::Cancelled { .. } => {
                return Err(ApiError::runtime("the model load was cancelled"));
            }
            _ => {}
        }
    }
    Err(ApiError::runtime("the model load ended without an answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn model() -> CheckpointInfo {
        CheckpointInfo {
            name: "sub/v1-5.safetensors".into(),
            name_for_extra: "v1-5".into(),
            model_name: "sub_v1-5".into(),
            legacy_hash: Some("e3b0c442".into()),
            sha256: Some(format!("6ce0161689{}", "0".repeat(54))),
            path: PathBuf::from("/m/sub/v1-5.safetensors"),
        }
    }

    #[test]
    fn get_shows_defaults_posted_keys_and_the_model_title() {
        let stored: Map<String, Value> = serde_json::from_value(json!({
            "CLIP_stop_at_last_layers": 2, "my_extension_key": [1, 2],
            "sd_model_checkpoint": "stale alias", "sd_checkpoints_limit": 7
        }))
        .unwrap();
        let view = options_view(&stored, &model(), 3);
        assert_eq!(
            view["sd_model_checkpoint"],
            "sub/v1-5.safetensors [6ce0161689]"
        );
        assert_eq!(view["sd_checkpoint_hash"].as_str().unwrap().len(), 64);
        assert_eq!(view["CLIP_stop_at_last_layers"], 2);
        assert_eq!(view["my_extension_key"], json!([1, 2]));
        // The limit the daemon keeps, not a stored one.
        assert_eq!(view["sd_checkpoints_limit"], 3);
        for key in [
            "sd_vae",
            "img2img_color_correction",
            "inpainting_mask_weight",
            "eta_noise_seed_delta",
            "randn_source",
            "img2img_fix_steps",
            "samples_format",
            "show_progress_every_n_steps",
        ] {
            assert!(view.contains_key(key), "{key}");
        }
        assert!(!view.contains_key("use_scale_latent_for_hires_fix"));
    }

    #[test]
    fn a_posted_checkpoints_limit_is_a_whole_number_from_1_to_10() {
        assert_eq!(checkpoints_limit_option(&json!(3)).unwrap(), Some(3));
        assert_eq!(checkpoints_limit_option(&json!("2")).unwrap(), Some(2));
        assert_eq!(checkpoints_limit_option(&Value::Null).unwrap(), None);
        for bad in [json!(0), json!(11), json!(-1), json!("many")] {
            let error = checkpoints_limit_option(&bad).unwrap_err();
            assert!(matches!(error, ApiError::Validation(_)), "{bad}");
        }
    }

    #[test]
    fn request_options_are_typed_checked_and_become_the_base() {
        assert_eq!(
            typed_option("CLIP_stop_at_last_layers", &json!("2")).unwrap(),
            2
        );
        assert_eq!(
            typed_option("inpainting_mask_weight", &json!(1)).unwrap(),
            1.0
        );
        assert_eq!(
            typed_option("unknown", &json!({"a": 1})).unwrap(),
            json!({"a": 1})
        );
        let error = typed_option("CLIP_stop_at_last_layers", &json!("many")).unwrap_err();
        assert_eq!(error.status(), 422);
        assert_eq!(
            typed_option("randn_source", &json!("quantum"))
                .unwrap_err()
                .status(),
            422
        );

        let stored: Map<String, Value> = serde_json::from_value(json!({
            "CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337,
            "randn_source": "NV", "img2img_color_correction": true, "sd_vae": "None",
            "seed": 5
        }))
        .unwrap();
        let base = base_from(&stored, tch::Device::Cpu);
        assert_eq!(base.clip_skip, 2);
        assert_eq!(base.eta_noise_seed_delta, 31337);
        assert_eq!(base.randn_source, RngChoice::Nv);
        assert!(base.img2img_color_correction);
        assert_eq!(base.sd_vae, "None");
        assert_eq!(base.seed, -1, "only options reach the request");
        assert_eq!(base.sampler.sampler, "Euler");
        let defaults = base_from(&Map::new(), tch::Device::Cpu);
        assert_eq!(defaults.randn_source, RngChoice::Cpu, "GPU on a CPU device");
        assert_eq!(
            base_from(&Map::new(), tch::Device::Cuda(0)).randn_source,
            RngChoice::Gpu
        );
    }

    #[test]
    fn stored_token_merging_options_keep_a1111s_precedence() {
        // The img2img option is an option like the base ratio: it stays img2img's ratio.
        let stored: Map<String, Value> = serde_json::from_value(json!({
            "token_merging_ratio": 0.5, "token_merging_ratio_img2img": 0.7,
            "token_merging_ratio_hr": 0.2
        }))
        .unwrap();
        let base = base_from(&stored, tch::Device::Cpu);
        assert_eq!(base.token_merging_ratio(true), 0.5);
        assert_eq!(base.token_merging_ratio(false), 0.7);
        assert_eq!(base.token_merging_ratio_hr(), 0.2);
        // A request's `override_settings` ratio beats the img2img option, as in A1111.
        let request: Map<String, Value> = serde_json::from_value(json!({
            "override_settings": {"token_merging_ratio": 0.3}
        }))
        .unwrap();
        assert_eq!(
            base.overlay(&request).unwrap().token_merging_ratio(false),
            0.3
        );
    }

    #[test]
    fn unknown_checkpoints_are_named_as_python_repr() {
        assert_eq!(py_repr(&json!("x")), "'x'");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!(3)), "3");
    }
}
