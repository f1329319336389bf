//! The operator's one error type. Each variant is also a metric label (`metric_label`), so
//! reconcile errors can be counted by reason.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource lacks a field the API server always sets (name, namespace, uid); seen
    /// only with objects that did not come from the API server.
    #[error("InferenceNode has no {0}")]
    MissingObjectKey(&'static str),

    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Kube(_) => "kube",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
