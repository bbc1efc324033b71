//! Patch types and list semantics (selectors, pagination).
// Test helpers outside #[test] fns panic on purpose: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use talm_kube_double::{KubeDouble, PatchType, Verb};

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn merge_patch_rfc7386() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let mut c = cgu("m", "ns");
    c.spec.clusters = vec!["a".into(), "b".into()];
    c.metadata.labels = Some(
        [
            ("x".to_string(), "1".to_string()),
            ("y".to_string(), "2".to_string()),
        ]
        .into(),
    );
    api.create(&PostParams::default(), &c).await.unwrap();
    let p = json!({"metadata": {"labels": {"x": null, "z": "3"}}, "spec": {"clusters": ["c"]}});
    let o = api
        .patch("m", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let labels = o.metadata.labels.unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["y", "z"]);
    assert_eq!(o.spec.clusters, ["c"], "lists are replaced");
    // A resourceVersion in the patch is a precondition.
    let p = json!({"metadata": {"resourceVersion": "1"}, "spec": {"enable": true}});
    assert_eq!(
        code(
            api.patch("m", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .unwrap_err()
        ),
        409
    );
    let p = json!({"metadata": {"resourceVersion": o.metadata.resource_version}, "spec": {"enable": true}});
    api.patch("m", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    // Patching a missing object is 404.
    assert_eq!(
        code(
            api.patch("nope", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .unwrap_err()
        ),
        404
    );
    let last = d.requests().pop().unwrap();
    assert_eq!(
        (last.verb, last.patch_type),
        (Verb::Patch, Some(PatchType::Merge))
    );
}

#[tokio::test]
async fn json_patch_rfc6902() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let mut c = cgu("j", "ns");
    c.spec.clusters = vec!["a".into(), "b".into()];
    api.create(&PostParams::default(), &c).await.unwrap();
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/clusters/0", "value": "a"},
        {"op": "add", "path": "/spec/clusters/-", "value": "c"},
        {"op": "remove", "path": "/spec/clusters/0"},
        {"op": "replace", "path": "/spec/enable", "value": true},
        {"op": "copy", "from": "/spec/clusters/0", "path": "/metadata/labels"},
    ]))
    .unwrap();
    // copy into a non-object labels is invalid → whole patch rejected, nothing changed.
    assert_eq!(
        code(
            api.patch("j", &PatchParams::default(), &Patch::Json::<()>(ops))
                .await
                .unwrap_err()
        ),
        422
    );
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/clusters/0", "value": "a"},
        {"op": "add", "path": "/spec/clusters/-", "value": "c"},
        {"op": "remove", "path": "/spec/clusters/0"},
        {"op": "add", "path": "/spec/enable", "value": true},
        {"op": "move", "from": "/spec/clusters/1", "path": "/spec/clusters/0"},
    ]))
    .unwrap();
    let o = api
        .patch("j", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert_eq!(o.spec.clusters, ["c", "b"]);
    assert_eq!(o.spec.enable, Some(true));
    assert_eq!(o.metadata.generation, Some(2));
    // A failing `test` op is 422 and changes nothing.
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/enable", "value": false}]))
            .unwrap();
    assert_eq!(
        code(
            api.patch("j", &PatchParams::default(), &Patch::Json::<()>(ops))
                .await
                .unwrap_err()
        ),
        422
    );
    // JSON patch on /status.
    let ops: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/status", "value": {"phase": "Done"}}]),
    )
    .unwrap();
    let o = api
        .patch_status("j", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert_eq!(o.status.unwrap().phase.as_deref(), Some("Done"));
    assert_eq!(
        d.requests().last().unwrap().patch_type,
        Some(PatchType::Json)
    );
}

