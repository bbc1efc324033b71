//! The ZTP auto-CGU controller (docs/contract.md §3.11): the adapter around
//! [`talm_hub_core::ztp`].
//!
//! It runs on the leader only, next to the CGU controller. The watch-fed cache queues the
//! clusters to look at (a ManagedCluster changed or was deleted, or a CGU in `ztp-install` was
//! deleted); when it starts leading every known cluster is queued once. For each queued
//! cluster it reads the snapshot, asks the engine, and creates the CGU `ztp-install/<cluster>`
//! (409 means it exists already: fine). The created CGU reaches the cache and the CGU
//! controller through the CGU watch, like any user-created CGU (recording it here would turn
//! that watch event into an echo, and the controller's reflector would not hold it yet).
//!
//! A cluster whose decision fails (a non-integer `ran.openshift.io/ztp-deploy-wave`) or whose
//! create fails is retried every [`RETRY`]. Accelerated ZTP (`accelerated-ztp` label) is not
//! supported: such clusters get a warning, once per label value.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use talm_hub_core::ztp::{self, ZTP_NAMESPACE};
use talm_shared::api::ObjectMeta;
use talm_shared::api::cgu::ClusterGroupUpgrade;

use super::Shared;
use super::error::is_already_exists;

/// How long a failed cluster waits before it is looked at again.
pub const RETRY: Duration = Duration::from_secs(30);

/// Runs the controller until the task is aborted (leadership lost or shutdown).
pub async fn run(shared: Arc<Shared>) {
    ensure_namespace(&shared).await;
    shared.cache_write().mark_all_ztp();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut warned: HashMap<String, String> = HashMap::new();
    loop {
        let mut pending = shared.cache_write().take_ztp_pending();
        pending.extend(std::mem::take(&mut failed));
        pending.sort();
        pending.dedup();
        for cluster in pending {
            if !handle(&shared, &cluster, &mut warned).await {
                failed.insert(cluster);
            }
        }
        if failed.is_empty() {
            shared.ztp_wake.notified().await;
        } else {
            tokio::select! {
                () = shared.ztp_wake.notified() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// Creates `ztp-install` when missing (TALM creates it at startup).
async fn ensure_namespace(shared: &Shared) {
    let api: Api<Namespace> = Api::all(shared.client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(ZTP_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => tracing::info!(namespace = ZTP_NAMESPACE, "ZTP namespace created"),
        Err(e) if is_already_exists(&e) => {}
        Err(e) => {
            tracing::warn!(namespace = ZTP_NAMESPACE, error = %e, "cannot create the ZTP namespace");
        }
    }
}

/// Looks at one cluster; false when it must be retried.
async fn handle(shared: &Shared, cluster: &str, warned: &mut HashMap<String, String>) -> bool {
    let decided = {
        let cache = shared.cache_read();
        ztp::decide_in(cache.snapshot(), cluster)
    };
    let decision = match decided {
        None => {
            warned.remove(cluster);
            return true;
        }
        Some(Err(e)) => {
            tracing::warn!(cluster, error = %e, "ZTP: cannot build the CGU");
            return false;
        }
        Some(Ok(d)) => d,
    };
    match &decision.accelerated_ztp {
        Some(variant) if warned.get(cluster) != Some(variant) => {
            tracing::warn!(
                cluster,
                variant = %variant,
                "accelerated-ztp is not supported: no {cluster}-aztp ConfigMap is generated; the cluster gets the regular ZTP CGU once Available"
            );
            warned.insert(cluster.to_string(), variant.clone());
        }
        Some(_) => {}
        None => {
            warned.remove(cluster);
        }
    }
    let Ok(cgu) = decision.outcome else {
        return true;
    };
    create(shared, cluster, &cgu).await
}

async fn create(shared: &Shared, cluster: &str, cgu: &ClusterGroupUpgrade) -> bool {
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(shared.client.clone(), ZTP_NAMESPACE);
    match api.create(&PostParams::default(), cgu).await {
        Ok(out) => {
            tracing::info!(
                cluster,
                policies = ?out.spec.managed_policies,
                "ZTP: created CGU {ZTP_NAMESPACE}/{cluster}"
            );
            true
        }
        Err(e) if is_already_exists(&e) => {
            tracing::debug!(cluster, "ZTP: CGU already exists");
            true
        }
        Err(e) => {
            tracing::warn!(cluster, error = %e, "ZTP: CGU not created; retrying");
            false
        }
    }
}
