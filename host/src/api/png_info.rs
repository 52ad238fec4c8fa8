//! POST `/sdapi/v1/png-info`: the infotext of a PNG, parsed as A1111 parses it.

use axum::Router;

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
}
