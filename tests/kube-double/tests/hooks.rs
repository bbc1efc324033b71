//! Test hooks (direct access, request log, faults, registration, shutdown), discovery, and a
//! fleet-sized performance sanity check.
// Test helpers outside #[test] fns panic on purpose: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use talm_kube_double::{Fault, KubeDouble, PatchType, ResourceKind, Verb};

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn direct_access_round_trips_with_http() {
    let d = KubeDouble::start().await.unwrap();
    let mut c = cgu("x", "ns");
    c.status = Some(CguStatus {
        phase: Some("Fixture".into()),
    });
    let stored = d.put(&c).unwrap();
    assert_eq!(stored.status, c.status, "put keeps status (fixture path)");
    assert_eq!(stored.metadata.generation, Some(1));
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    assert_eq!(api.get("x").await.unwrap(), stored);
    // put again with a spec change: generation bumps, status replaced.
    let mut c2 = stored.clone();
    c2.spec.enable = Some(true);
    c2.status = None;
    let s2 = d.put(&c2).unwrap();
    assert_eq!((s2.metadata.generation, s2.status.clone()), (Some(2), None));
    assert_eq!(d.list::<ClusterGroupUpgrade>(None).unwrap().len(), 1);
    assert_eq!(
        d.count("ran.openshift.io/v1alpha1", "ClusterGroupUpgrade"),
        1
    );
    // Untyped.
    let v = d
        .put_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "cm", "namespace": "ns"}, "data": {"a": "b"}}))
        .unwrap();
    assert_eq!(
        v["metadata"]["resourceVersion"],
        d.resource_version().to_string()
    );
    assert_eq!(d.list_values("v1", "ConfigMap", Some("ns")).len(), 1);
    assert!(
        d.get_value("v1", "ConfigMap", Some("other"), "cm")
            .is_none()
    );
    assert_eq!(
        d.put_value(json!({"apiVersion": "x/v1", "kind": "Nope"}))
            .unwrap_err()
            .code,
        404
    );
    // delete honours finalizers, remove does not.
    let mut f = cgu("fin", "ns");
    f.metadata.finalizers = Some(vec!["a/b".into()]);
    d.put(&f).unwrap();
    assert!(d.delete::<ClusterGroupUpgrade>(Some("ns"), "fin").unwrap());
    let pending = d
        .get::<ClusterGroupUpgrade>(Some("ns"), "fin")
        .unwrap()
        .unwrap();
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(d.remove::<ClusterGroupUpgrade>(Some("ns"), "fin").unwrap());
    assert!(!d.remove::<ClusterGroupUpgrade>(Some("ns"), "fin").unwrap());
    assert!(
        d.get::<ClusterGroupUpgrade>(Some("ns"), "fin")
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn request_log_and_rbac_summary() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &cgu("r", "ns"))
        .await
        .unwrap();
    api.list(&ListParams::default().labels("a=b"))
        .await
        .unwrap();
    let st = json!({"status": {"phase": "x"}});
    api.patch_status("r", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    let log = d.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].status, 201);
    assert_eq!(log[1].verb, Verb::List);
    assert!(
        log[1].query.contains("labelSelector=a%3Db"),
        "{}",
        log[1].query
    );
    assert_eq!(
        log[2].path,
        "/apis/ran.openshift.io/v1alpha1/namespaces/ns/clustergroupupgrades/r/status"
    );
    assert_eq!(log[2].patch_type, Some(PatchType::Merge));
    assert_eq!(
        (log[2].namespace.as_deref(), log[2].name.as_deref()),
        (Some("ns"), Some("r"))
    );
    let rules = d.rbac_rules();
    let key = (
        "ran.openshift.io".to_string(),
        "clustergroupupgrades".to_string(),
    );
    assert_eq!(
        rules[&key].iter().copied().collect::<Vec<_>>(),
        ["create", "list"]
    );
    let key = (
        "ran.openshift.io".to_string(),
        "clustergroupupgrades/status".to_string(),
    );
    assert!(rules[&key].contains("patch"));
    d.clear_requests();
    d.set_record_requests(false);
    api.get("r").await.unwrap();
    assert!(d.requests().is_empty());
}

