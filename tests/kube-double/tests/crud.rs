//! CRUD, optimistic concurrency, generation, finalizers, status subresource, errors.
// Test helpers outside #[test] fns panic on purpose: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

#[tokio::test]
async fn generation_bumps_on_spec_changes_only() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &cgu("g", "ns"))
        .await
        .unwrap();
    let pp = PatchParams::default();
    let labels = json!({"metadata": {"labels": {"a": "b"}}});
    let o = api.patch("g", &pp, &Patch::Merge(&labels)).await.unwrap();
    assert_eq!(o.metadata.generation, Some(1), "metadata change: no bump");
    let st = json!({"status": {"phase": "Progressing"}});
    let o = api
        .patch_status("g", &pp, &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1), "status change: no bump");
    let spec = json!({"spec": {"enable": true}});
    let o = api.patch("g", &pp, &Patch::Merge(&spec)).await.unwrap();
    assert_eq!(o.metadata.generation, Some(2));
    let rv = o.metadata.resource_version.clone();
    // A no-op write keeps the resourceVersion.
    let o = api.patch("g", &pp, &Patch::Merge(&spec)).await.unwrap();
    assert_eq!(
        (o.metadata.generation, o.metadata.resource_version),
        (Some(2), rv)
    );
    // Server-owned fields cannot be overwritten.
    let evil = json!({"metadata": {"uid": null, "generation": 99, "creationTimestamp": null}});
    let o = api.patch("g", &pp, &Patch::Merge(&evil)).await.unwrap();
    assert_eq!(o.metadata.generation, Some(2));
    assert!(o.metadata.uid.is_some() && o.metadata.creation_timestamp.is_some());
}

