//! POST `/sdapi/v1/interrupt` and `/sdapi/v1/skip`.

use axum::Router;

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
}