#[tokio::test]
async fn fault_injection() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &cgu("f", "ns"))
        .await
        .unwrap();
    d.inject(
        Fault::error(500)
            .verb(Verb::Patch)
            .subresource("status")
            .times(2),
    );
    d.inject(Fault::error(409).reason("Conflict").name("other"));
    let st = json!({"status": {"phase": "x"}});
    let pp = PatchParams::default();
    assert_eq!(
        code(
            api.patch_status("f", &pp, &Patch::Merge(&st))
                .await
                .unwrap_err()
        ),
        500
    );
    // Main-resource patches are not matched.
    api.patch("f", &pp, &Patch::Merge(&json!({"spec": {"enable": true}})))
        .await
        .unwrap();
    assert_eq!(
        code(
            api.patch_status("f", &pp, &Patch::Merge(&st))
                .await
                .unwrap_err()
        ),
        500
    );
    api.patch_status("f", &pp, &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(code(api.get("other").await.unwrap_err()), 409);
    d.clear_faults();
    assert_eq!(code(api.get("other").await.unwrap_err()), 404);
    assert_eq!(d.count_requests(|r| r.status == 500), 2);
    // Latency.
    d.inject(
        Fault::latency(Duration::from_millis(200))
            .verb(Verb::Get)
            .times(1),
    );
    let t = Instant::now();
    api.get("f").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn custom_kinds_dynamic_objects_and_discovery() {
    let d = KubeDouble::builder()
        .kind(ResourceKind::namespaced("example.com", "v1", "Widget", "widgets").with_status())
        .start()
        .await
        .unwrap();
    d.register(ResourceKind::cluster_scoped(
        "example.com",
        "v2",
        "Gadget",
        "gadgets",
    ));
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let api: Api<DynamicObject> = Api::namespaced_with(d.client(), "ns", &ar);
    let mut w = DynamicObject::new("w", &ar);
    w.data = json!({"spec": {"size": 3}});
    api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(
        d.get_value("example.com/v1", "Widget", Some("ns"), "w")
            .unwrap()["spec"]["size"],
        3
    );

    let client = d.client();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<_> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert!(
        names.contains(&"example.com") && names.contains(&"ran.openshift.io"),
        "{names:?}"
    );
    let core = client.list_core_api_resources("v1").await.unwrap();
    assert!(core.resources.iter().any(|r| r.name == "namespaces/status"));
    let ex = client
        .list_api_group_resources("example.com/v2")
        .await
        .unwrap();
    assert_eq!(ex.resources[0].name, "gadgets");
    assert!(!ex.resources[0].namespaced);
    // kube's Discovery runs against it.
    let disc = kube::Discovery::new(client).run().await.unwrap();
    let (res, caps) = disc
        .resolve_gvk(&GroupVersionKind::gvk(
            "ran.openshift.io",
            "v1alpha1",
            "ClusterGroupUpgrade",
        ))
        .unwrap();
    assert_eq!(res.plural, "clustergroupupgrades");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
}

#[tokio::test]
async fn clones_share_one_server_and_shutdown_is_idempotent() {
    let d = KubeDouble::start().await.unwrap();
    let d2 = d.clone();
    d2.put(&mc("a", &[])).unwrap();
    assert_eq!(d.list::<ManagedCluster>(None).unwrap().len(), 1);
    let cms: Api<ConfigMap> = Api::namespaced(d.client(), "x");
    cms.list(&Default::default()).await.unwrap();
    d.shutdown().await;
    d2.shutdown().await;
    assert!(cms.list(&Default::default()).await.is_err());
}

/// Fleet-sized sanity check (debug build): 10,000 ManagedClusters, 20 policies whose
/// statuses have 10,000 entries.
#[tokio::test]
async fn fleet_scale_sanity() {
    let d = KubeDouble::builder()
        .history_limit(64)
        .record_requests(false)
        .start()
        .await
        .unwrap();
    let t = Instant::now();
    for i in 0..10_000 {
        d.put(&mc(
            &format!("spoke-{i:05}"),
            &[("batch", if i % 10 == 0 { "one" } else { "rest" })],
        ))
        .unwrap();
    }
    let status: Vec<_> = (0..10_000)
        .map(|i| json!({"clustername": format!("spoke-{i:05}"), "clusternamespace": format!("spoke-{i:05}"), "compliant": "NonCompliant"}))
        .collect();
    for p in 0..20 {
        d.put_value(
            json!({"apiVersion": "policy.open-cluster-management.io/v1", "kind": "Policy",
                           "metadata": {"name": format!("p{p}"), "namespace": "ztp-policies"},
                           "spec": {"remediationAction": "inform"},
                           "status": {"status": status}}),
        )
        .unwrap();
    }
    let fill = t.elapsed();
    let api: Api<ManagedCluster> = Api::all(d.client());
    let t = Instant::now();
    let all = api.list(&Default::default()).await.unwrap();
    let list_all = t.elapsed();
    assert_eq!(all.items.len(), 10_000);
    let t = Instant::now();
    let sel = api
        .list(&ListParams::default().labels("batch in (one)"))
        .await
        .unwrap();
    assert_eq!(sel.items.len(), 1_000);
    let list_sel = t.elapsed();
    let t = Instant::now();
    for _ in 0..100 {
        api.get("spoke-05000").await.unwrap();
    }
    let get100 = t.elapsed();
    let policies: Api<DynamicObject> = Api::namespaced_with(
        d.client(),
        "ztp-policies",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("policy.open-cluster-management.io", "v1", "Policy"),
            "policies",
        ),
    );
    let t = Instant::now();
    for i in 0..5 {
        let ops: json_patch::Patch = serde_json::from_value(json!([
            {"op": "replace", "path": format!("/status/status/{i}/compliant"), "value": "Compliant"}
        ]))
        .unwrap();
        policies
            .patch_status(
                &format!("p{i}"),
                &PatchParams::default(),
                &Patch::Json::<()>(ops),
            )
            .await
            .unwrap();
    }
    let patch5 = t.elapsed();
    eprintln!(
        "fill {fill:?}, list 10k {list_all:?}, list 1k by selector {list_sel:?}, 100 gets {get100:?}, 5 status patches of 10k-entry policies {patch5:?}"
    );
    assert!(list_all < Duration::from_secs(10));
}

