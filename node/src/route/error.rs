//! The errors routing answers itself, as OpenAI error objects
//! (`{"error":{"message","type","param","code"}}`), so clients handle them like any other
//! API error. Kept apart from `crate::api::error` because routing builds without the engine.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
    /// The body could not be read within the size limit.
    #[error("the request body is over the {limit} byte limit or could not be read")]
    BodyTooLarge { limit: usize },
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
            RouteError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The OpenAI error object's `code`; also a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::NotServed { .. } => "model_not_found",
            RouteError::NoPeerAnswered { .. } => "no_peer_answered",
            RouteError::BodyTooLarge { .. } => "body_too_large",
        }
    }

    /// The OpenAI error object.
    pub fn body(&self) -> serde_json::Value {
        let (kind, param) = match self {
            RouteError::NotServed { .. } => ("invalid_request_error", Some("model")),
            RouteError::NoPeerAnswered { .. } => ("api_error", None),
            RouteError::BodyTooLarge { .. } => ("invalid_request_error", None),
        };
        json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": param,
                "code": self.code(),
            }
        })
    }
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
