//! The `ApproveInstallPlans` task: manual InstallPlan approval through the spoke's own API
//! server (docs/contract.md §3.10), in place of the hub's ManagedClusterView/Action round trips.
//!
//! The hub assigns the task while the cluster is being remediated with a policy that holds OLM
//! Subscriptions. Every `poll` the agent applies TALM's rule to each listed Subscription:
//! once it is `UpgradePending` with a `status.install` reference, the referenced InstallPlan in
//! the Subscription's namespace is read, and if its `spec.approval` is `Manual` and it is not
//! approved yet it is patched `spec.approved: true`, guarded by its `resourceVersion` (a plan
//! that changed in between is re-read on the next pass). Automatic and approved plans are left
//! alone.
//!
//! The task runs until the hub cancels it (the cluster completed the policy or moved on) or its
//! deadline; the daemon ends it then. Progress names every plan approved so far and what each
//! other Subscription waits for. A kubeconfig that is missing or unreadable rejects the task,
//! and 401/403 from the API server fail it, so the hub falls back to views and actions; other
//! API errors are retried on the next pass.
//!
//! The spoke API is reached with the node's kubeconfig (`--spoke-kubeconfig`, by default the
//! `localhost.kubeconfig` that OpenShift keeps on every control-plane node, under the host
//! root).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;
use serde_json::{Value, json};
use talm_proto::v1::TaskOutcome;
use talm_shared::api::spokeagent::SubscriptionTarget;

use crate::runner::TaskContext;

/// The kubeconfig OpenShift keeps for local access on control-plane nodes, relative to the
/// host root.
pub const DEFAULT_KUBECONFIG: &str = "etc/kubernetes/static-pod-resources/kube-apiserver-certs/secrets/node-kubeconfigs/localhost.kubeconfig";

/// Default time between passes.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);

/// How `ApproveInstallPlans` tasks reach the spoke API.
#[derive(Clone, Debug)]
pub struct ApprovalSettings {
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// Time between passes (a task's `pollSeconds` overrides it).
    pub poll: Duration,
}

impl ApprovalSettings {
    /// Settings with `kubeconfig`, or the default one under `host_root`.
    pub fn new(host_root: &Path, kubeconfig: Option<&Path>) -> Self {
        Self {
            kubeconfig: kubeconfig
                .map_or_else(|| host_root.join(DEFAULT_KUBECONFIG), Path::to_path_buf),
            poll: DEFAULT_POLL,
        }
    }
}

/// The task's parameters (JSON, camelCase).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// The Subscriptions whose InstallPlans to approve.
    pub subscriptions: Vec<SubscriptionTarget>,
    /// Seconds between passes (default: the agent's setting).
    #[serde(default)]
    pub poll_seconds: Option<u64>,
}

/// Why a task cannot run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The parameters are not usable.
    #[error("approve-install-plans params: {0}")]
    Params(String),
    /// The kubeconfig could not be read or used.
    #[error("spoke kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The API server refused the agent's credentials.
    #[error("the spoke API server refused {verb} {what}: {reason}")]
    Denied {
        /// get or patch.
        verb: &'static str,
        /// `<kind> <ns>/<name>`.
        what: String,
        /// The server's message.
        reason: String,
    },
}

/// Parses and checks the parameters.
pub fn parse_params(raw: &str) -> Result<Params, ApprovalError> {
    let p: Params = serde_json::from_str(raw).map_err(|e| ApprovalError::Params(format!("{e}")))?;
    if p.subscriptions.is_empty() {
        return Err(ApprovalError::Params("no subscriptions listed".into()));
    }
    for s in &p.subscriptions {
        if s.name.is_empty() || s.namespace.is_empty() {
            return Err(ApprovalError::Params(format!(
                "subscription {:?} in {:?}: name and namespace are required",
                s.name, s.namespace
            )));
        }
    }
    if p.poll_seconds == Some(0) {
        return Err(ApprovalError::Params(
            "pollSeconds must be at least 1".into(),
        ));
    }
    Ok(p)
}

fn subscription_resource() -> ApiResource {
    ApiResource {
        group: "operators.coreos.com".into(),
        version: "v1alpha1".into(),
        api_version: "operators.coreos.com/v1alpha1".into(),
        kind: "Subscription".into(),
        plural: "subscriptions".into(),
    }
}

fn installplan_resource() -> ApiResource {
    ApiResource {
        group: "operators.coreos.com".into(),
        version: "v1alpha1".into(),
        api_version: "operators.coreos.com/v1alpha1".into(),
        kind: "InstallPlan".into(),
        plural: "installplans".into(),
    }
}

/// A client for the spoke API from the kubeconfig at `path`.
pub async fn client(path: &Path) -> Result<kube::Client, ApprovalError> {
    let err = |reason: String| ApprovalError::Kubeconfig {
        path: path.display().to_string(),
        reason,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| err(e.to_string()))
}

/// What one Subscription is at after a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubState {
    /// This pass approved `plan`.
    Approved(String),
    /// The current plan is approved already, or approval is automatic.
    Settled(String),
    /// Nothing to do yet, with the reason.
    Waiting(String),
}

/// The outcome of a failed call: a denial (401/403) ends the task, anything else waits for the
/// next pass with `waiting` and the error.
fn failed(
    e: &kube::Error,
    verb: &'static str,
    what: &str,
    waiting: &str,
) -> Result<SubState, ApprovalError> {
    match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => Err(ApprovalError::Denied {
            verb,
            what: what.to_string(),
            reason: s.message.clone(),
        }),
        _ => Ok(SubState::Waiting(format!("{waiting}: {e}"))),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn str_at<'v>(v: &'v Value, ptr: &str) -> Option<&'v str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// One pass over one Subscription. `Err` only for a denial; other API errors are a `Waiting`
