//! Scripted answers to the two review APIs a kube-rbac-proxy-style client creates:
//! `authentication.k8s.io/v1` TokenReview and `authorization.k8s.io/v1` SubjectAccessReview.
//!
//! The double does no authentication of its own; these are answers a test scripts. A test
//! says which bearer tokens are valid and for which user ([`crate::KubeDouble::accept_token`]),
//! and which user or group may use which verb on which non-resource URL
//! ([`crate::KubeDouble::grant_non_resource`]). Everything else is refused: an unknown token
//! reviews as `authenticated: false`, an ungranted request as `allowed: false`. Reviews are
//! create-only and never stored; they show in the request log (and so in
//! [`crate::KubeDouble::rbac_rules`]) like any other create.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::error::ApiError;

/// The user a scripted token authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewUser {
    /// `status.user.username`.
    pub username: String,
    /// `status.user.uid`.
    pub uid: String,
    /// `status.user.groups`.
    pub groups: Vec<String>,
}

/// One non-resource grant: `subject` (a username or a group) may `verb` on `path`. A `path`
/// ending in `*` matches every path with that prefix, as in RBAC's `nonResourceURLs`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    subject: String,
    verb: String,
    path: String,
}

/// The scripted tokens and grants.
#[derive(Debug, Default)]
pub(crate) struct Reviews {
    tokens: HashMap<String, ReviewUser>,
    grants: Vec<Grant>,
}

/// `(group, plural)` of the TokenReview resource.
pub(crate) const TOKEN_REVIEWS: (&str, &str) = ("authentication.k8s.io", "tokenreviews");
/// `(group, plural)` of the SubjectAccessReview resource.
pub(crate) const ACCESS_REVIEWS: (&str, &str) = ("authorization.k8s.io", "subjectaccessreviews");

impl Reviews {
    pub(crate) fn accept_token(&mut self, token: &str, user: ReviewUser) {
        self.tokens.insert(token.to_string(), user);
    }

    pub(crate) fn grant(&mut self, subject: &str, verb: &str, path: &str) {
        self.grants.push(Grant {
            subject: subject.to_string(),
            verb: verb.to_string(),
            path: path.to_string(),
        });
    }

    /// The answer to a review created at `(group, plural)`, or `None` when that is no review
    /// resource.
    pub(crate) fn answer(
        &self,
        group: &str,
        plural: &str,
        body: Value,
    ) -> Option<Result<Value, ApiError>> {
        match (group, plural) {
            TOKEN_REVIEWS => Some(self.token_review(body)),
            ACCESS_REVIEWS => Some(self.access_review(body)),
            _ => None,
        }
    }

    /// A TokenReview: `spec.token` → `status.authenticated` and `status.user`.
    fn token_review(&self, mut body: Value) -> Result<Value, ApiError> {
        let token = body
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(422, "Invalid", "TokenReview: spec.token: Required value")
            })?;
        let status = match self.tokens.get(token) {
            Some(u) => json!({
                "authenticated": true,
                "user": {"username": u.username, "uid": u.uid, "groups": u.groups},
            }),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        set_status(&mut body, status);
        Ok(body)
    }

    /// A SubjectAccessReview of a non-resource URL: allowed when the user or one of its
    /// groups has a matching grant. Resource attributes are never allowed.
    fn access_review(&self, mut body: Value) -> Result<Value, ApiError> {
        let spec = body.get("spec").cloned().unwrap_or(Value::Null);
        let user = spec.get("user").and_then(Value::as_str).unwrap_or("");
        let groups: Vec<&str> = spec
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if user.is_empty() && groups.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "SubjectAccessReview: spec.user: Invalid value: \"\": at least one of user or group must be specified",
            ));
        }
        let Some(attrs) = spec.get("nonResourceAttributes") else {
            set_status(
                &mut body,
                json!({"allowed": false, "reason": "the double answers nonResourceAttributes only"}),
            );
            return Ok(body);
        };
        let path = attrs.get("path").and_then(Value::as_str).unwrap_or("");
        let verb = attrs.get("verb").and_then(Value::as_str).unwrap_or("");
        let allowed = self.grants.iter().any(|g| {
            (g.subject == user || groups.contains(&g.subject.as_str()))
                && (g.verb == verb || g.verb == "*")
                && path_matches(&g.path, path)
        });
        let status = if allowed {
            json!({"allowed": true, "reason": "granted by the double's script"})
        } else {
            json!({"allowed": false})
        };
        set_status(&mut body, status);
        Ok(body)
    }
}

/// RBAC's `nonResourceURLs` matching: exact, or a prefix ending in `*`.
fn path_matches(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

fn set_status(body: &mut Value, status: Value) {
    if let Some(o) = body.as_object_mut() {
        o.insert("status".into(), status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_path_matching() {
        assert!(path_matches("/metrics", "/metrics"));
        assert!(!path_matches("/metrics", "/metrics/x"));
        assert!(path_matches("/agents/*", "/agents/sno1"));
        assert!(!path_matches("/agents/*", "/agents"));
        assert!(path_matches("*", "/anything"));
    }
}
