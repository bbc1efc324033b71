//! The operator's error type. Every variant names what failed; [`OperatorError::metric_label`]
//! gives the short label the `talm_reconcile_failures_total{error}` counter uses.

/// Why a reconcile, a watch or the operator's startup failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// An API request for one object failed (not a 404, which callers treat as success where
    /// it means "already gone", and not a conflict, see [`OperatorError::Conflict`]).
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        /// `create`, `apply`, `patch`, `delete`, `get`, ...
        verb: &'static str,
        /// The kind, e.g. `Placement`.
        kind: &'static str,
        /// `namespace/name` (or `name` for cluster-scoped objects).
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The CGU changed under a status or finalizer write more times in a row than allowed; the
    /// reconcile is retried with back-off.
    #[error("{cgu}: still conflicting after {attempts} attempts")]
    Conflict {
        /// `namespace/name` of the CGU.
        cgu: String,
        /// Attempts made.
        attempts: usize,
    },
    /// An object could not be serialised for a write; a bug.
    #[error("serializing {what}: {source}")]
    Serialize {
        /// What was being serialised.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The Kubernetes client could not be configured (no kubeconfig, no in-cluster config).
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// An admin or health listener could not be bound or failed.
    #[error("admin server on {addr}: {source}")]
    Admin {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not be started.
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// `--update-graph` could not be read.
    #[error("update graph: {0}")]
    UpdateGraph(String),
    /// The agent gateway could not start or its gRPC server failed (key material, TLS files,
    /// listener).
    #[error("agent gateway: {0}")]
    Gateway(String),
}

impl OperatorError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            OperatorError::Api { verb, .. } => match *verb {
                "create" => "api_create",
                "apply" => "api_apply",
                "patch" => "api_patch",
                "patch_status" => "api_patch_status",
                "delete" => "api_delete",
                "get" => "api_get",
                _ => "api_other",
            },
            OperatorError::Conflict { .. } => "conflict",
            OperatorError::Serialize { .. } => "serialize",
            OperatorError::Client(_) => "client",
            OperatorError::Admin { .. } => "admin",
            OperatorError::Runtime(_) => "runtime",
            OperatorError::UpdateGraph(_) => "update_graph",
            OperatorError::Gateway(_) => "gateway",
        }
    }
}

/// Whether a client error is a `404 Not Found`.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Whether a client error is a `409 Conflict` (stale resourceVersion) rather than
/// `AlreadyExists` (which the API also reports with code 409).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() && !s.is_already_exists())
}

/// Whether a client error is `422 Unprocessable Entity` (e.g. a JSON patch whose `test`
/// failed).
pub fn is_invalid(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422)
}

/// Whether a client error is `409 AlreadyExists`.
pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_already_exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str) -> kube::Error {
        let s: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": reason, "message": "m"
        }))
        .unwrap();
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn classifies_api_errors() {
        assert!(is_not_found(&status(404, "NotFound")));
        assert!(is_conflict(&status(409, "Conflict")));
        assert!(!is_conflict(&status(409, "AlreadyExists")));
        assert!(is_already_exists(&status(409, "AlreadyExists")));
    }

    #[test]
    fn metric_labels_are_stable() {
        let e = OperatorError::Api {
            verb: "patch_status",
            kind: "ClusterGroupUpgrade",
            name: "ns/x".into(),
            source: status(500, "InternalError"),
        };
        assert_eq!(e.metric_label(), "api_patch_status");
        let c = OperatorError::Conflict {
            cgu: "ns/x".into(),
            attempts: 3,
        };
        assert_eq!(c.metric_label(), "conflict");
    }
}
