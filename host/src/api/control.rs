//! POST `/sdapi/v1/interrupt` and `/sdapi/v1/skip` (A1111's `State.interrupt`, `State.skip`):
//! global, whoever's job is running (socket jobs too). An interrupted HTTP request still
//! answers 200 with the images made so far. Bodies are ignored (clients send none, `{}` or
//! a bare content type); the answers are A1111's `{}` and `null`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/skip", post(skip))
}

async fn interrupt(State(state): State<ApiState>) -> Json<Value> {
    state.shared.live.interrupt();
    state.shared.queue.interrupt_running();
    Json(json!({}))
}

async fn skip(State(state): State<ApiState>) -> Json<Value> {
    state.shared.live.skip();
    state.shared.queue.skip_running();
    Json(Value::Null)
}
