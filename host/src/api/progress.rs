//! GET `/sdapi/v1/progress`: what the worker publishes of the running job, in A1111's shape.

use axum::Router;

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
}