#[tokio::test]
async fn server_side_apply_approximation() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let ssa = PatchParams::apply("talm-hub").force();
    // Apply creates when missing.
    let mut c = cgu("a", "ns");
    c.spec.clusters = vec!["x".into()];
    let o = api.patch("a", &ssa, &Patch::Apply(&c)).await.unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    assert!(o.metadata.uid.is_some());
    // Apply merges into the existing object; a field the same manager stops applying
    // (spec.clusters) is removed.
    let p = json!({"apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
                   "metadata": {"name": "a", "labels": {"l": "v"}}, "spec": {"enable": true}});
    let o = api.patch("a", &ssa, &Patch::Apply(&p)).await.unwrap();
    assert_eq!(
        (o.spec.enable, o.spec.clusters.clone()),
        (Some(true), vec![])
    );
    assert_eq!(o.metadata.generation, Some(2));
    let mf = o.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("talm-hub"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    // A no-op apply keeps the resourceVersion.
    let again = api.patch("a", &ssa, &Patch::Apply(&p)).await.unwrap();
    assert_eq!(again.metadata.resource_version, o.metadata.resource_version);
    // Status apply through the subresource.
    let st = json!({"apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
                    "status": {"phase": "Progressing"}});
    let o = api
        .patch_status("a", &ssa, &Patch::Apply(&st))
        .await
        .unwrap();
    assert_eq!(o.status.unwrap().phase.as_deref(), Some("Progressing"));
    assert_eq!(o.metadata.generation, Some(2));
    // fieldManager is required (422); apiVersion/kind are required (400).
    let no_mgr = PatchParams {
        field_manager: None,
        ..PatchParams::apply("x")
    };
    assert_eq!(
        code(
            api.patch("a", &no_mgr, &Patch::Apply(&p))
                .await
                .unwrap_err()
        ),
        422
    );
    let bare = json!({"spec": {"enable": false}});
    assert_eq!(
        code(
            api.patch("a", &ssa, &Patch::Apply(&bare))
                .await
                .unwrap_err()
        ),
        400
    );
    // Status apply on a missing object is 404.
    assert_eq!(
        code(
            api.patch_status("zz", &ssa, &Patch::Apply(&st))
                .await
                .unwrap_err()
        ),
        404
    );
    let r = d.requests();
    let last_ok = r.iter().rfind(|r| r.status == 200).unwrap();
    assert_eq!(last_ok.patch_type, Some(PatchType::Apply));
    assert_eq!(last_ok.field_manager.as_deref(), Some("talm-hub"));
    assert_eq!(last_ok.rbac_resource(), "clustergroupupgrades/status");
}

#[tokio::test]
async fn strategic_merge_on_builtin_kinds_is_a_merge() {
    let d = KubeDouble::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(d.client(), "ns");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c".into());
    cm.data = Some([("a".to_string(), "1".to_string())].into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let p = json!({"data": {"b": "2"}});
    let o = cms
        .patch("c", &PatchParams::default(), &Patch::Strategic(&p))
        .await
        .unwrap();
    assert_eq!(o.data.unwrap().len(), 2);
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &cgu("x", "ns"))
        .await
        .unwrap();
    assert_eq!(
        code(
            api.patch("x", &PatchParams::default(), &Patch::Strategic(&p))
                .await
                .unwrap_err()
        ),
        415
    );
}

#[tokio::test]
async fn label_selectors_including_set_based() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ManagedCluster> = Api::all(d.client());
    for (n, env, extra) in [
        ("c1", "prod", true),
        ("c2", "dev", false),
        ("c3", "stage", true),
        ("c4", "", false),
    ] {
        let mut labels = vec![];
        if !env.is_empty() {
            labels.push(("env", env));
        }
        if extra {
            labels.push(("ztp-done", ""));
        }
        api.create(&PostParams::default(), &mc(n, &labels))
            .await
            .unwrap();
    }
    let q = |sel: &'static str| {
        let api = api.clone();
        async move {
            api.list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|o| o.metadata.name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(q("env=prod").await, ["c1"]);
    assert_eq!(q("env!=prod").await, ["c2", "c3", "c4"]);
    assert_eq!(q("env in (prod,stage)").await, ["c1", "c3"]);
    assert_eq!(q("env notin (prod,stage)").await, ["c2", "c4"]);
    assert_eq!(q("ztp-done").await, ["c1", "c3"]);
    assert_eq!(q("!ztp-done").await, ["c2", "c4"]);
    assert_eq!(q("env,!ztp-done").await, ["c2"]);
    // Through kube's typed Selector / Expression builder (renders `in (..)` with `+` spaces).
    use kube::core::{Expression, Selector};
    let sel: Selector = [
        Expression::In("env".into(), ["prod".to_string(), "dev".to_string()].into()),
        Expression::DoesNotExist("ztp-done".into()),
    ]
    .into_iter()
    .collect();
    let got: Vec<_> = api
        .list(&ListParams::default().labels_from(&sel))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.metadata.name.unwrap())
        .collect();
    assert_eq!(got, ["c2"]);
    // Field selectors.
    let got = api
        .list(&ListParams::default().fields("metadata.name=c3"))
        .await
        .unwrap();
    assert_eq!(got.items.len(), 1);
    let got = api
        .list(&ListParams::default().fields("metadata.name!=c3"))
        .await
        .unwrap();
    assert_eq!(got.items.len(), 3);
    let cgus: Api<ClusterGroupUpgrade> = Api::all(d.client());
    for ns in ["a", "b"] {
        Api::<ClusterGroupUpgrade>::namespaced(d.client(), ns)
            .create(&PostParams::default(), &cgu("x", ns))
            .await
            .unwrap();
    }
    let got = cgus
        .list(&ListParams::default().fields("metadata.namespace=b"))
        .await
        .unwrap();
    assert_eq!(got.items[0].metadata.namespace.as_deref(), Some("b"));
    assert_eq!(got.items.len(), 1);
}

