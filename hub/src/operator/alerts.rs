//! The alert receiver (talm extension; docs/contract.md §11.3, docs/operations.md §4
//! "Alert-driven holds"): an HTTP endpoint for Alertmanager's webhook (payload version `4`) that
//! records holds on CGUs.
//!
//! Every replica may run it, leader or not: it reads the CGUs from the replica's cache and only
//! patches the annotation [`HELD_BY_ANNOTATION`] (`talm.dev/held-by: <alertname>,...`). The
//! engine reads that annotation, so the hold acts on the leader's next reconcile like a pause
//! (reason `HeldByAlert`) and survives restarts.
//!
//! A firing alert whose labels match every configured matcher (default `talm_hold="true"`) adds
//! its `alertname` to every in-progress CGU, or, when it carries the cluster label (default
//! `managed_cluster`), to the in-progress CGUs whose plan contains that cluster. A resolved
//! matching alert removes its name from the same CGUs (in any state), unless an alert of the
//! same name in the same payload still fires for them: Alertmanager sends a group's firing and
//! resolved alerts together, so the hold ends when all matching alerts have resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;
use talm_hub_core::api::cgu::ClusterGroupUpgrade;
use talm_hub_core::conditions::{self as cond, types};
use talm_hub_core::reconcile::{HELD_BY_ANNOTATION, held_by};

use super::Shared;

/// The largest webhook body accepted (Alertmanager's payloads are a few KiB per alert; it
/// truncates to `max_alerts` when configured).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Attempts at one CGU's annotation when other writers change the CGU in between.
const PATCH_ATTEMPTS: usize = 5;

/// `talm-hub run` options of the alert receiver.
#[derive(clap::Args, Clone, Debug)]
pub struct AlertReceiverArgs {
    /// Serve the Alertmanager webhook receiver here (off when unset), e.g. `0.0.0.0:9095`.
    #[arg(long, env = "TALM_ALERT_RECEIVER_ADDR")]
    pub alert_receiver_addr: Option<SocketAddr>,
    /// A label an alert must carry to hold CGUs, as `name=value`; repeat (or comma-separate in
    /// the environment variable) for several, all of which must match.
    #[arg(
        long = "alert-matcher",
        env = "TALM_ALERT_MATCHERS",
        value_delimiter = ',',
        default_value = "talm_hold=true"
    )]
    pub alert_matchers: Vec<Matcher>,
    /// The alert label naming the cluster; an alert with it holds only the CGUs containing that
    /// cluster, one without it holds every in-progress CGU.
    #[arg(
        long,
        env = "TALM_ALERT_CLUSTER_LABEL",
        default_value = "managed_cluster"
    )]
    pub alert_cluster_label: String,
}

impl AlertReceiverArgs {
    /// The receiver's settings.
    pub fn config(&self) -> ReceiverConfig {
        ReceiverConfig {
            matchers: self.alert_matchers.clone(),
            cluster_label: self.alert_cluster_label.clone(),
        }
    }
}

/// An equality matcher on one alert label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    /// The label name.
    pub name: String,
    /// The value it must have.
    pub value: String,
}

impl FromStr for Matcher {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("alert matcher {s:?} is not name=value"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("alert matcher {s:?} has an empty label name"));
        }
        let value = value.trim().trim_matches('"');
        Ok(Matcher {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

/// What the receiver matches on.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Every one must match an alert's labels.
    pub matchers: Vec<Matcher>,
    /// The label naming the cluster.
    pub cluster_label: String,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            matchers: vec![Matcher {
                name: "talm_hold".into(),
                value: "true".into(),
            }],
            cluster_label: "managed_cluster".into(),
        }
    }
}

