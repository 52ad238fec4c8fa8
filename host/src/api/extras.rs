//! POST `/sdapi/v1/extra-single-image`: upscaling one image.

use axum::Router;

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
}
