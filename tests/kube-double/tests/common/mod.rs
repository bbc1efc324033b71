//! Shared fixtures for the double's own tests.
#![allow(dead_code, clippy::expect_used)]

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A minimal ClusterGroupUpgrade (namespaced, status subresource).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ran.openshift.io",
    version = "v1alpha1",
    kind = "ClusterGroupUpgrade",
    namespaced,
    status = "CguStatus",
    derive = "Default",
    derive = "PartialEq"
)]
pub struct CguSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CguStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// A minimal ManagedCluster (cluster-scoped, status subresource).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cluster.open-cluster-management.io",
    version = "v1",
    kind = "ManagedCluster",
    status = "McStatus",
    derive = "Default",
    derive = "PartialEq"
)]
pub struct McSpec {
    #[serde(default, rename = "hubAcceptsClient")]
    pub hub_accepts_client: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct McStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

pub fn cgu(name: &str, ns: &str) -> ClusterGroupUpgrade {
    let mut c = ClusterGroupUpgrade::new(name, CguSpec::default());
    c.metadata.namespace = Some(ns.to_string());
    c
}

pub fn mc(name: &str, labels: &[(&str, &str)]) -> ManagedCluster {
    let mut m = ManagedCluster::new(name, McSpec::default());
    m.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    m
}

/// Awaits `f` with a 10 s ceiling.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}