#[tokio::test]
async fn injected_clock_stamps_timestamps() {
    let fixed: jiff::Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
    let d = KubeDouble::builder()
        .clock(std::sync::Arc::new(move || fixed))
        .start()
        .await
        .unwrap();
    let mut c = cgu("t", "ns");
    c.metadata.finalizers = Some(vec!["x/y".into()]);
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &c).await.unwrap();
    api.delete("t", &Default::default()).await.unwrap();
    let raw = d
        .get_value(
            "ran.openshift.io/v1alpha1",
            "ClusterGroupUpgrade",
            Some("ns"),
            "t",
        )
        .unwrap();
    assert_eq!(raw["metadata"]["creationTimestamp"], "2026-01-02T03:04:05Z");
    assert_eq!(raw["metadata"]["deletionTimestamp"], "2026-01-02T03:04:05Z");
}

/// The Open Cluster Management work kinds talm's ManifestWork rollouts use are pre-registered
/// as OCM serves them: ManifestWork (`v1`) and ManifestWorkReplicaSet (`v1alpha1`) in one
/// group, both namespaced with a status subresource, listed across namespaces and selectable
/// by label (the operator's ManifestWork watch filters on a label's existence).
#[tokio::test]
async fn work_kinds_are_registered_as_ocm_serves_them() {
    let d = KubeDouble::start().await.unwrap();
    let client = d.client();
    let disc = kube::Discovery::new(client.clone()).run().await.unwrap();
    let mut ars = Vec::new();
    for (version, kind, plural) in [
        ("v1", "ManifestWork", "manifestworks"),
        (
            "v1alpha1",
            "ManifestWorkReplicaSet",
            "manifestworkreplicasets",
        ),
    ] {
        let gvk = GroupVersionKind::gvk("work.open-cluster-management.io", version, kind);
        let (res, caps) = disc.resolve_gvk(&gvk).unwrap();
        assert_eq!(res.plural, plural);
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        assert!(
            caps.subresources.iter().any(|(s, _)| s.plural == "status"),
            "{kind} has /status"
        );
        ars.push(res);
    }
    let labelled = "openshift-cluster-group-upgrades/clusterGroupUpgrade";
    for (ar, ns, name) in [
        (&ars[0], "spoke1", "default.t1"),
        (&ars[1], "default", "t1"),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
        let mut o = DynamicObject::new(name, ar);
        o.metadata.labels = Some([(labelled.to_string(), "cgu".to_string())].into());
        o.data = json!({"spec": {"workload": {"manifests": []}},
                        "status": {"conditions": [{"type": "Applied", "status": "True"}]}});
        let created = api.create(&PostParams::default(), &o).await.unwrap();
        assert!(
            created.data.get("status").is_none(),
            "status dropped on create"
        );
        let p = json!({"spec": {"x": 1},
                       "status": {"conditions": [{"type": "Available", "status": "True"}]}});
        let o = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&p))
            .await
            .unwrap();
        assert_eq!(o.data["status"]["conditions"][0]["type"], "Available");
        assert!(
            o.data["spec"].get("x").is_none(),
            "/status writes only status"
        );
        let o = api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"x": 2}})),
            )
            .await
            .unwrap();
        assert_eq!(o.data["status"]["conditions"][0]["type"], "Available");
        let all: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        let sel = all
            .list(&ListParams::default().labels(labelled))
            .await
            .unwrap();
        assert_eq!(sel.items.len(), 1);
        let none = all
            .list(&ListParams::default().labels(&format!("!{labelled}")))
            .await
            .unwrap();
        assert!(none.items.is_empty());
    }
}

