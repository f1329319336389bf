//! The errors routing answers itself, answered as the API's own [`ApiError`] (OpenAI's
//! `{"error":{"message","type","param","code"}}`), so clients handle them like any other
//! API error.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No live peer (nor this node) serves the model.
    #[error("no peer serves model `{model}`; models in the swarm: [{}]", .available.join(", "))]
    NotServed {
        model: String,
        available: Vec<String>,
    },
    /// Every peer tried failed before answering.
    #[error("no peer serving `{model}` answered ({})", .attempts.join("; "))]
    NoPeerAnswered {
        model: String,
        /// One line per peer tried: who and what went wrong.
        attempts: Vec<String>,
    },
    /// The model is scaled to zero and no replica served it within the hold.
    #[error(
        "model `{model}` is scaled to zero and did not start within {waited_s} s; try again later"
    )]
    WakeTimedOut { model: String, waited_s: u64 },
    /// As many requests as allowed already wait for the model to wake.
    #[error("{limit} requests already wait for model `{model}` to wake; try again later")]
    HoldQueueFull { model: String, limit: usize },
    /// The operator that advertises the model could not wake it.
    #[error("model `{model}` is scaled to zero and could not be woken: {reason}")]
    WakeFailed { model: String, reason: String },
}

impl RouteError {
    pub fn not_served(model: &str, available: Vec<String>) -> Self {
        RouteError::NotServed {
            model: model.to_string(),
            available,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::NotServed { .. } => StatusCode::NOT_FOUND,
            RouteError::NoPeerAnswered { .. } => StatusCode::BAD_GATEWAY,
            RouteError::WakeTimedOut { .. }
            | RouteError::HoldQueueFull { .. }
            | RouteError::WakeFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The OpenAI error object's `code`; also a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::NotServed { .. } => "model_not_found",
            RouteError::NoPeerAnswered { .. } => "no_peer_answered",
            RouteError::WakeTimedOut { .. } => "model_wake_timed_out",
            RouteError::HoldQueueFull { .. } => "model_wake_queue_full",
            RouteError::WakeFailed { .. } => "model_wake_failed",
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`), for the errors
    /// that pass.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RouteError::WakeTimedOut { .. } => Some(30),
            RouteError::HoldQueueFull { .. } => Some(5),
            RouteError::WakeFailed { .. } => Some(30),
            _ => None,
        }
    }

    /// The OpenAI error object.
    pub fn body(&self) -> serde_json::Value {
        ApiError::from(self).body()
    }
}

/// Answered as the API's one error type, so the body is the same everywhere.
impl From<&RouteError> for ApiError {
    fn from(err: &RouteError) -> Self {
        let (kind, param) = match err {
            RouteError::NotServed { .. } => ("invalid_request_error", Some("model")),
            RouteError::NoPeerAnswered { .. } => ("api_error", None),
            RouteError::WakeTimedOut { .. }
            | RouteError::HoldQueueFull { .. }
            | RouteError::WakeFailed { .. } => ("api_error", Some("model")),
        };
        ApiError {
            status: err.status(),
            message: err.to_string(),
            kind,
            param: param.map(str::to_string),
            code: Some(err.code()),
            retry_after: err
                .retry_after()
                .map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
        }
    }
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        ApiError::from(&self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn not_served_names_the_models_that_exist() {
        let err = RouteError::not_served("gpt-4", vec!["llama-3.2-1b".into(), "qwen".into()]);
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        let body = err.body();
        assert_eq!(
            body["error"]["message"],
            "no peer serves model `gpt-4`; models in the swarm: [llama-3.2-1b, qwen]"
        );
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["code"], "model_not_found");
    }

    #[test]
    fn a_hold_that_ends_is_a_503_that_says_when_to_come_back() {
        for err in [
            RouteError::WakeTimedOut {
                model: "m".into(),
                waited_s: 300,
            },
            RouteError::HoldQueueFull {
                model: "m".into(),
                limit: 64,
            },
            RouteError::WakeFailed {
                model: "m".into(),
                reason: "forbidden".into(),
            },
        ] {
            let code = err.code();
            let response = err.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{code}");
            let retry: u64 = response.headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry > 0, "{code}");
        }
        assert!(
            RouteError::not_served("m", vec![])
                .into_response()
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }

    #[test]
    fn no_answer_is_a_bad_gateway_listing_each_attempt() {
        let err = RouteError::NoPeerAnswered {
            model: "m".into(),
            attempts: vec!["a: connection refused".into(), "b: 503".into()],
        };
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            err.body()["error"]["message"],
            "no peer serving `m` answered (a: connection refused; b: 503)"
        );
        assert_eq!(err.body()["error"]["param"], serde_json::Value::Null);
    }
}
