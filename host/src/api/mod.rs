//! The A1111-compatible HTTP API (`sdhost serve --api`): AUTOMATIC1111 v1.10.1's
//! `/sdapi/v1/*` routes with its request and response shapes, so that existing editor
//! plug-ins and the `webuiapi` client work unchanged (shared/spec/a1111-api-clients.md).
//!
//! It is a second front end of the daemon beside the socket server: its jobs go into the
//! daemon's one [`crate::daemon::queue::Scheduler`] and run on the same worker, and
//! `/progress` reads what the worker publishes of the running job. axum serves it on a tokio
//! runtime of its own threads ([`server::start`]); handlers that wait for a job wait on a
//! blocking thread, so `/progress`, `/interrupt` and the listings answer while jobs run.
//!
//! Files: [`error`] (A1111's error shapes), [`lax`] (pydantic v1's lax typing), [`images`]
//! (base64 images in and out), [`auth`] (HTTP Basic), [`server`] (start, stop, CORS, limits),
//! [`generate`] (txt2img/img2img), [`progress`], [`control`] (interrupt, skip), and
//! [`options`], [`listings`], [`png_info`], [`extras`], [`interrogate`].

pub mod auth;
pub mod body;
pub mod control;
pub mod error;
pub mod extras;
pub mod generate;
pub mod images;
pub mod interrogate;
pub mod lax;
pub mod listings;
pub mod options;
pub mod png_info;
pub mod processed;
pub mod progress;
pub mod pyjson;
pub mod request_model;
pub mod sampler_choice;
pub mod server;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use serde_json::{Map, Value};

use crate::daemon::queue::ConnId;
use crate::daemon::server::Shared;

pub use error::ApiError;
pub use server::{front_end, start, ApiConfig, ApiServer, ApiStartError};

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The daemon: its queue, model status, listings and limits.
    pub shared: Arc<Shared>,
    /// A1111's settings (`/sdapi/v1/options`): every key a client posted, over the defaults.
    /// Generation reads the ones that are request fields (`CLIP_stop_at_last_layers`,
    /// `sd_vae`, `randn_source`, `eta_noise_seed_delta` …) as its base.
    pub options: Arc<RwLock<Map<String, Value>>>,
    /// The server's settings (address, auth, CORS), for `cmd-flags`.
    pub config: Arc<ApiConfig>,
    /// The device the model runs on (the API's default RNG depends on it; the extras run
    /// model upscalers on it).
    pub device: tch::Device,
    /// The last model upscaler the extras used, kept loaded for the next request.
    pub upscalers: Arc<crate::upscale::UpscalerCache>,
    /// The queue's connection number of each client address, so that clients take turns.
    clients: Arc<Mutex<HashMap<IpAddr, ConnId>>>,
    /// The latest live preview encoded for `/progress` (its serial number and base64), so
    /// that clients polling every 100 ms do not re-encode it each time.
    pub preview_cache: Arc<Mutex<Option<(u64, String)>>>,
}

/// HTTP clients' queue numbers start here, far above the socket connections' (counted
/// from 1), so the two never meet.
const FIRST_HTTP_CONN: ConnId = 1 << 62;

impl ApiState {
    /// The state of a server over `shared`.
    pub fn new(shared: Arc<Shared>, config: ApiConfig, device: tch::Device) -> Self {
        ApiState {
            shared,
            options: Arc::new(RwLock::new(Map::new())),
            config: Arc::new(config),
            device,
            upscalers: Arc::default(),
            clients: Arc::new(Mutex::new(HashMap::new())),
            preview_cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The queue connection of client address `address`: one per address, so that one
    /// client's many requests take turns with everyone else's (socket clients included).
    pub fn conn_of(&self, address: IpAddr) -> ConnId {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let next = FIRST_HTTP_CONN + clients.len() as ConnId;
        *clients.entry(address).or_insert(next)
    }

    /// A snapshot of the options.
    pub fn options(&self) -> Map<String, Value> {
        self.options
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Every route: the generation and progress routes here, and the others' modules.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(generate::routes())
        .merge(progress::routes())
        .merge(control::routes())
        .merge(options::routes())
        .merge(listings::routes())
        .merge(interrogate::routes())
        .merge(png_info::routes())
        .merge(extras::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}
