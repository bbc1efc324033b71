//! The scripted review APIs: TokenReview and SubjectAccessReview, created through an
//! unmodified `kube::Client` with k8s-openapi's types, as talm-hub's admin endpoints create them.
// Test helpers outside #[test] fns panic on purpose: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use talm_kube_double::{Fault, KubeDouble, Verb};

async fn token_review(d: &KubeDouble, token: &str) -> TokenReview {
    let api: Api<TokenReview> = Api::all(d.client());
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &tr).await.unwrap()
}

async fn allowed(d: &KubeDouble, user: &str, groups: &[&str], verb: &str, path: &str) -> bool {
    let api: Api<SubjectAccessReview> = Api::all(d.client());
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.into()),
                verb: Some(verb.into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = api.create(&PostParams::default(), &sar).await.unwrap();
    out.status.unwrap().allowed
}

#[tokio::test]
async fn token_reviews_answer_from_the_script() {
    let d = KubeDouble::start().await.unwrap();
    d.accept_token("good", "alice", &["admins", "system:authenticated"]);
    let ok = token_review(&d, "good").await.status.unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let user = ok.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert_eq!(user.uid.as_deref(), Some("uid-alice"));
    assert_eq!(
        user.groups.unwrap(),
        vec!["admins".to_string(), "system:authenticated".into()]
    );
    let bad = token_review(&d, "bad").await.status.unwrap();
    assert_eq!(bad.authenticated, Some(false));
    assert!(bad.user.is_none());
    // Create-only, never stored: get and list are 405, and nothing is kept.
    assert_eq!(d.count("authentication.k8s.io/v1", "TokenReview"), 0);
    let api: Api<TokenReview> = Api::all(d.client());
    match api.get("x").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 405),
        other => panic!("expected 405, got {other:?}"),
    }
    assert_eq!(
        d.count_requests(|r| r.verb == Verb::Create && r.resource == "tokenreviews"),
        2
    );
    d.shutdown().await;
}

#[tokio::test]
async fn access_reviews_match_users_groups_verbs_and_rbac_paths() {
    let d = KubeDouble::start().await.unwrap();
    d.grant_non_resource("alice", "get", "/metrics");
    d.grant_non_resource("monitoring", "get", "/agents/*");
    assert!(allowed(&d, "alice", &[], "get", "/metrics").await);
    assert!(!allowed(&d, "alice", &[], "post", "/metrics").await, "verb");
    assert!(
        !allowed(&d, "alice", &[], "get", "/metrics/x").await,
        "exact path"
    );
    assert!(!allowed(&d, "bob", &[], "get", "/metrics").await, "user");
    assert!(
        allowed(&d, "bob", &["monitoring"], "get", "/agents/sno1").await,
        "group + prefix"
    );
    assert!(
        !allowed(&d, "bob", &["monitoring"], "get", "/agents").await,
        "prefix is not the bare path"
    );
    let rules = d.rbac_rules();
    assert_eq!(
        rules
            .get(&("authorization.k8s.io".into(), "subjectaccessreviews".into()))
            .map(|v| v.iter().copied().collect::<Vec<_>>()),
        Some(vec!["create"])
    );
    d.shutdown().await;
}

#[tokio::test]
async fn review_faults_apply_like_any_request() {
    let d = KubeDouble::start().await.unwrap();
    d.accept_token("good", "alice", &[]);
    d.inject(Fault::error(500).resource("tokenreviews").times(1));
    let api: Api<TokenReview> = Api::all(d.client());
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: Some("good".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &tr).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 500),
        other => panic!("expected 500, got {other:?}"),
    }
    assert_eq!(
        token_review(&d, "good").await.status.unwrap().authenticated,
        Some(true)
    );
    d.shutdown().await;
}
