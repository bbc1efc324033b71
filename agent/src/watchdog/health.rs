//! The watchdog's health checks, as the node sees them through its own API server (the
//! node's kubeconfig, as the InstallPlan task uses): `/readyz`, the ClusterVersion, every
//! ClusterOperator and every Node. Each check returns why the node is not yet healthy (empty:
//! healthy); the evaluation of the fetched objects is pure ([`cluster_version`],
//! [`cluster_operators`], [`nodes`]) so the rules are tested on their own.
//!
//! The rules (issue 18 §2):
//! - `/readyz` answers 200.
//! - ClusterVersion `version`: `Available=True` and `Progressing=False`; with a target version,
//!   both `status.desired.version` is the target and the latest history entry
//!   (`status.history[0]`, the CVO keeps the newest first) is `Completed` at the target. Both
//!   are required: `desired` moves as soon as an upgrade is requested, the history entry only
//!   once the CVO finished applying it, so only the pair says "upgraded and settled".
//! - every ClusterOperator `Available=True` and not `Degraded=True` (an empty list is not
//!   healthy: an API server that lists none is not a working cluster).
//! - every Node `Ready=True` (a single-node cluster has one; an empty list is not healthy).
//!
//! A check that cannot be made (the API server is down, a request fails) counts as "not
//! healthy", with the error as its reason: the timeout, never an error alone, decides a
//! rollback.

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;

/// `status.conditions[type=ty].status`, if the condition is there.
fn condition<'v>(obj: &'v Value, ty: &str) -> Option<&'v str> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))?
        .get("status")?
        .as_str()
}

fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
}