/// The parts of an Alertmanager webhook payload the receiver reads.
#[derive(Clone, Debug, Deserialize)]
pub struct Webhook {
    /// Payload version; `4` is the only one Alertmanager sends.
    pub version: String,
    /// The alerts of the notification's group.
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

/// One alert of a webhook payload.
#[derive(Clone, Debug, Deserialize)]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    /// The alert's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why a payload is refused (answered with 400 and this text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Not JSON, or not the webhook's shape.
    #[error("invalid Alertmanager webhook payload: {0}")]
    Json(String),
    /// A version other than 4.
    #[error("unsupported Alertmanager webhook payload version {0:?} (expected \"4\")")]
    Version(String),
    /// An alert whose status is neither `firing` nor `resolved`.
    #[error("alerts[{index}].status is {status:?}, expected \"firing\" or \"resolved\"")]
    Status {
        /// The alert's index in `alerts`.
        index: usize,
        /// What it said.
        status: String,
    },
}

/// Parses and checks a webhook body.
pub fn parse_webhook(body: &[u8]) -> Result<Webhook, PayloadError> {
    let w: Webhook = serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    if w.version != "4" {
        return Err(PayloadError::Version(w.version));
    }
    for (index, a) in w.alerts.iter().enumerate() {
        if a.status != "firing" && a.status != "resolved" {
            return Err(PayloadError::Status {
                index,
                status: a.status.clone(),
            });
        }
    }
    Ok(w)
}

/// What the receiver knows of one CGU.
#[derive(Clone, Debug, Default)]
pub struct CguView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `Progressing=True` and no `Succeeded` condition.
    pub in_progress: bool,
    /// The clusters of its remediation plan.
    pub clusters: BTreeSet<String>,
}

impl CguView {
    /// The view of a CGU object.
    pub fn of(cgu: &ClusterGroupUpgrade) -> CguView {
        let status = cgu.status.as_ref();
        let conds = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
        CguView {
            namespace: cgu.metadata.namespace.clone().unwrap_or_default(),
            name: cgu.metadata.name.clone().unwrap_or_default(),
            in_progress: cond::is_true(conds, types::PROGRESSING)
                && cond::find(conds, types::SUCCEEDED).is_none(),
            clusters: status
                .and_then(|s| s.remediation_plan.as_ref())
                .into_iter()
                .flatten()
                .flatten()
                .cloned()
                .collect(),
        }
    }
}

/// The alert names to add to and remove from one CGU's hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoldChange {
    /// Firing alerts that hold it.
    pub add: BTreeSet<String>,
    /// Resolved alerts that no longer do.
    pub remove: BTreeSet<String>,
}

/// The hold changes a payload asks for, per CGU `(namespace, name)`.
pub fn hold_changes(
    webhook: &Webhook,
    config: &ReceiverConfig,
    cgus: &[CguView],
) -> BTreeMap<(String, String), HoldChange> {
    let mut out: BTreeMap<(String, String), HoldChange> = BTreeMap::new();
    let matching = webhook.alerts.iter().filter(|a| {
        config
            .matchers
            .iter()
            .all(|m| a.labels.get(&m.name) == Some(&m.value))
    });
    for alert in matching {
        // The annotation is a comma-separated list: a comma in a name would split it.
        let name = alert
            .labels
            .get("alertname")
            .map(|n| n.replace(',', "_"))
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "unnamed".to_string());
        let cluster = alert.labels.get(&config.cluster_label);
        let firing = alert.status == "firing";
        for c in cgus {
            let targeted = cluster.is_none_or(|cl| c.clusters.contains(cl));
            if !targeted || (firing && !c.in_progress) {
                continue;
            }
            let change = out
                .entry((c.namespace.clone(), c.name.clone()))
                .or_default();
            if firing {
                change.add.insert(name.clone());
            } else {
                change.remove.insert(name.clone());
            }
        }
    }
    for change in out.values_mut() {
        let still_firing = change.add.clone();
        change.remove.retain(|n| !still_firing.contains(n));
    }
    out.retain(|_, c| !c.add.is_empty() || !c.remove.is_empty());
    out
}