/// talm's PrecacheBudget is pre-registered as its CRD declares it (cluster-scoped, with
/// `/status`), and the guarded JSON patch the hub's pre-cache scheduler writes to a SpokeAgent
/// behaves as the apiserver's: a `test` of `/spec/precache/id` that holds applies the rest; one
/// that fails (another task now, or none) is 422 and changes nothing.
#[tokio::test]
async fn precache_budgets_and_the_schedulers_guarded_grant_patch() {
    let d = KubeDouble::start().await.unwrap();
    let client = d.client();
    let disc = kube::Discovery::new(client.clone()).run().await.unwrap();
    let gvk = GroupVersionKind::gvk("talm.dev", "v1alpha1", "PrecacheBudget");
    let (ar, caps) = disc.resolve_gvk(&gvk).unwrap();
    assert_eq!(ar.plural, "precachebudgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    let budgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut b = DynamicObject::new("site-a", &ar);
    b.data = json!({"spec": {"bandwidth": "20Mi", "maxConcurrentClusters": 2},
                    "status": {"active": 9}});
    let created = budgets.create(&PostParams::default(), &b).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status dropped on create"
    );
    let o = budgets
        .patch_status(
            "site-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"active": 2, "queued": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(o.data["status"]["queued"], 2);
    assert_eq!(o.data["spec"]["bandwidth"], "20Mi");

    let sa_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("talm.dev", "v1alpha1", "SpokeAgent"),
        "spokeagents",
    );
    let agents: Api<DynamicObject> = Api::namespaced_with(client, "sno1", &sa_ar);
    let mut a = DynamicObject::new("sno1", &sa_ar).within("sno1");
    a.data = json!({"spec": {"precache": {"id": "t1", "spec": {}, "hold": true,
                    "deadline": "2026-01-01T00:00:00Z"}}});
    agents.create(&PostParams::default(), &a).await.unwrap();
    let grant = |id: &str| -> json_patch::Patch {
        serde_json::from_value(json!([
            {"op": "test", "path": "/spec/precache/id", "value": id},
            {"op": "add", "path": "/spec/precache/hold", "value": false},
            {"op": "add", "path": "/spec/precache/rateLimitBytesPerSecond", "value": 1048576},
        ]))
        .unwrap()
    };
    let o = agents
        .patch(
            "sno1",
            &PatchParams::default(),
            &Patch::Json::<()>(grant("t1")),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["precache"]["hold"], false);
    assert_eq!(
        o.data["spec"]["precache"]["rateLimitBytesPerSecond"],
        1048576
    );
    // The task was replaced meanwhile: the grant for the old one fails its test.
    let e = agents
        .patch(
            "sno1",
            &PatchParams::default(),
            &Patch::Json::<()>(grant("t0")),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), 422);
    // No task at all: the test of a missing path fails too.
    agents
        .patch(
            "sno1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"precache": null}})),
        )
        .await
        .unwrap();
    let e = agents
        .patch(
            "sno1",
            &PatchParams::default(),
            &Patch::Json::<()>(grant("t1")),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), 422);
    let now = agents.get("sno1").await.unwrap();
    assert!(
        now.data["spec"].get("precache").is_none(),
        "nothing changed"
    );
}
