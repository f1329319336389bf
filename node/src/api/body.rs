//! Reading a request body whole, bounded in size (`--body-limit`) and in time: the server
//! wraps every body in tower-http's `RequestBodyTimeoutLayer`, so a client that stops
//! sending for `--body-timeout` fails the read instead of holding a request open. Every
//! route that reads a body (the JSON extractor, the routing layer, the sidecar's proxy) reads
//! it here, so each failure gets the same answer.

use axum::body::{Body, Bytes};

use super::error::ApiError;

/// The body, or: 413 over `limit` bytes, 408 after a pause longer than `timeout` (named in
/// the message), 400 when the client broke off.
pub async fn read(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(inner) = cause {
            if inner.is::<tower_http::timeout::TimeoutError>() {
                return ApiError::body_timeout(timeout.as_secs());
            }
            if inner.is::<http_body_util::LengthLimitError>() {
                return ApiError::body_too_large(limit);
            }
            cause = inner.source();
        }
        ApiError::invalid(format!(
            "could not read the request body: {}",
            crate::swarm::error_text::chain(&err)
        ))
    })
}
