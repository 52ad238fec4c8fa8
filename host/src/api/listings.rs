//! The GET listings: sd-models, samplers, schedulers, upscalers, latent-upscale-modes, sd-vae, loras, hypernetworks, embeddings, scripts, script-info, prompt-styles, memory, cmd-flags, the refresh routes and the ControlNet probes.

use axum::Router;

use super::ApiState;

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
}
