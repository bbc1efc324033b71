//! `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`: the
//! metadata-only forms of objects, lists and watch events (kube's `*_metadata` calls), on reads
//! and on writes, and 406 for forms the double does not serve.
// Test helpers outside #[test] fns panic on purpose: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures::StreamExt;
use kube::Resource;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use serde_json::{Value, json};
use talm_kube_double::KubeDouble;

const META: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
const META_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

/// A raw request with this `Accept`: `(200, body)` for any success (kube's `request_text` does
/// not expose which 2xx it was), else `(code, {reason, message})` of the error.
async fn raw(d: &KubeDouble, mut req: http::Request<Vec<u8>>, accept: &str) -> (u16, Value) {
    req.headers_mut()
        .insert(http::header::ACCEPT, accept.parse().unwrap());
    let client = d.client();
    match client.request_text(req).await {
        Ok(text) => (200, serde_json::from_str(&text).unwrap()),
        Err(kube::Error::Api(s)) => (s.code, json!({"reason": s.reason, "message": s.message})),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn url() -> String {
    ClusterGroupUpgrade::url_path(&(), Some("ztp"))
}

async fn seeded() -> KubeDouble {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ztp");
    for name in ["a", "b"] {
        let mut c = cgu(name, "ztp");
        c.spec.clusters = vec!["spoke1".into()];
        c.metadata.labels = Some([("app".to_string(), name.to_string())].into());
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    d
}

#[tokio::test]
async fn get_and_list_serve_metadata_only() {
    let d = seeded().await;
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ztp");
    let full = api.get("a").await.unwrap();

    let meta = api.get_metadata("a").await.unwrap();
    assert_eq!(meta.metadata, full.metadata);
    let types = meta.types.unwrap();
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("meta.k8s.io/v1", "PartialObjectMetadata")
    );
    let req = kube::core::Request::new(url())
        .get("a", &Default::default())
        .unwrap();
    let (code, body) = raw(&d, req, META).await;
    assert_eq!(code, 200);
    assert!(body.get("spec").is_none(), "{body}");
    assert_eq!(body["metadata"]["labels"]["app"], "a");

    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|m| m.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let req = kube::core::Request::new(url())
        .list(&ListParams::default().labels("app=b"))
        .unwrap();
    let (code, body) = raw(&d, req, META_LIST).await;
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "PartialObjectMetadataList");
    assert_eq!(body["apiVersion"], "meta.k8s.io/v1");
    assert!(body["metadata"]["resourceVersion"].is_string(), "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["kind"], "PartialObjectMetadata");
    assert_eq!(items[0]["metadata"]["name"], "b");
    assert!(items[0].get("spec").is_none());

    // Errors stay Status objects.
    match api.get_metadata("missing").await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        e => panic!("expected 404, got {e}"),
    }
    d.shutdown().await;
}

#[tokio::test]
async fn writes_answer_metadata_only_and_still_store_everything() {
    let d = seeded().await;
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ztp");
    let before = api.get("a").await.unwrap();

    // A status patch guarded by resourceVersion, answered with metadata only (what the hub's
    // operator sends for its status writes).
    let body = json!({
        "metadata": {"resourceVersion": before.metadata.resource_version},
        "status": {"phase": "Progressing"},
    });
    let req = kube::core::Request::new(url())
        .patch_subresource("status", "a", &PatchParams::default(), &Patch::Merge(&body))
        .unwrap();
    let (code, answer) = raw(&d, req, META).await;
    assert_eq!(code, 200);
    assert_eq!(answer["kind"], "PartialObjectMetadata");
    assert!(answer.get("status").is_none(), "{answer}");
    let after = api.get("a").await.unwrap();
    assert_eq!(
        answer["metadata"]["resourceVersion"].as_str(),
        after.metadata.resource_version.as_deref()
    );
    assert_ne!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.status.unwrap().phase.as_deref(), Some("Progressing"));

    // The same request with the old resourceVersion: 409, as a Status.
    let req = kube::core::Request::new(url())
        .patch_subresource("status", "a", &PatchParams::default(), &Patch::Merge(&body))
        .unwrap();
    let (code, err) = raw(&d, req, META).await;
    assert_eq!((code, err["reason"].as_str()), (409, Some("Conflict")));

    // kube's patch_metadata (Accept: PartialObjectMetadata) on the main resource.
    let patched = api
        .patch_metadata(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"x": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["x"], "1");
    assert_eq!(api.get("b").await.unwrap().spec.clusters, ["spoke1"]);

    // Create answers in the same form.
    let req = kube::core::Request::new(url())
        .create(
            &PostParams::default(),
            serde_json::to_vec(&cgu("c", "ztp")).unwrap(),
        )
        .unwrap();
    let (code, created) = raw(&d, req, META).await;
    assert_eq!(code, 200);
    assert_eq!(created["kind"], "PartialObjectMetadata");
    assert_eq!(created["metadata"]["name"], "c");
    d.shutdown().await;
}

#[tokio::test]
async fn watch_events_carry_metadata_only() {
    let d = seeded().await;
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ztp");
    let rv = d.resource_version().to_string();
    let mut events = api
        .watch_metadata(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut c = api.get("a").await.unwrap();
    c.spec.enable = Some(true);
    api.replace("a", &PostParams::default(), &c).await.unwrap();
    let ev: WatchEvent<PartialObjectMeta<ClusterGroupUpgrade>> =
        within(events.next()).await.unwrap().unwrap();
    match ev {
        WatchEvent::Modified(m) => {
            assert_eq!(m.metadata.name.as_deref(), Some("a"));
            assert_eq!(m.metadata.generation, Some(2));
            assert_eq!(m.types.unwrap().kind, "PartialObjectMetadata");
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    d.shutdown().await;
}

#[tokio::test]
async fn unservable_forms_are_406_naming_the_accept_header() {
    let d = seeded().await;
    let get = || {
        kube::core::Request::new(url())
            .get("a", &Default::default())
            .unwrap()
    };
    for accept in [
        "application/json;as=Table;g=meta.k8s.io;v=v1",
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v2",
        "application/vnd.kubernetes.protobuf",
    ] {
        let (code, err) = raw(&d, get(), accept).await;
        assert_eq!(
            (code, err["reason"].as_str()),
            (406, Some("NotAcceptable")),
            "{accept}"
        );
        assert!(err["message"].as_str().unwrap().contains(accept), "{err}");
    }
    // The list form on a single object, and the object form on a list.
    let (code, err) = raw(&d, get(), META_LIST).await;
    assert_eq!(code, 406, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("only a list"),
        "{err}"
    );
    let list = kube::core::Request::new(url())
        .list(&ListParams::default())
        .unwrap();
    let (code, err) = raw(&d, list, META).await;
    assert_eq!(code, 406, "{err}");
    // A later acceptable range is served: here JSON as stored.
    let (code, body) = raw(
        &d,
        get(),
        "application/vnd.kubernetes.protobuf, application/json",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "ClusterGroupUpgrade");
    assert_eq!(body["spec"]["clusters"][0], "spoke1");
    d.shutdown().await;
}
