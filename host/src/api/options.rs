//! GET/POST `/sdapi/v1/options` (A1111's settings, stored in [`super::ApiState::options`]).

use axum::Router;

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
}
