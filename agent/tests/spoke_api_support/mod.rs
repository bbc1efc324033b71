//! The node's own API server for the watchdog tests: talm-kube-double serving ClusterVersion,
//! ClusterOperator and Node with their status, and a kubeconfig pointing at it (as the node's
//! `localhost.kubeconfig` would).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use talm_kube_double::{KubeDouble, ResourceKind};

/// The double, on 127.0.0.1 or on `bind` (e.g. the host end of a veth pair).
pub async fn spoke_api(bind: Option<IpAddr>) -> KubeDouble {
    let mut b = KubeDouble::builder().no_default_kinds().kinds(vec![
        ResourceKind::cluster_scoped(
            "config.openshift.io",
            "v1",
            "ClusterVersion",
            "clusterversions",
        )
        .with_status(),
        ResourceKind::cluster_scoped(
            "config.openshift.io",
            "v1",
            "ClusterOperator",
            "clusteroperators",
        )
        .with_status(),
        ResourceKind::cluster_scoped("", "v1", "Node", "nodes")
            .builtin()
            .with_status(),
    ]);
    if let Some(ip) = bind {
        b = b.bind_ip(ip);
    }
    b.start().await.unwrap()
}

/// Writes `<dir>/localhost.kubeconfig` for the double and returns its path.
pub fn kubeconfig(double: &KubeDouble, dir: &Path) -> PathBuf {
    let path = dir.join("localhost.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: spoke\n  cluster:\n    server: {}\n\
             contexts:\n- name: admin\n  context:\n    cluster: spoke\n    user: admin\n\
             current-context: admin\nusers:\n- name: admin\n  user: {{}}\n",
            double.url()
        ),
    )
    .unwrap();
    path
}

/// Conditions `[{type, status}]`.
pub fn conditions(c: &[(&str, &str)]) -> Value {
    c.iter()
        .map(|(t, s)| json!({"type": t, "status": s}))
        .collect()
}
