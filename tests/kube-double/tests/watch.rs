//! Watch protocol, bookmarks, 410 Expired, and kube-runtime watcher/reflector/Controller.
// Test helpers outside #[test] fns panic on purpose: a panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{Controller, WatchStreamExt, controller::Action, reflector, watcher};
use serde_json::json;
use talm_kube_double::{Fault, KubeDouble, Verb};

/// Next event, bookmarks included.
async fn next_raw<S>(s: &mut S) -> WatchEvent<ClusterGroupUpgrade>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ClusterGroupUpgrade>>> + Unpin,
{
    within(s.next())
        .await
        .expect("stream ended")
        .expect("watch error")
}

/// Next non-bookmark event.
async fn next_event<S>(s: &mut S) -> WatchEvent<ClusterGroupUpgrade>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ClusterGroupUpgrade>>> + Unpin,
{
    loop {
        match next_raw(s).await {
            WatchEvent::Bookmark(_) => continue,
            other => return other,
        }
    }
}

fn summary(e: &WatchEvent<ClusterGroupUpgrade>) -> (String, String) {
    match e {
        WatchEvent::Added(o) => ("ADDED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Modified(o) => ("MODIFIED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(o) => ("DELETED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(b) => ("BOOKMARK".into(), b.metadata.resource_version.clone()),
        WatchEvent::Error(e) => ("ERROR".into(), e.code.to_string()),
    }
}

#[tokio::test]
async fn watch_event_sequence_from_resource_version() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &cgu("before", "ns"))
        .await
        .unwrap();
    let rv = api
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut s = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cgu("w", "ns"))
        .await
        .unwrap();
    // Other namespace / kind: not seen.
    Api::<ClusterGroupUpgrade>::namespaced(d.client(), "other")
        .create(&PostParams::default(), &cgu("o", "other"))
        .await
        .unwrap();
    let p = json!({"spec": {"enable": true}});
    api.patch("w", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let got: Vec<_> = [
        next_event(&mut s).await,
        next_event(&mut s).await,
        next_event(&mut s).await,
    ]
    .iter()
    .map(summary)
    .collect();
    assert_eq!(
        got,
        [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Watching from "0" replays current state as ADDED.
    let mut s0 = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(
        summary(&next_event(&mut s0).await),
        ("ADDED".into(), "before".into())
    );
    // DELETED carries the deletion's resourceVersion (greater than the last MODIFIED).
    assert_eq!(d.count_requests(|r| r.verb == Verb::Watch), 2);
}

#[tokio::test]
async fn selector_transitions_and_all_namespaces_watch() {
    let d = KubeDouble::start().await.unwrap();
    let all: Api<ClusterGroupUpgrade> = Api::all(d.client());
    let wp = WatchParams::default().labels("sel=yes");
    let mut s = all.watch(&wp, "0").await.unwrap().boxed();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns1");
    api.create(&PostParams::default(), &cgu("t", "ns1"))
        .await
        .unwrap();
    let on = json!({"metadata": {"labels": {"sel": "yes"}}});
    let off = json!({"metadata": {"labels": {"sel": "no"}}});
    api.patch("t", &PatchParams::default(), &Patch::Merge(&on))
        .await
        .unwrap();
    api.patch("t", &PatchParams::default(), &Patch::Merge(&on))
        .await
        .unwrap(); // no-op
    let spec = json!({"spec": {"enable": true}});
    api.patch("t", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    api.patch("t", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();
    let api2: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns2");
    let mut c = cgu("u", "ns2");
    c.metadata.labels = Some([("sel".to_string(), "yes".to_string())].into());
    api2.create(&PostParams::default(), &c).await.unwrap();
    let mut got = vec![];
    for _ in 0..4 {
        got.push(summary(&next_event(&mut s).await));
    }
    assert_eq!(
        got,
        [
            ("ADDED", "t"),
            ("MODIFIED", "t"),
            ("DELETED", "t"),
            ("ADDED", "u")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

#[tokio::test]
async fn bookmarks_and_initial_events_end() {
    let d = KubeDouble::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &cgu("a", "ns"))
        .await
        .unwrap();
    let rv = d.resource_version().to_string();
    let wp = WatchParams {
        bookmarks: true,
        ..Default::default()
    };
    let mut s = api.watch(&wp, &rv).await.unwrap().boxed();
    match next_raw(&mut s).await {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // Streaming list: ADDED for the current state, then the initial-events-end bookmark.
    let wp = WatchParams::streaming_lists();
    let mut s = api.watch(&wp, "0").await.unwrap().boxed();
    assert_eq!(
        summary(&next_raw(&mut s).await),
        ("ADDED".into(), "a".into())
    );
    match next_raw(&mut s).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.annotations["k8s.io/initial-events-end"], "true");
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
    // No bookmarks unless asked for: timeoutSeconds ends the stream quietly.
    let wp = WatchParams::default().timeout(1).disable_bookmarks();
    let mut s = api
        .watch(&wp, &d.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    assert!(
        within(s.next()).await.is_none(),
        "stream ends after timeoutSeconds"
    );
}

/// Creates CGU `ns/a` and patches it `patches` times; returns the resourceVersion right after
/// the create.
async fn create_then_patch(
    d: &KubeDouble,
    api: &Api<ClusterGroupUpgrade>,
    patches: usize,
) -> String {
    api.create(&PostParams::default(), &cgu("a", "ns"))
        .await
        .unwrap();
    let old = d.resource_version().to_string();
    for i in 0..patches {
        let p = json!({"spec": {"clusters": [format!("c{i}")]}});
        api.patch("a", &PatchParams::default(), &Patch::Merge(&p))
            .await
            .unwrap();
    }
    old
}

/// The first event of a watch of `api` from `rv`.
async fn first_event_from(api: &Api<ClusterGroupUpgrade>, rv: &str) -> (String, String) {
    let mut s = api
        .watch(&WatchParams::default(), rv)
        .await
        .unwrap()
        .boxed();
    summary(&next_event(&mut s).await)
}

#[tokio::test]
async fn too_old_resource_version_is_410_expired() {
    let d = KubeDouble::builder()
        .history_limit(3)
        .start()
        .await
        .unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let old = create_then_patch(&d, &api, 5).await;
    let mut s = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut s).await {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(within(s.next()).await.is_none());
    // Within the history it still works; compact_history() forgets everything.
    let recent = (d.resource_version() - 1).to_string();
    let mut s = api
        .watch(&WatchParams::default(), &recent)
        .await
        .unwrap()
        .boxed();
    assert_eq!(summary(&next_event(&mut s).await).0, "MODIFIED");
    d.compact_history();
    let mut s = api
        .watch(&WatchParams::default(), &recent)
        .await
        .unwrap()
        .boxed();
    assert_eq!(
        summary(&next_event(&mut s).await),
        ("ERROR".into(), "410".into())
    );
}

/// A kind's own history limit overrides the double's: the CGU history keeps 2 events while
/// the default (100) would keep all of them.
#[tokio::test]
async fn a_kinds_own_history_limit_wins() {
    let cgus = talm_kube_double::default_kinds()
        .into_iter()
        .find(|k| k.plural == "clustergroupupgrades")
        .unwrap()
        .with_history_limit(2);
    let d = KubeDouble::builder()
        .history_limit(100)
        .kind(cgus)
        .start()
        .await
        .unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let old = create_then_patch(&d, &api, 3).await;
    assert_eq!(
        first_event_from(&api, &old).await,
        ("ERROR".into(), "410".into())
    );
    let recent = (d.resource_version() - 2).to_string();
    assert_eq!(first_event_from(&api, &recent).await.0, "MODIFIED");
}

#[tokio::test]
async fn watcher_recovers_from_410_by_relisting() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    api.create(&PostParams::default(), &cgu("a", "ns"))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<ClusterGroupUpgrade>();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(o) = ev {
                seen2.lock().unwrap().push(o.metadata.name.unwrap());
            }
        }
    });
    within(reader.wait_until_ready()).await.unwrap();
    // Let the watcher start its watch.
    within(async {
        while d.count_requests(|r| r.verb == Verb::Watch) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Hold the watch off, end it, change things, compact: the resumed watch gets 410.
    d.inject(Fault::error(503).verb(Verb::Watch));
    d.close_watches();
    within(async {
        while d.count_requests(|r| r.verb == Verb::Watch && r.status == 503) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    d.put(&cgu("b", "ns")).unwrap();
    d.remove::<ClusterGroupUpgrade>(Some("ns"), "a").unwrap();
    d.compact_history();
    let lists_before = d.count_requests(|r| r.verb == Verb::List);
    d.clear_faults();
    within(async {
        loop {
            let names: Vec<_> = reader
                .state()
                .iter()
                .map(|o| o.metadata.name.clone().unwrap())
                .collect();
            if names == ["b"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        d.count_requests(|r| r.verb == Verb::List) > lists_before,
        "re-listed"
    );
    task.abort();
}

#[tokio::test]
async fn reflector_and_controller_see_objects_created_after_start() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::all(d.client());
    let client = d.client();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let ctx = Arc::new((client.clone(), tx));
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(
            |obj: Arc<ClusterGroupUpgrade>, ctx: Arc<(kube::Client, tokio::sync::mpsc::UnboundedSender<String>)>| async move {
                let ns = obj.metadata.namespace.clone().unwrap();
                let name = obj.metadata.name.clone().unwrap();
                let api: Api<ClusterGroupUpgrade> = Api::namespaced(ctx.0.clone(), &ns);
                if obj.status.is_none() {
                    let st = json!({"apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
                                    "status": {"phase": "Reconciled"}});
                    api.patch_status(&name, &PatchParams::apply("test").force(), &Patch::Apply(&st)).await?;
                }
                let _ = ctx.1.send(name);
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_obj, _err: &kube::Error, _ctx| Action::requeue(Duration::from_millis(100)),
            ctx,
        )
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Api::<ClusterGroupUpgrade>::namespaced(d.client(), "ns")
        .create(&PostParams::default(), &cgu("late", "ns"))
        .await
        .unwrap();
    assert_eq!(within(rx.recv()).await.unwrap(), "late");
    let st = within(kube::runtime::wait::await_condition(
        Api::namespaced(d.client(), "ns"),
        "late",
        |o: Option<&ClusterGroupUpgrade>| {
            o.and_then(|o| o.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Reconciled")
        },
    ))
    .await;
    assert!(st.unwrap().is_some());
    // A direct fixture write is observed too.
    d.put(&cgu("fixture", "ns")).unwrap();
    within(async { while rx.recv().await.unwrap() != "fixture" {} }).await;
    handle.abort();
    d.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_watches_and_refuses_connections() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(d.client(), "ns");
    let mut s = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    d.shutdown().await;
    let end = within(s.try_next()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert!(api.list(&Default::default()).await.is_err());
}

#[tokio::test]
async fn streaming_list_watcher_and_field_selected_cluster_scoped_watch() {
    let d = KubeDouble::start().await.unwrap();
    d.put(&mc("a", &[])).unwrap();
    d.put(&mc("b", &[])).unwrap();
    let api: Api<ManagedCluster> = Api::all(d.client());
    // kube's streaming-list watcher: initial ADDED + initial-events-end bookmark, then live.
    let cfg = watcher::Config::default()
        .streaming_lists()
        .fields("metadata.name=b");
    let mut s = watcher(api.clone(), cfg).boxed();
    let mut init = vec![];
    loop {
        match within(s.next()).await.unwrap().unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => init.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(init, ["b"]);
    assert_eq!(
        d.count_requests(|r| r.verb == Verb::List),
        0,
        "streaming lists do not list"
    );
    d.put(&mc("c", &[])).unwrap(); // filtered out by the field selector
    let mut b = mc("b", &[]);
    b.spec.hub_accepts_client = true;
    d.put(&b).unwrap();
    match within(s.next()).await.unwrap().unwrap() {
        watcher::Event::Apply(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("b"));
            assert!(o.spec.hub_accepts_client);
        }
        other => panic!("unexpected {other:?}"),
    }
    d.remove::<ManagedCluster>(None, "b").unwrap();
    match within(s.next()).await.unwrap().unwrap() {
        watcher::Event::Delete(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("unexpected {other:?}"),
    }
}
