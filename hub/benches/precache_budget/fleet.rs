//! The fleet of the `precache_budget` benchmark in the kube API double: the gateway's key
//! material and every cluster's enrollment, the ManagedClusters and their sites, the platform
//! upgrade policy, the PrecacheBudgets, and the CGU that pre-caches.

use anyhow::Context as _;
use serde_json::{Value, json};
use talm_agent::conn::Identity;
use talm_gateway::store::Enrollment;
use talm_hub::operator::agents::secrets;
use talm_kube_double::KubeDouble;
use talm_shared::clock::{Clock, SystemClock};
use talm_shared::pki::{self, Authority};

use crate::{
    Args, CGU, HUB_NS, NS, POLICY, REGISTRIES, TEN_YEARS, cluster, max_concurrency, site,
    site_label,
};

/// The fleet, the policy, the gateway's key material and enrollments, and (with `budgets`)
/// the PrecacheBudgets, in the double. Returns the hub CA (PEM) the agents trust.
pub async fn populate(
    double: &KubeDouble,
    a: &Args,
    ca: &Authority,
    ids: &[Identity],
    budgets: bool,
) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now();
    let to_value = |s: &k8s_openapi::api::core::v1::Secret| -> anyhow::Result<Value> {
        let mut v = serde_json::to_value(s)?;
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Secret");
        Ok(v)
    };
    // The agent CA and a serving certificate for 127.0.0.1, where the hub would generate them.
    double.put_value(to_value(&secrets::tls_secret(
        HUB_NS,
        secrets::AGENT_CA_SECRET,
        secrets::KIND_AGENT_CA,
        &ca.cert_pem,
        &ca.key_pem,
        None,
    ))?)?;
    let hub_ca = pki::new_ca("talm hub CA", now, TEN_YEARS)?;
    let leaf = pki::server_cert(&hub_ca, &["127.0.0.1".to_string()], now, TEN_YEARS)?;
    double.put_value(to_value(&secrets::tls_secret(
        HUB_NS,
        secrets::SERVING_SECRET,
        secrets::KIND_SERVING,
        &leaf.cert_pem,
        &leaf.key_pem,
        Some(&hub_ca.cert_pem),
    ))?)?;
    let enrolled_at = SystemClock.unix();
    for id in ids {
        let e = Enrollment {
            cluster: id.info.cluster.clone(),
            serials: vec![id.info.serial.clone()],
            not_after: id.info.not_after,
            enrolled_at,
        };
        double.put_value(to_value(&secrets::enrollment_to_secret(HUB_NS, &e))?)?;
    }
    let names: Vec<String> = (0..a.agents).map(cluster).collect();
    for (i, c) in names.iter().enumerate() {
        double
            .put_value(json!({
                "apiVersion": "cluster.open-cluster-management.io/v1",
                "kind": "ManagedCluster",
                "metadata": {"name": c, "labels": {"name": c, "vendor": "OpenShift",
                    "ztp-done": "", "site": site_label(site(a, i))}},
                "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
                    "status": "True", "reason": "Available", "message": "ok",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .context("ManagedCluster")?;
    }
    // The platform upgrade: its ClusterVersion names the release image to pre-cache.
    let templates = json!([{"objectDefinition": {
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "ConfigurationPolicy",
        "metadata": {"name": "platform-upgrade-config"},
        "spec": {"remediationAction": "inform", "object-templates": [{
            "complianceType": "musthave",
            "objectDefinition": {"apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
                "metadata": {"name": "version"},
                "spec": {"channel": "stable-4.99", "desiredUpdate": {"version": "4.99.0",
                    "image": format!("quay.io/openshift-release-dev/ocp-release@sha256:{}",
                                     "ab".repeat(32))}}}}]}}}]);
    let status: Vec<Value> = names
        .iter()
        .map(|c| json!({"clustername": c, "clusternamespace": c, "compliant": "NonCompliant"}))
        .collect();
    double
        .put_value(json!({
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "Policy",
            "metadata": {"name": POLICY, "namespace": NS},
            "spec": {"remediationAction": "inform", "disabled": false,
                     "policy-templates": templates},
            "status": {"compliant": "NonCompliant", "status": status}
        }))
        .context("root policy")?;
    let child = format!("{NS}.{POLICY}");
    for c in &names {
        double
            .put_value(json!({
                "apiVersion": "policy.open-cluster-management.io/v1",
                "kind": "Policy",
                "metadata": {"name": child, "namespace": c,
                    "labels": {"policy.open-cluster-management.io/root-policy": child,
                               "policy.open-cluster-management.io/cluster-name": c,
                               "policy.open-cluster-management.io/cluster-namespace": c}},
                "spec": {"remediationAction": "inform", "disabled": false,
                         "policy-templates": templates},
                "status": {"compliant": "NonCompliant"}
            }))
            .context("child policy")?;
    }
    if budgets {
        for s in 0..a.sites {
            double
                .put_value(json!({
                    "apiVersion": "talm.dev/v1alpha1",
                    "kind": "PrecacheBudget",
                    "metadata": {"name": site_label(s)},
                    "spec": {"clusterSelector": {"matchLabels": {"site": site_label(s)}},
                             "bandwidth": format!("{}Mi", a.site_mib),
                             "maxConcurrentClusters": a.site_max}
                }))
                .context("site PrecacheBudget")?;
        }
        double
            .put_value(json!({
                "apiVersion": "talm.dev/v1alpha1",
                "kind": "PrecacheBudget",
                "metadata": {"name": "mirror-a"},
                "spec": {"registries": [{"host": REGISTRIES[0],
                                         "maxConcurrentClusters": a.registry_max}]}
            }))
            .context("registry PrecacheBudget")?;
    }
    Ok(hub_ca.cert_pem)
}

pub fn cgu_object(a: &Args) -> Value {
    let names: Vec<String> = (0..a.agents).map(cluster).collect();
    json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": {"name": CGU, "namespace": NS},
        "spec": {"clusters": names, "managedPolicies": [POLICY],
                 "remediationStrategy": {"maxConcurrency": max_concurrency(a), "timeout": 240},
                 "preCaching": true, "enable": false}
    })
}
