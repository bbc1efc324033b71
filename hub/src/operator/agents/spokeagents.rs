//! [`SpokeAgentStore`] over the SpokeAgent API. A cluster's SpokeAgent is
//! `<cluster>/<cluster>` (namespace and name are the cluster's name).
//!
//! - Specs and statuses are read from the operator's watch-fed cache ([`Shared`]), never listed
//!   per call, and the cache announces every spec change ([`SpokeAgentStore::spec_changes`]),
//!   so a new task or pre-cache grant reaches the agent without waiting for a poll; reads fail until the SpokeAgent watch has finished its first list (so the gateway
//!   never mistakes a partial view for removed tasks).
//! - Status is written with `PUT .../status` guarded by the resourceVersion (first from the
//!   cache, then from a fresh read after a 409). A replica never overwrites another replica's
//!   live session with its own "disconnected": a `connected: false` write is skipped when the
//!   stored status says connected and is not what this replica last wrote (the agent moved to
//!   another replica).
//! - A written status goes into the cache at once, and the CGUs of the cluster are reconciled
//!   then: the watch echo of a write the cache recorded triggers nothing, so without this an
//!   agent's report reached the engine only at the CGU's next timed requeue.
//! - The engine creates a SpokeAgent when it assigns a task (`writes.rs`); the gateway creates
//!   one (empty spec) when an agent connects and its cluster has none yet, so every connected
//!   agent is visible (`kubectl get spokeagents -A`) and the engine can choose the agent for
//!   InstallPlan approval. A "disconnected" status for a missing SpokeAgent, or one whose
//!   cluster namespace does not exist, is [`StoreError::NotFound`], which the gateway's writer
//!   treats as "nothing to persist yet".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use talm_gateway::store::{SpokeAgentStore, StoreError, StoreFuture};
use talm_shared::api::spokeagent::{SpokeAgent, SpokeAgentSpec, SpokeAgentStatus};
use talm_shared::tls::check_cluster_name;

use super::backend;
use crate::operator::Shared;
use crate::operator::cache::Kind;
use crate::operator::error::{is_already_exists, is_conflict, is_not_found};

const ATTEMPTS: usize = 8;

/// [`SpokeAgentStore`] over the operator's cache and the SpokeAgent API.
#[derive(Debug)]
pub struct KubeSpokeAgentStore {
    shared: Arc<Shared>,
    /// The last status this replica wrote per cluster.
    written: Mutex<HashMap<String, SpokeAgentStatus>>,
}

fn what(cluster: &str) -> String {
    format!("SpokeAgent {cluster}/{cluster}")
}

impl KubeSpokeAgentStore {
    /// A store reading `shared`'s cache and writing through its client.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn api(&self, cluster: &str) -> Api<SpokeAgent> {
        Api::namespaced(self.shared.client.clone(), cluster)
    }

    fn synced(&self) -> Result<(), StoreError> {
        if self.shared.cache_read().kind_synced(Kind::SpokeAgent) {
            Ok(())
        } else {
            Err(StoreError::Backend {
                what: "SpokeAgents".into(),
                message: "the watch has not finished its first list yet".into(),
            })
        }
    }

    fn cached(&self, cluster: &str) -> Option<SpokeAgent> {
        self.shared
            .cache_read()
            .snapshot()
            .spoke_agent(cluster, cluster)
            .cloned()
    }

    fn remember(&self, cluster: &str, status: &SpokeAgentStatus) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cluster.to_string(), status.clone());
    }

    fn last_written(&self, cluster: &str) -> Option<SpokeAgentStatus> {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster)
            .cloned()
    }
}