/// with the error.
pub async fn pass_one(
    client: &kube::Client,
    sub: &SubscriptionTarget,
) -> Result<SubState, ApprovalError> {
    let subs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &sub.namespace, &subscription_resource());
    let what = format!("Subscription {}/{}", sub.namespace, sub.name);
    let s = match subs.get(&sub.name).await {
        Ok(s) => s.data,
        Err(e) if is_not_found(&e) => return Ok(SubState::Waiting("not created yet".into())),
        Err(e) => return failed(&e, "get", &what, "reading it failed"),
    };
    let state = str_at(&s, "/status/state").unwrap_or("");
    if state != "UpgradePending" {
        let shown = if state.is_empty() { "no state" } else { state };
        return Ok(SubState::Waiting(format!("{shown}, not UpgradePending")));
    }
    let Some(plan_name) = str_at(&s, "/status/install/name").filter(|n| !n.is_empty()) else {
        return Ok(SubState::Waiting(
            "UpgradePending without an InstallPlan reference".into(),
        ));
    };
    let plans: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &sub.namespace, &installplan_resource());
    let what = format!("InstallPlan {}/{plan_name}", sub.namespace);
    let plan = match plans.get(plan_name).await {
        Ok(p) => p,
        Err(e) if is_not_found(&e) => {
            return Ok(SubState::Waiting(format!("{what} not found yet")));
        }
        Err(e) => return failed(&e, "get", &what, &format!("reading {what} failed")),
    };
    let manual = str_at(&plan.data, "/spec/approval") == Some("Manual");
    let approved = plan.data.pointer("/spec/approved").and_then(Value::as_bool) == Some(true);
    if !manual || approved {
        return Ok(SubState::Settled(what));
    }
    let body = json!({
        "metadata": {"resourceVersion": plan.metadata.resource_version},
        "spec": {"approved": true},
    });
    match plans
        .patch(plan_name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(SubState::Approved(what)),
        // 409: the plan changed since it was read; the next pass reads it again.
        Err(e) => failed(&e, "patch", &what, &format!("approving {what} failed")),
    }
}

/// Runs the task until a denial (the daemon ends it on cancel or deadline). `approved`
/// collects the plans approved, for the caller's reports.
pub async fn run_loop(
    client: &kube::Client,
    params: &Params,
    poll: Duration,
    ctx: &TaskContext,
    approved: &mut BTreeSet<String>,
) -> ApprovalError {
    let total = params.subscriptions.len() as u64;
    loop {
        let mut waiting = Vec::new();
        let mut settled = 0u64;
        for sub in &params.subscriptions {
            match pass_one(client, sub).await {
                Ok(SubState::Approved(what)) => {
                    tracing::info!(task = ctx.task_id(), plan = %what, "InstallPlan approved");
                    approved.insert(what);
                    settled += 1;
                }
                Ok(SubState::Settled(_)) => settled += 1,
                Ok(SubState::Waiting(why)) => {
                    waiting.push(format!("{}/{}: {why}", sub.namespace, sub.name));
                }
                Err(e) => return e,
            }
        }
        let mut message = format!("{} InstallPlan(s) approved", approved.len());
        if !approved.is_empty() {
            message.push_str(&format!(
                " ({})",
                approved.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if !waiting.is_empty() {
            message.push_str(&format!("; waiting: {}", waiting.join("; ")));
        }
        ctx.progress(&message, settled, total);
        tokio::time::sleep(poll).await;
    }
}

/// Runs one `ApproveInstallPlans` task to its outcome (only failures end it; the daemon ends
/// it on cancel or deadline).
pub async fn run_task(
    settings: &ApprovalSettings,
    params_json: &str,
    ctx: TaskContext,
) -> (TaskOutcome, String) {
    let params = match parse_params(params_json) {
        Ok(p) => p,
        Err(e) => return (TaskOutcome::Rejected, e.to_string()),
    };
    let client = match client(&settings.kubeconfig).await {
        Ok(c) => c,
        Err(e) => return (TaskOutcome::Rejected, e.to_string()),
    };
    let poll = params
        .poll_seconds
        .map_or(settings.poll, Duration::from_secs);
    let mut approved = BTreeSet::new();
    let e = run_loop(&client, &params, poll, &ctx, &mut approved).await;
    let mut msg = e.to_string();
    if !approved.is_empty() {
        msg.push_str(&format!(
            " (approved before: {})",
            approved.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    (TaskOutcome::Failed, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked() {
        let p = parse_params(
            r#"{"subscriptions":[{"name":"ptp","namespace":"openshift-ptp"}],"pollSeconds":2}"#,
        )
        .unwrap();
        assert_eq!(p.subscriptions[0].namespace, "openshift-ptp");
        assert_eq!(p.poll_seconds, Some(2));
        for (bad, needle) in [
            ("\"x\"", "invalid type"),
            (r#"{"subscriptions":[]}"#, "no subscriptions"),
            (
                r#"{"subscriptions":[{"name":"","namespace":"x"}]}"#,
                "name and namespace are required",
            ),
            (
                r#"{"subscriptions":[{"name":"a","namespace":"x"}],"pollSeconds":0}"#,
                "pollSeconds",
            ),
            (
                r#"{"subscriptions":[{"name":"a","namespace":"x"}],"typo":1}"#,
                "unknown field",
            ),
        ] {
            let e = parse_params(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_rejects_the_task_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ApprovalSettings::new(dir.path(), None);
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let (o, msg) = run_task(
            &settings,
            r#"{"subscriptions":[{"name":"a","namespace":"x"}]}"#,
            TaskContext::new("t", tx),
        )
        .await;
        assert_eq!(o, TaskOutcome::Rejected);
        assert!(msg.contains("localhost.kubeconfig"), "{msg}");
    }
}