/// The annotation value after `change`; `None` when no alert holds the CGU any more.
pub fn apply_change(current: Option<&str>, change: &HoldChange) -> Option<String> {
    let mut names: BTreeSet<String> = current
        .map(held_by)
        .unwrap_or_default()
        .into_iter()
        .map(str::to_string)
        .collect();
    names.extend(change.add.iter().cloned());
    names.retain(|n| !change.remove.contains(n));
    (!names.is_empty()).then(|| names.into_iter().collect::<Vec<_>>().join(","))
}

/// The receiver's state.
struct Receiver {
    shared: Arc<Shared>,
    config: ReceiverConfig,
}

/// The receiver's routes: `POST /` (and `POST /alerts`), with the body limit.
pub fn router(shared: Arc<Shared>, config: ReceiverConfig) -> Router {
    let state = Arc::new(Receiver { shared, config });
    Router::new()
        .route("/", post(receive))
        .route("/alerts", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the receiver on `listener` until `shutdown` resolves.
pub async fn serve(
    shared: Arc<Shared>,
    config: ReceiverConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared, config))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn receive(State(r): State<Arc<Receiver>>, body: Bytes) -> (StatusCode, String) {
    let webhook = match parse_webhook(&body) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "alert receiver: payload refused");
            return (StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    let views: Vec<CguView> = {
        let cache = r.shared.cache_read();
        cache.snapshot().cgus().map(CguView::of).collect()
    };
    let changes = hold_changes(&webhook, &r.config, &views);
    let mut failures = Vec::new();
    for ((ns, name), change) in &changes {
        match patch_hold(&r.shared.client, ns, name, change).await {
            Ok(value) => tracing::info!(
                cgu = %format!("{ns}/{name}"),
                held_by = value.as_deref().unwrap_or(""),
                "alert receiver: hold updated"
            ),
            Err(e) => {
                tracing::warn!(cgu = %format!("{ns}/{name}"), error = %e, "alert receiver: hold not recorded");
                failures.push(format!("{ns}/{name}: {e}"));
            }
        }
    }
    if failures.is_empty() {
        (StatusCode::OK, format!("{} CGUs updated\n", changes.len()))
    } else {
        // Alertmanager retries a notification answered with a 5xx.
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("holds not recorded: {}\n", failures.join("; ")),
        )
    }
}