/// Why the ClusterVersion is not healthy (empty: it is).
pub fn cluster_version(cv: &Value, target: Option<&str>) -> Vec<String> {
    let mut why = Vec::new();
    match condition(cv, "Available") {
        Some("True") => {}
        other => why.push(format!(
            "ClusterVersion Available is {}, not True",
            other.unwrap_or("missing")
        )),
    }
    match condition(cv, "Progressing") {
        Some("False") => {}
        other => why.push(format!(
            "ClusterVersion Progressing is {}, not False",
            other.unwrap_or("missing")
        )),
    }
    if let Some(t) = target {
        let desired = cv
            .pointer("/status/desired/version")
            .and_then(Value::as_str)
            .unwrap_or("");
        if desired != t {
            why.push(format!(
                "ClusterVersion desired version is {:?}, not the target {t}",
                desired
            ));
        }
        let latest = cv.pointer("/status/history/0");
        let version = latest
            .and_then(|h| h.get("version"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let state = latest
            .and_then(|h| h.get("state"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if version != t || state != "Completed" {
            why.push(format!(
                "ClusterVersion latest history entry is {:?} {}, not {t} Completed",
                version,
                if state.is_empty() {
                    "with no state"
                } else {
                    state
                }
            ));
        }
    }
    why
}

/// Why the ClusterOperators are not healthy (empty: they are).
pub fn cluster_operators(items: &[Value]) -> Vec<String> {
    if items.is_empty() {
        return vec!["no ClusterOperators listed".into()];
    }
    let mut why = Vec::new();
    for co in items {
        let n = name(co);
        match condition(co, "Available") {
            Some("True") => {}
            other => why.push(format!(
                "ClusterOperator {n} Available is {}, not True",
                other.unwrap_or("missing")
            )),
        }
        if condition(co, "Degraded") == Some("True") {
            why.push(format!("ClusterOperator {n} is Degraded"));
        }
    }
    why
}

/// Why the Nodes are not healthy (empty: they are).
pub fn nodes(items: &[Value]) -> Vec<String> {
    if items.is_empty() {
        return vec!["no Nodes listed".into()];
    }
    items
        .iter()
        .filter_map(|n| match condition(n, "Ready") {
            Some("True") => None,
            other => Some(format!(
                "Node {} Ready is {}, not True",
                name(n),
                other.unwrap_or("missing")
            )),
        })
        .collect()
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

async fn list(client: &kube::Client, ar: &ApiResource) -> Result<Vec<Value>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
        .collect())
}

/// `GET /readyz`: why the API server is not ready (empty: it is).
async fn readyz(client: &kube::Client) -> Vec<String> {
    let req = match http::Request::get("/readyz").body(Vec::new()) {
        Ok(r) => r,
        Err(e) => return vec![format!("/readyz: {e}")],
    };
    match client.request_text(req).await {
        Ok(_) => Vec::new(),
        Err(kube::Error::Api(s)) => vec![format!("/readyz answered {}: {}", s.code, s.message)],
        Err(e) => vec![format!("/readyz: {e}")],
    }
}

/// Runs every check once; returns why the node is not healthy (empty: healthy).
pub async fn check(client: &kube::Client, target: Option<&str>) -> Vec<String> {
    let mut why = readyz(client).await;
    let cv = resource(
        "config.openshift.io",
        "v1",
        "ClusterVersion",
        "clusterversions",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &cv);
    match api.get("version").await {
        Ok(o) => why.extend(cluster_version(
            &serde_json::to_value(o).unwrap_or(Value::Null),
            target,
        )),
        Err(e) => why.push(format!("ClusterVersion version: {e}")),
    }
    let co = resource(
        "config.openshift.io",
        "v1",
        "ClusterOperator",
        "clusteroperators",
    );
    match list(client, &co).await {
        Ok(items) => why.extend(cluster_operators(&items)),
        Err(e) => why.push(format!("ClusterOperators: {e}")),
    }
    match list(client, &resource("", "v1", "Node", "nodes")).await {
        Ok(items) => why.extend(nodes(&items)),
        Err(e) => why.push(format!("Nodes: {e}")),
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cv(avail: &str, prog: &str, desired: &str, hist: &[(&str, &str)]) -> Value {
        let history: Vec<Value> = hist
            .iter()
            .map(|(v, s)| json!({"version": v, "state": s}))
            .collect();
        json!({"metadata": {"name": "version"}, "status": {
            "conditions": [{"type": "Available", "status": avail},
                           {"type": "Progressing", "status": prog}],
            "desired": {"version": desired}, "history": history}})
    }

    #[test]
    fn cluster_version_needs_available_settled_and_the_target_completed() {
        let done = cv(
            "True",
            "False",
            "4.16.3",
            &[("4.16.3", "Completed"), ("4.15.9", "Completed")],
        );
        assert!(cluster_version(&done, Some("4.16.3")).is_empty());
        assert!(cluster_version(&done, None).is_empty());
        // Still progressing.
        let w = cluster_version(
            &cv("True", "True", "4.16.3", &[("4.16.3", "Partial")]),
            Some("4.16.3"),
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("Progressing is True"), "{w:?}");
        assert!(w[1].contains("\"4.16.3\" Partial"), "{w:?}");
        // Desired moved but the history still shows the old version on top.
        let w = cluster_version(
            &cv("True", "False", "4.16.3", &[("4.15.9", "Completed")]),
            Some("4.16.3"),
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("latest history entry is \"4.15.9\""), "{w:?}");
        // Settled at another version than the target.
        let w = cluster_version(
            &cv("True", "False", "4.15.9", &[("4.15.9", "Completed")]),
            Some("4.16.3"),
        );
        assert_eq!(w.len(), 2, "{w:?}");
        // Not available; no conditions at all.
        let w = cluster_version(&cv("False", "False", "4.16.3", &[]), None);
        assert_eq!(
            w,
            vec!["ClusterVersion Available is False, not True".to_string()]
        );
        let w = cluster_version(&json!({}), None);
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("missing"), "{w:?}");
    }

    fn co(name: &str, avail: &str, degraded: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"conditions": [
            {"type": "Available", "status": avail}, {"type": "Degraded", "status": degraded}]}})
    }

    #[test]
    fn every_operator_available_and_not_degraded() {
        assert!(
            cluster_operators(&[co("etcd", "True", "False"), co("dns", "True", "False")])
                .is_empty()
        );
        let w = cluster_operators(&[co("etcd", "True", "True"), co("dns", "False", "False")]);
        assert_eq!(
            w,
            vec![
                "ClusterOperator etcd is Degraded".to_string(),
                "ClusterOperator dns Available is False, not True".to_string()
            ]
        );
        // Degraded Unknown is not Degraded=True.
        assert!(cluster_operators(&[co("etcd", "True", "Unknown")]).is_empty());
        assert_eq!(
            cluster_operators(&[]),
            vec!["no ClusterOperators listed".to_string()]
        );
    }

    #[test]
    fn every_node_ready() {
        let node = |r: &str| json!({"metadata": {"name": "sno"}, "status": {"conditions": [{"type": "Ready", "status": r}]}});
        assert!(nodes(&[node("True")]).is_empty());
        assert_eq!(
            nodes(&[node("Unknown")]),
            vec!["Node sno Ready is Unknown, not True".to_string()]
        );
        assert_eq!(nodes(&[]), vec!["no Nodes listed".to_string()]);
    }
}
