//! Patch bodies and how the double applies them.
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch.
//! - `application/json-patch+json`: RFC 6902 JSON patch (via the `json-patch` crate).
//! - `application/strategic-merge-patch+json`: accepted only for built-in kinds (like the real
//!   apiserver, which answers 415 for custom resources) and applied as a JSON merge patch: lists
//!   are replaced, `$patch`/`$setElementOrder` directives are not interpreted.
//! - `application/apply-patch+yaml` (server-side apply), approximated: see [`crate`] docs.

use serde_json::Value;

use crate::error::ApiError;

/// The patch content types the double understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json` (built-in kinds only; applied as merge)
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply, approximated)
    Apply,
}

impl PatchType {
    /// Maps a `Content-Type` (parameters ignored) to a patch type.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// A decoded patch, ready to apply.
#[derive(Debug, Clone)]
pub(crate) enum PatchBody {
    /// RFC 7386 merge patch (also used for strategic merge).
    Merge(Value),
    /// RFC 6902 operations.
    Json(json_patch::Patch),
    /// Server-side apply configuration.
    Apply { config: Value },
}

impl PatchBody {
    /// Decodes `body` for `ty`. Undecodable bodies are 400 BadRequest, like the apiserver.
    pub(crate) fn decode(
        ty: PatchType,
        body: &[u8],
        field_manager: Option<&str>,
        force: bool,
    ) -> Result<Self, ApiError> {
        match ty {
            PatchType::Merge | PatchType::StrategicMerge => serde_json::from_slice(body)
                .map(Self::Merge)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
            PatchType::Json => serde_json::from_slice(body)
                .map(Self::Json)
                .map_err(|e| ApiError::bad_request(format!("error decoding json patch: {e}"))),
            PatchType::Apply => {
                let field_manager = match field_manager {
                    Some(m) if !m.is_empty() => m.to_string(),
                    _ => {
                        return Err(ApiError::invalid(
                            "PatchOptions.meta.k8s.io",
                            "",
                            "fieldManager: Required value: is required for apply patch",
                        ));
                    }
                };
                // kube sends JSON (a YAML subset); accept YAML too.
                let config: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => {
                        let text = std::str::from_utf8(body).map_err(|e| {
                            ApiError::bad_request(format!("error decoding YAML: {e}"))
                        })?;
                        serde_saphyr::from_str(text).map_err(|e| {
                            ApiError::bad_request(format!("error decoding YAML: {e}"))
                        })?
                    }
                };
                if !config.is_object() {
                    return Err(ApiError::bad_request(
                        "error decoding YAML: apply configuration must be an object",
                    ));
                }
                // No field ownership is tracked, so the manager and `force` only gate
                // acceptance (see the crate docs).
                let _ = (field_manager, force);
                Ok(Self::Apply { config })
            }
        }
    }
}

/// RFC 7386 merge of `patch` into `doc`.
pub(crate) fn merge(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// Applies RFC 6902 operations; failures (missing path, failed `test`) are 422 Invalid.
pub(crate) fn json_patch(
    doc: &mut Value,
    ops: &json_patch::Patch,
    what: &str,
) -> Result<(), ApiError> {
    json_patch::patch(doc, ops).map_err(|e| ApiError::invalid(what, "", format!("json patch: {e}")))
}
