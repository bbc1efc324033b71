//! The Kubernetes [`AdminAuthorizer`] of `talm-hub run --admin-auth kube`: a TokenReview
//! (`authentication.k8s.io/v1`) says who a bearer token is, a SubjectAccessReview
//! (`authorization.k8s.io/v1`) of the non-resource URL says whether that user may use it.
//! Both are created with the operator's own client, which needs `create` on `tokenreviews` and
//! `subjectaccessreviews` (deploy/base/core/rbac.yaml). The HTTP guard and its caches are in
//! [`crate::admin_auth`].

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use crate::admin_auth::{Access, AdminAuthorizer, ReviewError, UserInfo};

/// Reviews tokens and access through the API server.
#[derive(Clone)]
pub struct KubeAuthorizer {
    client: kube::Client,
}

impl std::fmt::Debug for KubeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuthorizer").finish_non_exhaustive()
    }
}

impl KubeAuthorizer {
    /// Reviews through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    async fn token_review(&self, token: &str) -> Result<Option<UserInfo>, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::TokenReview(e.to_string()))?;
        let status = answer
            .status
            .ok_or_else(|| ReviewError::TokenReview("the answer has no status".into()))?;
        if status.authenticated != Some(true) {
            if let Some(e) = status.error.filter(|e| !e.is_empty()) {
                tracing::debug!(error = %e, "TokenReview: not authenticated");
            }
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if username.is_empty() {
            return Err(ReviewError::TokenReview(
                "authenticated, but the answer names no user".into(),
            ));
        }
        Ok(Some(UserInfo {
            username,
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }

    async fn access_review(
        &self,
        user: &UserInfo,
        verb: &str,
        path: &str,
    ) -> Result<Access, ReviewError> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::AccessReview(e.to_string()))?;
        let status = answer
            .status
            .ok_or_else(|| ReviewError::AccessReview("the answer has no status".into()))?;
        if status.allowed {
            return Ok(Access::Allowed);
        }
        let reason = [status.reason, status.evaluation_error]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Access::Denied { reason })
    }
}

impl AdminAuthorizer for KubeAuthorizer {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, ReviewError>> {
        Box::pin(self.token_review(token))
    }

    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        verb: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Access, ReviewError>> {
        Box::pin(self.access_review(user, verb, path))
    }
}
