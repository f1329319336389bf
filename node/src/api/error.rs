//! The one error type of the HTTP API and its response: the OpenAI error object
//! `{"error":{"message","type","param","code"}}` with the matching status code, plus
//! `Retry-After` where trying again later helps (loading, queue full, shutting down).

use super::openapi::{ErrorBody, ErrorObject};
#[cfg(feature = "engine")]
use crate::engine::SubmitError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An API failure as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    /// The request field at fault, where there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed.
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed or asks for something this server cannot do.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 about one field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::invalid(message)
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid or missing API key: send `Authorization: Bearer <key>`",
            )
        }
    }

    pub fn model_not_found(model: &str, served: &[String]) -> Self {
        let serves = if served.is_empty() {
            "it serves no model itself".to_string()
        } else {
            let names: Vec<String> = served.iter().map(|id| format!("`{id}`")).collect();
            format!("it serves {}", names.join(", "))
        };
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model `{model}` does not exist on this node; {serves}"),
            )
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route for {path}"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{path} does not take {method} requests"),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 408: the client paused longer than the body timeout while sending its body.
    pub fn body_timeout(seconds: u64) -> Self {
        ApiError {
            code: Some("body_timeout"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!("the request body stopped arriving for {seconds} s (the body timeout)"),
            )
        }
    }

    /// 503: as many requests as the node reads and prepares at once are in; retry soon.
    pub fn overloaded(limit: usize) -> Self {
        ApiError {
            code: Some("overloaded"),
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!(
                    "the node is taking in its limit of {limit} requests at once; try again shortly"
                ),
            )
        }
    }

    /// 503 while the model loads.
    pub fn loading() -> Self {
        ApiError {
            code: Some("model_loading"),
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the model is still loading; try again shortly",
            )
        }
    }

    pub fn shutting_down() -> Self {
        Self::stopping("this node is shutting down; send the request to another node")
    }

    /// The node's shutdown grace period ended before the answer did.
    pub fn grace_over() -> Self {
        Self::stopping(
            "this node stopped before the answer was finished (its shutdown grace period \
             ended); send the request again, another node will answer it",
        )
    }

    /// 503 `shutting_down`: retried elsewhere by clients and forwarders.
    fn stopping(message: &'static str) -> Self {
        ApiError {
            code: Some("shutting_down"),
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// 503 from a sidecar whose engine is not answering (or failed before answering).
    pub fn upstream_unavailable(reason: &str) -> Self {
        ApiError {
            code: Some("upstream_unavailable"),
            retry_after: Some(2),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("the engine behind this node is not answering: {reason}"),
            )
        }
    }

    pub fn timeout(seconds: u64) -> Self {
        ApiError {
            code: Some("timeout"),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                format!("the request did not finish within the {seconds} s request timeout"),
            )
        }
    }

    /// 409: a forwarder asked this node to continue a stream it cannot continue (another
    /// model file, a bad header, tokens that do not fit). The forwarder tries elsewhere.
    pub fn resume_rejected(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("resume_rejected"),
            ..Self::new(StatusCode::CONFLICT, "invalid_request_error", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The OpenAI error object, also used inside a stream after an error.
    pub fn body(&self) -> serde_json::Value {
        let body = ErrorBody {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.map(str::to_string),
            },
        };
        serde_json::to_value(body).expect("an error body serializes")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(feature = "engine")]
impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::QueueFull { .. } => ApiError {
                code: Some("queue_full"),
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    err.to_string(),
                )
            },
            SubmitError::Stopped => ApiError::shutting_down(),
            SubmitError::ContextExceeded { .. } | SubmitError::PromptTooLong { .. } => ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid_param("messages", err.to_string())
            },
            SubmitError::UnknownToken(_) => ApiError::invalid_param("logit_bias", err.to_string()),
            SubmitError::EmptyPrompt => ApiError::invalid_param("prompt", err.to_string()),
            SubmitError::UnknownResumeToken(_)
            | SubmitError::ResumeTooLong { .. }
            | SubmitError::ResumedChoices(_) => ApiError::resume_rejected(err.to_string()),
            SubmitError::Grammar(_) => ApiError::invalid_param("response_format", err.to_string()),
            SubmitError::TooManyChoices { .. } => ApiError::invalid_param("n", err.to_string()),
            SubmitError::TooManyLogprobs(_) => {
                ApiError::invalid_param("top_logprobs", err.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_openai_shape() {
        let body = ApiError::invalid_param("temperature", "too hot").body();
        assert_eq!(body["error"]["message"], "too hot");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "temperature");
        assert!(body["error"]["code"].is_null());
    }

    #[cfg(feature = "engine")]
    #[test]
    fn queue_full_is_503_with_retry_after() {
        let err = ApiError::from(SubmitError::QueueFull { slots: 2, queue: 3 });
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        let response = err.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