impl SpokeAgentStore for KubeSpokeAgentStore {
    fn specs(&self) -> StoreFuture<'_, BTreeMap<String, SpokeAgentSpec>> {
        Box::pin(async move {
            self.synced()?;
            let cache = self.shared.cache_read();
            Ok(cache
                .spoke_agents()
                .filter(|a| a.metadata.namespace == a.metadata.name)
                .filter_map(|a| Some((a.metadata.name.clone()?, a.spec.clone())))
                .collect())
        })
    }

    fn spec_changes(&self) -> Option<Arc<talm_gateway::store::SpecChanges>> {
        Some(self.shared.cache_read().agent_spec_changes())
    }

    fn spec<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<SpokeAgentSpec>> {
        Box::pin(async move {
            self.synced()?;
            Ok(self.cached(cluster).map(|a| a.spec))
        })
    }

    fn put_spec<'a>(&'a self, cluster: &'a str, spec: &'a SpokeAgentSpec) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_cluster_name(cluster).map_err(StoreError::InvalidName)?;
            let api = self.api(cluster);
            let mut value = serde_json::to_value(spec).map_err(|e| StoreError::BadData {
                what: format!("{} spec", what(cluster)),
                message: e.to_string(),
            })?;
            if let Value::Object(m) = &mut value {
                for k in ["precache", "backup", "checkSpace", "installPlans"] {
                    m.entry(k).or_insert(Value::Null);
                }
            }
            match api
                .patch(
                    cluster,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": value })),
                )
                .await
            {
                Ok(out) => {
                    self.shared.cache_write().record_write(out);
                    Ok(())
                }
                Err(e) if is_not_found(&e) => {
                    let mut agent = SpokeAgent::new(cluster, spec.clone());
                    agent.metadata.namespace = Some(cluster.to_string());
                    let out = api
                        .create(&PostParams::default(), &agent)
                        .await
                        .map_err(backend("create", &what(cluster)))?;
                    self.shared.cache_write().record_write(out);
                    Ok(())
                }
                Err(e) => Err(backend("patch", &what(cluster))(e)),
            }
        })
    }

    fn status<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<SpokeAgentStatus>> {
        Box::pin(async move {
            self.synced()?;
            Ok(self.cached(cluster).and_then(|a| a.status))
        })
    }

    fn write_status<'a>(
        &'a self,
        cluster: &'a str,
        status: &'a SpokeAgentStatus,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_cluster_name(cluster).map_err(StoreError::InvalidName)?;
            let api = self.api(cluster);
            let mut current = self.cached(cluster);
            for attempt in 0..ATTEMPTS {
                if attempt > 0 || current.is_none() {
                    current = api
                        .get_opt(cluster)
                        .await
                        .map_err(backend("get", &what(cluster)))?;
                }
                let mut obj = match current.take() {
                    Some(o) => o,
                    None if !status.connected => return Err(StoreError::NotFound(what(cluster))),
                    None => {
                        let mut agent = SpokeAgent::new(cluster, SpokeAgentSpec::default());
                        agent.metadata.namespace = Some(cluster.to_string());
                        match api.create(&PostParams::default(), &agent).await {
                            Ok(out) => {
                                tracing::info!(cluster, "SpokeAgent created for a connected agent");
                                self.shared.cache_write().record_write(out.clone());
                                out
                            }
                            // Created meanwhile (by the engine or another replica): read it.
                            Err(e) if is_already_exists(&e) => continue,
                            Err(e) if is_not_found(&e) => {
                                return Err(StoreError::NotFound(what(cluster)));
                            }
                            Err(e) => return Err(backend("create", &what(cluster))(e)),
                        }
                    }
                };
                if obj.status.as_ref() == Some(status) {
                    self.remember(cluster, status);
                    return Ok(());
                }
                if !status.connected
                    && let Some(cur) = &obj.status
                    && cur.connected
                    && self.last_written(cluster).as_ref() != Some(cur)
                {
                    tracing::debug!(
                        cluster,
                        "status write skipped: another replica holds the agent's session"
                    );
                    return Ok(());
                }
                obj.status = Some(status.clone());
                match api
                    .replace_status(cluster, &PostParams::default(), &obj)
                    .await
                {
                    Ok(out) => {
                        self.remember(cluster, status);
                        // The engine has not seen this report: reconcile the CGUs of the cluster
                        // now (the watch echo of a recorded write triggers nothing).
                        let triggers = self.shared.cache_write().record_report(out);
                        self.shared.route(triggers);
                        // A pre-cache report (a total, registries, a result) the scheduler reads.
                        self.shared.wake_scheduler_if_dirty();
                        return Ok(());
                    }
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) if is_not_found(&e) => return Err(StoreError::NotFound(what(cluster))),
                    Err(e) => return Err(backend("replace status", &what(cluster))(e)),
                }
            }
            Err(StoreError::Backend {
                what: format!("write status of {}", what(cluster)),
                message: format!("still conflicting after {ATTEMPTS} attempts"),
            })
        })
    }
}
