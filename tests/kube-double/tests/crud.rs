//! CRUD, optimistic concurrency, generation, finalizers, status subresource, errors.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use talm_kube_double::{KubeDouble, Verb};

/// (code, reason) of an API error.
fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn create_get_list_replace_delete() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ztp");
    let created = api
        .create(&PostParams::default(), &cgu("a", "ztp"))
        .await
        .unwrap();
    let md = &created.metadata;
    assert!(md.uid.is_some());
    assert!(md.creation_timestamp.is_some());
    assert_eq!(md.generation, Some(1));
    let rv1: u64 = md.resource_version.as_deref().unwrap().parse().unwrap();

    let e = api_err(
        api.create(&PostParams::default(), &cgu("a", "ztp"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e, (409, "AlreadyExists".to_string()));

    let got = api.get("a").await.unwrap();
    assert_eq!(got, created);
    let e = api_err(api.get("missing").await.unwrap_err());
    assert_eq!(e, (404, "NotFound".to_string()));
    assert!(api.get_opt("missing").await.unwrap().is_none());

    api.create(&PostParams::default(), &cgu("b", "ztp"))
        .await
        .unwrap();
    Api::<ClusterGroupUpgrade>::namespaced(d.client(), "other")
        .create(&PostParams::default(), &cgu("c", "other"))
        .await
        .unwrap();
    let names = |l: kube::core::ObjectList<ClusterGroupUpgrade>| {
        l.items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(api.list(&Default::default()).await.unwrap()),
        ["a", "b"]
    );
    let all: Api<ClusterGroupUpgrade> = Api::all(d.client());
    let list = all.list(&Default::default()).await.unwrap();
    let list_rv: u64 = list
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(list_rv > rv1);
    assert_eq!(names(list), ["c", "a", "b"].map(String::from));

    // Replace with the current resourceVersion succeeds, a stale one is a 409 Conflict.
    let mut cur = api.get("a").await.unwrap();
    cur.spec.enable = Some(true);
    let replaced = api
        .replace("a", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    let e = api_err(
        api.replace("a", &PostParams::default(), &cur)
            .await
            .unwrap_err(),
    );
    assert_eq!(e, (409, "Conflict".to_string()));
    // PUT without resourceVersion on a custom kind: 422.
    let mut norv = replaced.clone();
    norv.metadata.resource_version = None;
    let e = api_err(
        api.replace("a", &PostParams::default(), &norv)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 422);

    let res = api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(
        res.is_right(),
        "no finalizers: deleted at once, Status returned"
    );
    assert!(api.get_opt("a").await.unwrap().is_none());
    let e = api_err(api.delete("a", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(e.0, 404);

    assert!(
        d.count_requests(|r| r.verb == Verb::Create && r.resource == "clustergroupupgrades") >= 4
    );
}