#[tokio::test]
async fn status_subresource_isolation() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let mut c = cgu("s", "ns");
    c.status = Some(CguStatus {
        phase: Some("ignored-on-create".into()),
    });
    let o = api.create(&PostParams::default(), &c).await.unwrap();
    assert_eq!(o.status, None, "status is dropped on create");

    // Main-resource writes ignore status.
    let p = json!({"spec": {"enable": true}, "status": {"phase": "X"}});
    let o = api
        .patch("s", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!((o.spec.enable, o.status), (Some(true), None));

    // Status writes change only status.
    let p = json!({"spec": {"enable": false}, "status": {"phase": "Y"}});
    let o = api
        .patch_status("s", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(o.spec.enable, Some(true));
    assert_eq!(o.status.as_ref().unwrap().phase.as_deref(), Some("Y"));

    // PUT /status and PUT main.
    let mut cur = o.clone();
    cur.spec.enable = Some(false);
    cur.status = Some(CguStatus {
        phase: Some("Z".into()),
    });
    let o = api
        .replace_status("s", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(o.spec.enable, Some(true));
    assert_eq!(o.status.as_ref().unwrap().phase.as_deref(), Some("Z"));
    let mut cur = o.clone();
    cur.spec.enable = Some(false);
    cur.status = None;
    let o = api
        .replace("s", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(o.spec.enable, Some(false));
    assert_eq!(o.status.as_ref().unwrap().phase.as_deref(), Some("Z"));

    // Kinds without the subresource have no /status.
    let cms: Api<ConfigMap> = Api::namespaced(d.client(), "ns");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("cm".into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let e = api_err(cms.get_status("cm").await.unwrap_err());
    assert_eq!(e.0, 404);
}

#[tokio::test]
async fn finalizers_and_deletion_timestamp() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let mut c = cgu("f", "ns");
    c.metadata.finalizers = Some(vec!["ran.openshift.io/cleanup".into()]);
    api.create(&PostParams::default(), &c).await.unwrap();
    let res = api.delete("f", &DeleteParams::default()).await.unwrap();
    let pending = res.left().expect("finalizer keeps the object");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.generation, Some(2));
    // Deleting again changes nothing; clients cannot clear deletionTimestamp.
    let again = api
        .delete("f", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        pending.metadata.resource_version
    );
    let p = json!({"metadata": {"deletionTimestamp": null}, "spec": {"enable": true}});
    let o = api
        .patch("f", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert!(o.metadata.deletion_timestamp.is_some());
    // Removing the last finalizer removes the object.
    let p = json!({"metadata": {"finalizers": null}});
    api.patch("f", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert!(api.get_opt("f").await.unwrap().is_none());
    assert!(
        d.get::<ClusterGroupUpgrade>(Some("ns"), "f")
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn delete_preconditions_and_collection() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let o = api
        .create(&PostParams::default(), &cgu("p", "ns"))
        .await
        .unwrap();
    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_err(api.delete("p", &stale).await.unwrap_err()).0, 409);
    let ok = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: o.metadata.uid.clone(),
            resource_version: o.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    api.delete("p", &ok).await.unwrap();
    for n in ["x1", "x2", "y1"] {
        let mut c = cgu(n, "ns");
        c.metadata.labels = Some([("grp".to_string(), n[..1].to_string())].into());
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    let lp = kube::api::ListParams::default().labels("grp=x");
    api.delete_collection(&DeleteParams::default(), &lp)
        .await
        .unwrap();
    let left: Vec<_> = d
        .list::<ClusterGroupUpgrade>(Some("ns"))
        .unwrap()
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["y1"]);
}

#[tokio::test]
async fn cluster_scoped_and_builtin_kinds() {
    let d = KubeDouble::start().await.unwrap();
    let mcs: Api<ManagedCluster> = Api::all(d.client());
    mcs.create(&PostParams::default(), &mc("spoke1", &[]))
        .await
        .unwrap();
    let got = mcs.get("spoke1").await.unwrap();
    assert_eq!(got.metadata.namespace, None);
    // Namespaces get phase Active; builtin PUT without resourceVersion is unconditional.
    let nss: Api<Namespace> = Api::all(d.client());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("spoke1".into());
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(d.client(), "spoke1");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c".into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cm.data = Some([("k".to_string(), "v".to_string())].into());
    let o = cms.replace("c", &PostParams::default(), &cm).await.unwrap();
    assert_eq!(o.data.unwrap()["k"], "v");
    // Unregistered resources and wrong scopes are 404.
    let e = api_err(
        d.client()
            .request::<serde_json::Value>(
                http::Request::get("/apis/apps/v1/namespaces/x/deployments")
                    .body(vec![])
                    .unwrap(),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 404);
    let e = api_err(
        d.client()
            .request::<serde_json::Value>(
                http::Request::get("/apis/cluster.open-cluster-management.io/v1/namespaces/x/managedclusters/spoke1")
                    .body(vec![])
                    .unwrap(),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.0, 404);
}

#[tokio::test]
async fn malformed_requests_get_status_errors() {
    let d = KubeDouble::builder()
        .require_namespaces(true)
        .start()
        .await
        .unwrap();
    let client = d.client();
    let raw = |method: &str, path: &str, ct: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let cgus = "/apis/ran.openshift.io/v1alpha1/namespaces/ns/clustergroupupgrades";
    let code = |r: Result<serde_json::Value, kube::Error>| api_err(r.unwrap_err());
    // Namespace missing (require_namespaces).
    let body = r#"{"apiVersion":"ran.openshift.io/v1alpha1","kind":"ClusterGroupUpgrade","metadata":{"name":"a"}}"#;
    assert_eq!(
        code(
            client
                .request(raw("POST", cgus, "application/json", body))
                .await
        )
        .0,
        404
    );
    d.put(&{
        let mut n = Namespace::default();
        n.metadata.name = Some("ns".into());
        n
    })
    .unwrap();
    assert!(
        client
            .request::<serde_json::Value>(raw("POST", cgus, "application/json", body))
            .await
            .is_ok()
    );
    // Undecodable body: 400; invalid object: 422; kind mismatch: 400.
    assert_eq!(
        code(
            client
                .request(raw("POST", cgus, "application/json", "{nope"))
                .await
        )
        .0,
        400
    );
    let bad_name = r#"{"apiVersion":"ran.openshift.io/v1alpha1","kind":"ClusterGroupUpgrade","metadata":{"name":"Bad_Name"}}"#;
    assert_eq!(
        code(
            client
                .request(raw("POST", cgus, "application/json", bad_name))
                .await
        ),
        (422, "Invalid".into())
    );
    let bad_label = r#"{"apiVersion":"ran.openshift.io/v1alpha1","kind":"ClusterGroupUpgrade","metadata":{"name":"b","labels":{"k":"-x"}}}"#;
    assert_eq!(
        code(
            client
                .request(raw("POST", cgus, "application/json", bad_label))
                .await
        )
        .0,
        422
    );
    let no_name =
        r#"{"apiVersion":"ran.openshift.io/v1alpha1","kind":"ClusterGroupUpgrade","metadata":{}}"#;
    assert_eq!(
        code(
            client
                .request(raw("POST", cgus, "application/json", no_name))
                .await
        )
        .0,
        422
    );
    let wrong_kind = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#;
    assert_eq!(
        code(
            client
                .request(raw("POST", cgus, "application/json", wrong_kind))
                .await
        )
        .0,
        400
    );
    // Unknown patch type: 415; strategic merge on a custom kind: 415.
    let a = format!("{cgus}/a");
    assert_eq!(
        code(client.request(raw("PATCH", &a, "text/plain", "{}")).await).0,
        415
    );
    assert_eq!(
        code(
            client
                .request(raw(
                    "PATCH",
                    &a,
                    "application/strategic-merge-patch+json",
                    "{}"
                ))
                .await
        )
        .0,
        415
    );
    // Bad selectors: 400.
    let sel = format!("{cgus}?labelSelector=a%20in%20b");
    assert_eq!(code(client.request(raw("GET", &sel, "", "")).await).0, 400);
    let sel = format!("{cgus}?fieldSelector=spec.x%3D1");
    assert_eq!(code(client.request(raw("GET", &sel, "", "")).await).0, 400);
    // Method not allowed.
    assert_eq!(
        code(
            client
                .request(raw("PUT", cgus, "application/json", "{}"))
                .await
        )
        .0,
        405
    );
    // Status objects have the apiserver shape.
    let resp = client
        .send(raw("GET", &format!("{cgus}/zzz"), "", "").map(kube::client::Body::from))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = kube::client::Body::collect_bytes(resp.into_body())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["reason"], "NotFound");
    assert_eq!(v["code"], 404);
    assert_eq!(
        v["message"],
        "clustergroupupgrades.ran.openshift.io \"zzz\" not found"
    );
}

#[tokio::test]
async fn generate_name_and_dry_run() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let mut c = cgu("", "ns");
    c.metadata.name = None;
    c.metadata.generate_name = Some("cgu-".into());
    let a = api.create(&PostParams::default(), &c).await.unwrap();
    let b = api.create(&PostParams::default(), &c).await.unwrap();
    let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(
        a.starts_with("cgu-") && b.starts_with("cgu-") && a != b,
        "{a} {b}"
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&dry, &cgu("dry", "ns")).await.unwrap();
    assert!(api.get_opt("dry").await.unwrap().is_none());
}

#[tokio::test]
async fn garbage_requests_get_status_answers_not_panics() {
    let d = KubeDouble::start().await.unwrap();
    d.put(&cgu("a", "ns")).unwrap();
    let client = d.client();
    let cgu_a = "/apis/ran.openshift.io/v1alpha1/namespaces/ns/clustergroupupgrades/a";
    let cases: &[(&str, &str, &str, &str)] = &[
        ("GET", "/", "", ""),
        ("GET", "/apis/nope", "", ""),
        ("GET", "/apis/nope/v1", "", ""),
        ("GET", "/api/v1/namespaces/x/status", "", ""),
        ("GET", "/api/v1/namespaces/x/finalize", "", ""),
        ("GET", "/api/v1/namespaces/ns/configmaps/a/b/c/d", "", ""),
        ("POST", "/apis", "application/json", "{}"),
        (
            "GET",
            "/apis/ran.openshift.io/v1alpha1/clustergroupupgrades?watch=true&resourceVersion=abc",
            "",
            "",
        ),
        (
            "GET",
            "/apis/ran.openshift.io/v1alpha1/clustergroupupgrades?limit=-1&continue=1:zz:zz",
            "",
            "",
        ),
        ("PATCH", cgu_a, "application/merge-patch+json", "[]"),
        ("PATCH", cgu_a, "application/merge-patch+json", "5"),
        (
            "PATCH",
            cgu_a,
            "application/merge-patch+json",
            r#"{"metadata": 5}"#,
        ),
        (
            "PATCH",
            cgu_a,
            "application/merge-patch+json",
            r#"{"metadata": {"labels": {"a": 1}}}"#,
        ),
        (
            "PATCH",
            cgu_a,
            "application/merge-patch+json",
            r#"{"metadata": {"name": "other"}}"#,
        ),
        (
            "PATCH",
            cgu_a,
            "application/merge-patch+json",
            r#"{"kind": "Other"}"#,
        ),
        (
            "PATCH",
            cgu_a,
            "application/json-patch+json",
            r#"[{"op": "replace", "path": "", "value": 1}]"#,
        ),
        (
            "PATCH",
            cgu_a,
            "application/json-patch+json",
            r#"[{"op": "bogus"}]"#,
        ),
        (
            "PATCH",
            cgu_a,
            "application/json-patch+json",
            r#"[{"op": "remove", "path": "/metadata"}]"#,
        ),
        (
            "PATCH",
            cgu_a,
            "application/apply-patch+yaml",
            "\"just a string\"",
        ),
        (
            "PATCH",
            &format!("{cgu_a}?fieldManager=m"),
            "application/apply-patch+yaml",
            "kind: [unclosed",
        ),
        (
            "PATCH",
            &format!("{cgu_a}?fieldManager=m"),
            "application/apply-patch+yaml",
            "apiVersion: ran.openshift.io/v1alpha1\nkind: ClusterGroupUpgrade\nspec:\n  enable: true\n",
        ),
        (
            "PUT",
            cgu_a,
            "application/json",
            r#"{"apiVersion":"ran.openshift.io/v1alpha1","kind":"ClusterGroupUpgrade","metadata":{"name":"b","resourceVersion":"1"}}"#,
        ),
        ("PUT", cgu_a, "application/json", "null"),
        ("DELETE", cgu_a, "application/json", "{not json"),
        (
            "DELETE",
            "/apis/ran.openshift.io/v1alpha1/namespaces/ns/clustergroupupgrades?labelSelector=%21",
            "",
            "",
        ),
        (
            "POST",
            "/apis/ran.openshift.io/v1alpha1/clustergroupupgrades",
            "application/json",
            r#"{"apiVersion":"ran.openshift.io/v1alpha1","kind":"ClusterGroupUpgrade","metadata":{"name":"n"}}"#,
        ),
        (
            "POST",
            "/api/v1/namespaces",
            "application/json",
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"has.dot"}}"#,
        ),
    ];
    for (method, path, ct, body) in cases {
        let req = http::Request::builder()
            .method(*method)
            .uri(*path)
            .header("content-type", *ct)
            .body(kube::client::Body::from(body.as_bytes().to_vec()))
            .unwrap();
        let resp = client
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = kube::client::Body::collect_bytes(resp.into_body())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path} {body}: non-JSON answer: {e}"));
        assert!(status < 500, "{method} {path} {body}: {status} {v}");
        if status >= 400 {
            assert_eq!(v["kind"], "Status", "{method} {path} {body}");
        }
    }
    // The server is still healthy and the object intact (only the YAML apply changed it).
    let o = Api::<ClusterGroupUpgrade>::namespaced(d.client(), "ns")
        .get("a")
        .await
        .unwrap();
    assert_eq!(o.spec.enable, Some(true));
}
