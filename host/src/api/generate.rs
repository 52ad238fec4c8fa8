//! POST `/sdapi/v1/img2img` and `/sdapi/v1/txt2img`: A1111's request read laxly, queued as a daemon job, answered in A1111's shape.

use axum::Router;

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
}
