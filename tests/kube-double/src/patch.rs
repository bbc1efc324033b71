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
    Apply {
        config: Value,
        field_manager: String,
        force: bool,
    },
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
                Ok(Self::Apply {
                    config,
                    field_manager,
                    force,
                })
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

// ------------------------------------------------------------------ apply field ownership

/// A field path (object keys from the root); lists are atomic leaves.
pub(crate) type FieldPath = Vec<String>;

/// Set of leaf field paths.
pub(crate) type FieldSet = std::collections::BTreeSet<FieldPath>;

/// Metadata fields an apply configuration may set but nobody "owns".
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "generateName",
    "selfLink",
];

fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    let Some(obj) = v.as_object() else {
        return;
    };
    for (k, child) in obj {
        prefix.push(k.clone());
        match child.as_object() {
            Some(o) if !o.is_empty() => leaves(child, prefix, out),
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

/// The fields an apply configuration sets. With a status subresource, a main-resource apply
/// owns nothing under `status` and a `/status` apply owns only `status`.
pub(crate) fn config_fields(config: &Value, status_subresource: bool, status: bool) -> FieldSet {
    let mut all = FieldSet::new();
    leaves(config, &mut Vec::new(), &mut all);
    all.into_iter()
        .filter(|p| {
            let top = p.first().map(String::as_str).unwrap_or("");
            if top == "apiVersion" || top == "kind" {
                return false;
            }
            if top == "metadata" && p.get(1).is_some_and(|m| UNOWNED_META.contains(&m.as_str())) {
                return false;
            }
            match (status_subresource, status) {
                (true, true) => top == "status",
                (true, false) => top != "status",
                (false, _) => true,
            }
        })
        .collect()
}

/// `fieldsV1` JSON (`{"f:spec": {"f:x": {}}}`) for a field set.
pub(crate) fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Value::Object(serde_json::Map::new());
    for path in set {
        let mut cur = &mut root;
        for key in path {
            let Some(obj) = cur.as_object_mut() else {
                break;
            };
            cur = obj
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
    }
    root
}

/// Field set from `fieldsV1` JSON (only `f:` keys are understood).
pub(crate) fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
        let Some(obj) = v.as_object() else {
            return;
        };
        for (k, child) in obj {
            let Some(key) = k.strip_prefix("f:") else {
                continue;
            };
            prefix.push(key.to_string());
            match child.as_object() {
                Some(o) if o.keys().any(|k| k.starts_with("f:")) => walk(child, prefix, out),
                _ => {
                    out.insert(prefix.clone());
                }
            }
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The value at `path`, if any.
pub(crate) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.as_object()?.get(k))
}

/// Removes the leaf at `path`, then every parent object the removal left empty.
pub(crate) fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(obj) = parents
        .iter()
        .try_fold(&mut *v, |cur, k| cur.as_object_mut()?.get_mut(k))
        .and_then(Value::as_object_mut)
    {
        obj.remove(last);
        if obj.is_empty() {
            remove_path(v, parents);
        }
    }
}

/// `.spec.a.b` style rendering of a path, for conflict messages.
pub(crate) fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_roundtrip_and_removal() {
        let cfg = json!({"apiVersion": "x", "kind": "Y", "metadata": {"name": "n", "labels": {"a": "1"}},
                         "spec": {"list": [1, 2], "m": {"k": "v", "e": {}}}, "status": {"s": 1}});
        let main = config_fields(&cfg, true, false);
        let paths: Vec<String> = main.iter().map(|p| dotted(p)).collect();
        assert_eq!(
            paths,
            [".metadata.labels.a", ".spec.list", ".spec.m.e", ".spec.m.k"]
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&main)), main);
        let st = config_fields(&cfg, true, true);
        assert_eq!(st.len(), 1);
        let mut doc = json!({"spec": {"m": {"k": "v"}, "x": 1}});
        remove_path(&mut doc, &["spec".into(), "m".into(), "k".into()]);
        assert_eq!(doc, json!({"spec": {"x": 1}}));
    }
}
