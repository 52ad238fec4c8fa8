//! Request bodies under the daemon's `max_frame_bytes`. A body over the limit is still read
//! (and dropped) up to a bound, so that a client that sends it whole, as every HTTP client
//! does without `Expect: 100-continue`, reads the 413 answer instead of a broken pipe.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use http_body_util::BodyExt;

use super::error::ApiError;

/// The largest body accepted, in bytes (a request extension set by the server).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A request's whole body under the server's [`BodyLimit`] (413 over it).
pub struct LimitedBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        read_limited(request.into_body(), limit, declared)
            .await
            .map(LimitedBody)
    }
}

/// How many times the limit is read and dropped before the connection is given up.
const DRAIN_FACTOR: usize = 4;

/// The body's bytes, or the 413 answer once it is known to be over `limit`.
pub async fn read_limited(
    body: Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, ApiError> {
    let drain_cap = limit.saturating_mul(DRAIN_FACTOR);
    if declared.is_some_and(|length| length > drain_cap as u64) {
        // Too large to be worth reading: answered now, the connection closes after it.
        return Err(too_large());
    }
    let mut body = body;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client went away or broke the framing; nobody reads the answer.
            return Err(too_large());
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > drain_cap {
            return Err(too_large());
        }
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else {
            kept = Vec::new();
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

/// What A1111 answers to a body over the limit (starlette has none; this is sdhost's, in the
/// shape of A1111's `HTTPException`).
pub fn too_large() -> ApiError {
    ApiError::http(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: usize, limit: usize) -> Result<usize, u16> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(read_limited(Body::from(vec![b'x'; bytes]), limit, None))
            .map(|b| b.len())
            .map_err(|e| e.status().as_u16())
    }

    #[test]
    fn bodies_over_the_limit_are_read_and_refused() {
        assert_eq!(read(10, 10), Ok(10));
        assert_eq!(read(11, 10), Err(413));
        assert_eq!(read(100, 10), Err(413));
    }
}