/// Applies one CGU's change to its current annotation, guarded by its resourceVersion and
/// retried when another writer got there first. Returns the value written.
async fn patch_hold(
    client: &kube::Client,
    ns: &str,
    name: &str,
    change: &HoldChange,
) -> Result<Option<String>, kube::Error> {
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(client.clone(), ns);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cgu = api.get(name).await?;
        let current = cgu
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HELD_BY_ANNOTATION))
            .map(String::as_str);
        let value = apply_change(current, change);
        if value.as_deref() == current {
            return Ok(value);
        }
        let patch = json!({"metadata": {
            "resourceVersion": cgu.metadata.resource_version,
            "annotations": {HELD_BY_ANNOTATION: value},
        }});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(value),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < PATCH_ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn view(name: &str, in_progress: bool, clusters: &[&str]) -> CguView {
        CguView {
            namespace: "default".into(),
            name: name.into(),
            in_progress,
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn alert(status: &str, labels: &[(&str, &str)]) -> Alert {
        Alert {
            status: status.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn hook(alerts: Vec<Alert>) -> Webhook {
        Webhook {
            version: "4".into(),
            alerts,
        }
    }

    fn key(name: &str) -> (String, String) {
        ("default".into(), name.into())
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_firing_alert_without_a_cluster_holds_every_in_progress_cgu() {
        let cgus = [
            view("a", true, &["s1"]),
            view("b", true, &["s2"]),
            view("done", false, &["s1"]),
        ];
        let w = hook(vec![alert(
            "firing",
            &[("alertname", "Outage"), ("talm_hold", "true")],
        )]);
        let c = hold_changes(&w, &ReceiverConfig::default(), &cgus);
        assert_eq!(c.keys().cloned().collect::<Vec<_>>(), [key("a"), key("b")]);
        assert_eq!(c[&key("a")].add, set(&["Outage"]));
    }

    #[test]
    fn a_cluster_label_narrows_the_hold_and_unmatched_alerts_are_ignored() {
        let cgus = [view("a", true, &["s1", "s2"]), view("b", true, &["s3"])];
        let w = hook(vec![
            alert(
                "firing",
                &[
                    ("alertname", "NodeDown"),
                    ("talm_hold", "true"),
                    ("managed_cluster", "s2"),
                ],
            ),
            alert("firing", &[("alertname", "Noise"), ("talm_hold", "false")]),
            alert("firing", &[("alertname", "Other")]),
        ]);
        let c = hold_changes(&w, &ReceiverConfig::default(), &cgus);
        assert_eq!(c.len(), 1);
        assert_eq!(c[&key("a")].add, set(&["NodeDown"]));
        // Configured matchers and cluster label.
        let config = ReceiverConfig {
            matchers: vec!["severity=critical".parse().unwrap()],
            cluster_label: "cluster".into(),
        };
        let w = hook(vec![alert(
            "firing",
            &[
                ("alertname", "X"),
                ("severity", "critical"),
                ("cluster", "s3"),
            ],
        )]);
        let c = hold_changes(&w, &config, &cgus);
        assert_eq!(c.keys().cloned().collect::<Vec<_>>(), [key("b")]);
    }

    #[test]
    fn a_resolved_alert_releases_unless_the_same_name_still_fires_for_the_cgu() {
        let cgus = [view("a", true, &["s1", "s2"]), view("b", false, &["s1"])];
        let labels = |c: &'static str| {
            vec![
                ("alertname", "NodeDown"),
                ("talm_hold", "true"),
                ("managed_cluster", c),
            ]
        };
        let w = hook(vec![
            alert("resolved", &labels("s1")),
            alert("firing", &labels("s2")),
        ]);
        let c = hold_changes(&w, &ReceiverConfig::default(), &cgus);
        assert_eq!(c[&key("a")].add, set(&["NodeDown"]));
        assert!(c[&key("a")].remove.is_empty(), "s2 still fires");
        // A CGU that ended is still released.
        assert_eq!(c[&key("b")].remove, set(&["NodeDown"]));
        assert!(c[&key("b")].add.is_empty());
    }

    #[test]
    fn changes_apply_to_the_current_annotation() {
        let add = HoldChange {
            add: set(&["B", "A"]),
            remove: BTreeSet::new(),
        };
        assert_eq!(apply_change(None, &add).as_deref(), Some("A,B"));
        assert_eq!(apply_change(Some("C, A"), &add).as_deref(), Some("A,B,C"));
        let remove = HoldChange {
            add: BTreeSet::new(),
            remove: set(&["A", "C"]),
        };
        assert_eq!(apply_change(Some("A,C"), &remove), None);
        assert_eq!(apply_change(Some("A,B,C"), &remove).as_deref(), Some("B"));
    }

    #[test]
    fn bad_payloads_are_named() {
        assert!(matches!(parse_webhook(b"{"), Err(PayloadError::Json(_))));
        assert_eq!(
            parse_webhook(br#"{"version": "3", "alerts": []}"#)
                .unwrap_err()
                .to_string(),
            "unsupported Alertmanager webhook payload version \"3\" (expected \"4\")"
        );
        assert_eq!(
            parse_webhook(
                br#"{"version": "4", "alerts": [{"status": "firing"}, {"status": "maybe"}]}"#
            )
            .unwrap_err()
            .to_string(),
            "alerts[1].status is \"maybe\", expected \"firing\" or \"resolved\""
        );
        let e = parse_webhook(br#"{"alerts": []}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `version`"), "{e}");
    }

    #[test]
    fn matchers_parse_name_equals_value() {
        assert_eq!(
            "talm_hold=\"true\"".parse::<Matcher>().unwrap(),
            Matcher {
                name: "talm_hold".into(),
                value: "true".into()
            }
        );
        assert_eq!(
            "novalue".parse::<Matcher>().unwrap_err(),
            "alert matcher \"novalue\" is not name=value"
        );
        assert!("=x".parse::<Matcher>().is_err());
    }
}
