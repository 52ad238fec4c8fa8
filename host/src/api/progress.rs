//! GET `/sdapi/v1/progress`: what the worker publishes of the running job
//! ([`crate::daemon::live::LiveState`]), computed as A1111 v1.10.1's `Api.progressapi` does
//! (spec §c): idle is `progress` 0 and `job_count` 0; a running job shows more than 0 from its
//! start; `current_image` is the latest live preview as bare base64 PNG, encoded once per
//! preview however often clients poll. It never waits on the queue.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::error::{ApiError, ValidationItem};
use super::images::encode_png;
use super::lax;
use super::ApiState;
use crate::daemon::live::LiveSnapshot;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/sdapi/v1/progress", get(progress))
}

/// A1111's `State.dict()`, in its order.
#[derive(Debug, Serialize)]
struct StateDict {
    skipped: bool,
    interrupted: bool,
    stopping_generation: bool,
    job: String,
    job_count: usize,
    job_timestamp: String,
    job_no: usize,
    sampling_step: usize,
    sampling_steps: usize,
}

/// A1111's `ProgressResponse`.
#[derive(Debug, Serialize)]
struct ProgressResponse {
    progress: f64,
    eta_relative: f64,
    state: StateDict,
    current_image: Option<String>,
    textinfo: Option<String>,
}

/// `progress` and `eta_relative` of a snapshot taken at `now` (A1111's arithmetic: 0.01 so
/// that a running job never shows 0, the ETA from the uncapped value).
fn progress_of(snapshot: &LiveSnapshot, now: Instant) -> (f64, f64) {
    let fields = &snapshot.fields;
    if fields.job_count == 0 {
        return (0.0, 0.0);
    }
    let count = fields.job_count as f64;
    let mut progress = 0.01 + fields.job_no as f64 / count;
    if fields.sampling_steps > 0 {
        progress += fields.sampling_step as f64 / fields.sampling_steps as f64 / count;
    }
    let elapsed = snapshot
        .started
        .map_or(0.0, |start| now.duration_since(start).as_secs_f64());
    let eta_relative = elapsed / progress - elapsed;
    (progress.min(1.0), eta_relative)
}

async fn progress(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<ProgressResponse>, ApiError> {
    let skip_image = match query.get("skip_current_image") {
        None => false,
        Some(text) => lax::boolean(&Value::from(text.as_str()))
            .map_err(|e| {
                ApiError::Validation(vec![ValidationItem {
                    loc: vec![Value::from("query"), Value::from("skip_current_image")],
                    msg: e.msg.into(),
                    kind: e.kind.into(),
                }])
            })?
            .unwrap_or(false),
    };
    let snapshot = state.shared.live.snapshot();
    let (progress, eta_relative) = progress_of(&snapshot, Instant::now());
    let current_image = match (
        &snapshot.preview,
        skip_image || snapshot.fields.job_count == 0,
    ) {
        (Some((serial, image)), false) => {
            let mut cache = state
                .preview_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match &*cache {
                Some((cached, text)) if cached == serial => Some(text.clone()),
                _ => {
                    let text = encode_png(image, None)?;
                    *cache = Some((*serial, text.clone()));
                    Some(text)
                }
            }
        }
        _ => None,
    };
    let fields = snapshot.fields;
    Ok(Json(ProgressResponse {
        progress,
        eta_relative,
        state: StateDict {
            skipped: fields.skipped,
            interrupted: fields.interrupted,
            stopping_generation: false,
            job: fields.job,
            job_count: fields.job_count,
            job_timestamp: fields.job_timestamp,
            job_no: fields.job_no,
            sampling_step: fields.sampling_step,
            sampling_steps: fields.sampling_steps,
        },
        current_image,
        textinfo: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::live::LiveState;
    use std::time::Duration;

    #[test]
    fn progress_is_a1111s_arithmetic() {
        let live = LiveState::default();
        assert_eq!(progress_of(&live.snapshot(), Instant::now()), (0.0, 0.0));
        live.begin("scripts_img2img");
        live.planned(2, 10);
        let snapshot = live.snapshot();
        let (progress, _) = progress_of(&snapshot, Instant::now());
        assert!(
            (progress - 0.01).abs() < 1e-12,
            "running shows > 0 from the start"
        );
        live.step(1, 6);
        let snapshot = live.snapshot();
        let later = snapshot.started.unwrap() + Duration::from_secs(3);
        let (progress, eta) = progress_of(&snapshot, later);
        assert!((progress - (0.01 + 0.5 + 0.25)).abs() < 1e-12, "{progress}");
        assert!((eta - (3.0 / 0.76 - 3.0)).abs() < 1e-9);
    }
}
