//! POST `/sdapi/v1/interrogate`: A1111 v1.10.1's `api.py: interrogateapi`: `{"image", "model":
//! "clip" | "deepdanbooru"}` → `{"caption"}`, run on the daemon's queue (A1111 holds its queue
//! lock) with the interrogation options of `/sdapi/v1/options`.
//!
//! Where A1111 differs: its CLIP path catches every failure and answers 200 with a caption
//! ending in `<error>` (a missing model file included); sdhost answers A1111's error shape
//! (500, `RuntimeError`) whose message names the missing file or the failure.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::body::LimitedBody;
use super::error::ApiError;
use super::generate::submit;
use super::images::decode_image;
use super::lax;
use super::ApiState;
use crate::daemon::event::{DoneOutcome, Event, Outgoing};
use crate::daemon::queue::JobKind;
use crate::daemon::request::InterrogateJob;
use crate::interrogate::interrogator::check_options;
use crate::interrogate::options::read_interrogate_options;
use crate::interrogate::InterrogateMethod;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/sdapi/v1/interrogate", post(interrogate))
}

async fn interrogate(
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<Value>, ApiError> {
    tokio::task::spawn_blocking(move || answer(&state, client, &body))
        .await
        .map_err(|e| ApiError::runtime(format!("the request's thread failed: {e}")))?
        .map(Json)
}

/// The whole request: read as A1111's `InterrogateRequest` (`image` default "", `model`
/// default "clip"), queue, wait for the caption.
fn answer(state: &ApiState, client: SocketAddr, body: &[u8]) -> Result<Value, ApiError> {
    let body = lax::json_object(body)?;
    let mut fields = lax::Fields::new(&body);
    let image = fields.get("image", lax::string);
    let model = fields.get("model", lax::string);
    fields.finish()?;
    if body.get("image").is_some_and(Value::is_null) {
        return Err(ApiError::http(StatusCode::NOT_FOUND, "Image not found"));
    }
    let image = decode_image(
        image.unwrap_or_default().trim(),
        state.shared.limits.max_pixels,
    )?
    .to_rgb8();
    let model = model.unwrap_or_else(|| "clip".into());
    // The API's names only ("deepbooru" is the UI's word, not the API's).
    let method = match model.as_str() {
        "clip" => InterrogateMethod::Clip,
        "deepdanbooru" => InterrogateMethod::Deepbooru,
        _ => return Err(ApiError::http(StatusCode::NOT_FOUND, "Model not found")),
    };
    let options = {
        let settings = state.options.read().unwrap_or_else(|p| p.into_inner());
        read_interrogate_options(&settings).map_err(ApiError::runtime)?
    };
    check_options(&options).map_err(|e| ApiError::runtime(e.to_string()))?;
    let job = InterrogateJob {
        image,
        method,
        options,
    };
    let (events, received) = crossbeam_channel::unbounded::<Outgoing>();
    submit(state, client, JobKind::Interrogate(Box::new(job)), events)?;
    for outgoing in received {
        match outgoing.event {
            Event::Done {
                outcome: DoneOutcome::Caption { caption, .. },
                ..
            } => return Ok(json!({ "caption": caption })),
            Event::Cancelled { .. } => return Err(ApiError::runtime("interrogation interrupted")),
            Event::Error { message, .. } => return Err(ApiError::runtime(message)),
            _ => {}
        }
    }
    Err(ApiError::runtime(
        "the interrogation ended without an answer",
    ))
}