#[tokio::test]
async fn pagination_with_limit_and_continue() {
    let d = KubeDouble::start().await.unwrap();
    for i in 0..25 {
        d.put(&mc(
            &format!("c{i:02}"),
            &[("even", if i % 2 == 0 { "y" } else { "n" })],
        ))
        .unwrap();
    }
    let api: Api<ManagedCluster> = Api::all(d.client());
    let mut names = vec![];
    let mut lp = ListParams::default().limit(4).labels("even=y");
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        first_rv.get_or_insert(page.metadata.resource_version.clone());
        assert_eq!(Some(page.metadata.resource_version.clone()), first_rv);
        names.extend(page.items.into_iter().map(|o| o.metadata.name.unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => {
                assert!(page.metadata.remaining_item_count.unwrap() > 0);
                lp = lp.continue_token(&c);
            }
            _ => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(names.len(), 13);
    assert!(names.windows(2).all(|w| w[0] < w[1]));
    // Bad continue token: 400.
    assert_eq!(
        code(
            api.list(&ListParams::default().continue_token("garbage"))
                .await
                .unwrap_err()
        ),
        400
    );
}

#[tokio::test]
async fn server_side_apply_field_ownership_and_conflicts() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let body = |extra: serde_json::Value| {
        let mut v = json!({"apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
                           "metadata": {"name": "o"}});
        json_patch::merge(&mut v, &extra);
        v
    };
    let a = PatchParams::apply("a");
    let b = PatchParams::apply("b");
    let a_cfg =
        body(json!({"metadata": {"labels": {"x": "1", "y": "2"}}, "spec": {"enable": true}}));
    api.patch("o", &a, &Patch::Apply(&a_cfg)).await.unwrap();
    // b co-owns label y (same value: no conflict) and adds z.
    let b_cfg = body(json!({"metadata": {"labels": {"y": "2", "z": "3"}}}));
    api.patch("o", &b, &Patch::Apply(&b_cfg)).await.unwrap();
    // b changing a's field without force: 409; with force: applied.
    let b_cfg2 =
        body(json!({"metadata": {"labels": {"y": "2", "z": "3"}}, "spec": {"enable": false}}));
    assert_eq!(
        code(
            api.patch("o", &b, &Patch::Apply(&b_cfg2))
                .await
                .unwrap_err()
        ),
        409
    );
    let o = api
        .patch("o", &b.clone().force(), &Patch::Apply(&b_cfg2))
        .await
        .unwrap();
    assert_eq!(o.spec.enable, Some(false));
    // a stops applying labels x and y: x (a only) goes, y (shared with b) stays.
    let a_cfg2 = body(json!({"spec": {"enable": false}}));
    let o = api
        .patch("o", &a.clone().force(), &Patch::Apply(&a_cfg2))
        .await
        .unwrap();
    let labels = o.metadata.labels.unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["y", "z"]);
    // Fields written by other operations are not owned by apply managers.
    let merge = json!({"metadata": {"annotations": {"kept": "yes"}}});
    api.patch("o", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    let o = api
        .patch("o", &a, &Patch::Apply(&body(json!({}))))
        .await
        .unwrap();
    assert_eq!(o.metadata.annotations.unwrap()["kept"], "yes");
    assert_eq!(o.spec.enable, Some(false), "b still owns spec.enable");
    // Status map entries dropped by the status manager are removed.
    let st = |v: serde_json::Value| body(json!({"status": v}));
    let s = PatchParams::apply("status-writer").force();
    let o = api
        .patch_status(
            "o",
            &s,
            &Patch::Apply(&st(json!({"phase": "P", "extra": {"k": 1}}))),
        )
        .await
        .unwrap();
    let raw = d
        .get_value(
            "ran.openshift.io/v1alpha1",
            "ClusterGroupUpgrade",
            Some("ns"),
            "o",
        )
        .unwrap();
    assert_eq!(raw["status"]["extra"]["k"], 1);
    assert_eq!(o.status.unwrap().phase.as_deref(), Some("P"));
    api.patch_status("o", &s, &Patch::Apply(&st(json!({"phase": "P"}))))
        .await
        .unwrap();
    let raw = d
        .get_value(
            "ran.openshift.io/v1alpha1",
            "ClusterGroupUpgrade",
            Some("ns"),
            "o",
        )
        .unwrap();
    assert_eq!(raw["status"], json!({"phase": "P"}));
    let status_entry = raw["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "status-writer")
        .unwrap()
        .clone();
    assert_eq!(status_entry["subresource"], "status");
    assert_eq!(
        status_entry["fieldsV1"],
        json!({"f:status": {"f:phase": {}}})
    );
}
