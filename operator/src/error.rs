//! The operator's one error type. Each variant is also a metric label (`metric_label`), so
//! reconcile errors can be counted by reason.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource lacks a field the API server always sets (name, namespace, uid); seen
    /// only with objects that did not come from the API server.
    #[error("InferenceNode has no {0}")]
    MissingObjectKey(&'static str),

    /// The API server would not take a child (`kind` `name`) as built.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },

    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Every value [`Error::metric_label`] returns, so the error counter starts at zero for
    /// each (a rate over a series that does not exist yet alerts on nothing).
    pub const METRIC_LABELS: &[&str] = &["missing_object_key", "apply", "kube"];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Apply { .. } => "apply",
            Self::Kube(_) => "kube",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_label_is_listed() {
        let errors = [
            Error::MissingObjectKey(".metadata.uid"),
            Error::Apply {
                kind: "Service".into(),
                name: "gemma".into(),
                source: kube::Error::TlsRequired,
            },
            Error::Kube(kube::Error::TlsRequired),
        ];
        let labels: Vec<&str> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels, Error::METRIC_LABELS);
    }
}
