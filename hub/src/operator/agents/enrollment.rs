//! [`EnrollmentStore`] over Secrets in the hub's namespace ([`super::secrets`] has the
//! encoding).
//!
//! - Tokens are read from the API on every use (enrollment is rare) and consumed with a
//!   resourceVersion-guarded replace: two replicas consuming one token at once → one replace
//!   wins, the other gets 409, re-reads, and sees the token used.
//! - Enrollments are kept in a watch-fed cache ([`EnrollmentCache`], label
//!   `talm.dev/kind=agent-enrollment`), written through on every change this replica makes.
//!   `get` falls back to the API on a miss (a cluster that enrolled through another replica a
//!   moment ago); `list` (the gateway's revocation check) serves the cache only, and fails until
//!   the first list is done. Deleting an enrollment Secret (`agents revoke`, or `kubectl delete
//!   secret`) reaches every replica through the watch and ends the cluster's session.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_fn};
use talm_gateway::store::{
    Enrollment, EnrollmentStore, KEPT_SERIALS, StoreError, StoreFuture, TokenRecord,
    TokenRejection, TokenUse,
};
use talm_shared::tls::check_cluster_name;

use super::backend;
use super::secrets::{self, CLUSTER_LABEL, ENROLLMENT_SELECTOR, KIND_LABEL, KIND_TOKEN};
use crate::operator::error::{is_already_exists, is_conflict, is_not_found};

/// Attempts of a read-modify-write before giving up on conflicts.
const ATTEMPTS: usize = 16;

fn rv(s: &Secret) -> Option<u64> {
    s.metadata.resource_version.as_deref()?.parse().ok()
}

#[derive(Debug, Default)]
struct Inner {
    /// cluster → (resourceVersion, enrollment).
    map: BTreeMap<String, (Option<u64>, Enrollment)>,
    relist: Option<BTreeMap<String, (Option<u64>, Enrollment)>>,
    synced: bool,
}

/// The watch-fed enrollment cache of one replica.
#[derive(Debug)]
pub struct EnrollmentCache {
    inner: RwLock<Inner>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Default for EnrollmentCache {
    fn default() -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            synced: tokio::sync::watch::channel(false).0,
        }
    }
}

impl EnrollmentCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the first list is done.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    /// Resolves once the first list is done.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn decode(s: &Secret) -> Option<(String, (Option<u64>, Enrollment))> {
        match secrets::enrollment_from_secret(s) {
            Ok(e) => Some((e.cluster.clone(), (rv(s), e))),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an undecodable enrollment Secret");
                None
            }
        }
    }

    /// Records a Secret read or written by this replica (ignored if the cache holds a newer
    /// version).
    fn note(&self, s: &Secret) {
        let Some((cluster, entry)) = Self::decode(s) else {
            return;
        };
        let mut inner = self.write();
        let newer = match (inner.map.get(&cluster).and_then(|(v, _)| *v), entry.0) {
            (Some(have), Some(new)) => new >= have,
            _ => true,
        };
        if newer {
            inner.map.insert(cluster, entry);
        }
    }

    fn forget(&self, cluster: &str) {
        self.write().map.remove(cluster);
    }

    fn get(&self, cluster: &str) -> Option<Enrollment> {
        self.read().map.get(cluster).map(|(_, e)| e.clone())
    }

    fn apply(&self, event: Event<Secret>) {
        let mut inner = self.write();
        match event {
            Event::Init => inner.relist = Some(BTreeMap::new()),
            Event::InitApply(s) => {
                if let Some((c, e)) = Self::decode(&s) {
                    inner.relist.get_or_insert_default().insert(c, e);
                }
            }
            Event::InitDone => {
                inner.map = inner.relist.take().unwrap_or_default();
                if !inner.synced {
                    inner.synced = true;
                    self.synced.send_replace(true);
                }
            }
            Event::Apply(s) => {
                drop(inner);
                self.note(&s);
            }
            Event::Delete(s) => {
                let cluster = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(CLUSTER_LABEL).cloned())
                    .or_else(|| {
                        s.metadata
                            .name
                            .as_deref()
                            .and_then(|n| n.strip_prefix("talm-enrollment-"))
                            .map(str::to_string)
                    });
                if let Some(c) = cluster {
                    inner.map.remove(&c);
                }
            }
        }
    }

    /// Feeds the cache from a watch on `api` until the task is aborted.
    pub async fn run(self: Arc<Self>, api: Api<Secret>) {
        let stream =
            watch_fn(api, watcher::Config::default().labels(ENROLLMENT_SELECTOR)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => self.apply(ev),
                Err(e) => tracing::warn!(error = %e, "enrollment watch failed; retrying"),
            }
        }
    }
}

fn token_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// [`EnrollmentStore`] on Secrets.
#[derive(Debug, Clone)]
pub struct KubeEnrollmentStore {
    secrets: Api<Secret>,
    namespace: String,
    cache: Arc<EnrollmentCache>,
}

impl KubeEnrollmentStore {
    /// A store over the Secrets of `namespace`. Call [`KubeEnrollmentStore::spawn_watch`] (the
    /// gateway does) before relying on `list`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cache: Arc::new(EnrollmentCache::default()),
        }
    }

    /// The enrollment cache.
    pub fn cache(&self) -> &Arc<EnrollmentCache> {
        &self.cache
    }

    /// Starts the enrollment watch on the current runtime.
    pub fn spawn_watch(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.cache.clone().run(self.secrets.clone()))
    }

    fn name(&self, secret_name: &str) -> String {
        format!("Secret {}/{secret_name}", self.namespace)
    }
}

impl EnrollmentStore for KubeEnrollmentStore {
    fn add_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if !token_id_ok(&token.id) {
                return Err(StoreError::InvalidName(format!(
                    "invalid token id {:?}",
                    token.id
                )));
            }
            check_cluster_name(&token.cluster).map_err(StoreError::InvalidName)?;
            let s = secrets::token_to_secret(&self.namespace, token);
            let name = secrets::token_secret_name(&token.id);
            self.secrets
                .create(&PostParams::default(), &s)
                .await
                .map_err(backend("create", &self.name(&name)))?;
            Ok(())
        })
    }

    fn consume_token<'a>(
        &'a self,
        id: &'a str,
        secret_sha256: &'a str,
        csr_sha256: &'a str,
        now: i64,
    ) -> StoreFuture<'a, Result<String, TokenRejection>> {
        Box::pin(async move {
            if !token_id_ok(id) {
                return Ok(Err(TokenRejection::Unknown));
            }
            let name = secrets::token_secret_name(id);
            for _ in 0..ATTEMPTS {
                let Some(mut s) = self
                    .secrets
                    .get_opt(&name)
                    .await
                    .map_err(backend("get", &self.name(&name)))?
                else {
                    return Ok(Err(TokenRejection::Unknown));
                };
                let mut t = secrets::token_from_secret(&s)?;
                match t.consume(secret_sha256, csr_sha256, now) {
                    TokenUse::Rejected(r) => return Ok(Err(r)),
                    TokenUse::Retried(cluster) => return Ok(Ok(cluster)),
                    TokenUse::Consumed(_) => {}
                }
                // Keep the read's metadata (resourceVersion): the replace is the atomic step.
                s.data = secrets::token_to_secret(&self.namespace, &t).data;
                match self
                    .secrets
                    .replace(&name, &PostParams::default(), &s)
                    .await
                {
                    Ok(_) => return Ok(Ok(t.cluster)),
                    Err(e) if is_conflict(&e) => {
                        tracing::debug!(token = id, "token changed under consume; re-reading");
                        continue;
                    }
                    Err(e) if is_not_found(&e) => return Ok(Err(TokenRejection::Unknown)),
                    Err(e) => return Err(backend("replace", &self.name(&name))(e)),
                }
            }
            Err(StoreError::Backend {
                what: format!("consume token {}", self.name(&name)),
                message: format!("still conflicting after {ATTEMPTS} attempts"),
            })
        })
    }

    fn record_certificate<'a>(
        &'a self,
        cluster: &'a str,
        serial: &'a str,
        not_after: i64,
        now: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_cluster_name(cluster).map_err(StoreError::InvalidName)?;
            let name = secrets::enrollment_secret_name(cluster);
            for _ in 0..ATTEMPTS {
                let current = self
                    .secrets
                    .get_opt(&name)
                    .await
                    .map_err(backend("get", &self.name(&name)))?;
                let result = match current {
                    None => {
                        let e = Enrollment {
                            cluster: cluster.to_string(),
                            serials: vec![serial.to_string()],
                            not_after,
                            enrolled_at: now,
                        };
                        let s = secrets::enrollment_to_secret(&self.namespace, &e);
                        match self.secrets.create(&PostParams::default(), &s).await {
                            Err(e) if is_already_exists(&e) => continue,
                            r => r.map_err(|e| ("create", e)),
                        }
                    }
                    Some(mut s) => {
                        let mut e = secrets::enrollment_from_secret(&s)?;
                        e.serials.retain(|x| x != serial);
                        e.serials.insert(0, serial.to_string());
                        e.serials.truncate(KEPT_SERIALS);
                        e.not_after = not_after;
                        s.data = secrets::enrollment_to_secret(&self.namespace, &e).data;
                        match self
                            .secrets
                            .replace(&name, &PostParams::default(), &s)
                            .await
                        {
                            Err(e) if is_conflict(&e) || is_not_found(&e) => continue,
                            r => r.map_err(|e| ("replace", e)),
                        }
                    }
                };
                match result {
                    Ok(written) => {
                        self.cache.note(&written);
                        return Ok(());
                    }
                    Err((verb, e)) => return Err(backend(verb, &self.name(&name))(e)),
                }
            }
            Err(StoreError::Backend {
                what: format!("record certificate in {}", self.name(&name)),
                message: format!("still conflicting after {ATTEMPTS} attempts"),
            })
        })
    }

    fn get<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<Enrollment>> {
        Box::pin(async move {
            if check_cluster_name(cluster).is_err() {
                return Ok(None);
            }
            if let Some(e) = self.cache.get(cluster) {
                return Ok(Some(e));
            }
            let name = secrets::enrollment_secret_name(cluster);
            match self
                .secrets
                .get_opt(&name)
                .await
                .map_err(backend("get", &self.name(&name)))?
            {
                None => Ok(None),
                Some(s) => {
                    let e = secrets::enrollment_from_secret(&s)?;
                    self.cache.note(&s);
                    Ok(Some(e))
                }
            }
        })
    }

    fn list(&self) -> StoreFuture<'_, BTreeMap<String, Enrollment>> {
        Box::pin(async move {
            let inner = self.cache.read();
            if !inner.synced {
                return Err(StoreError::Backend {
                    what: format!("enrollment Secrets in {}", self.namespace),
                    message: "the watch has not finished its first list yet".into(),
                });
            }
            Ok(inner
                .map
                .iter()
                .map(|(c, (_, e))| (c.clone(), e.clone()))
                .collect())
        })
    }

    fn revoke<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            check_cluster_name(cluster).map_err(StoreError::InvalidName)?;
            let selector = format!("{KIND_LABEL}={KIND_TOKEN},{CLUSTER_LABEL}={cluster}");
            let tokens = self
                .secrets
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(backend(
                    "list",
                    &format!("Secrets {} -l {selector}", self.namespace),
                ))?;
            for s in tokens.items {
                let unused = secrets::token_from_secret(&s).is_ok_and(|t| t.used_at.is_none());
                let name = s.metadata.name.clone().unwrap_or_default();
                if unused {
                    match self.secrets.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(backend("delete", &self.name(&name))(e)),
                    }
                }
            }
            let name = secrets::enrollment_secret_name(cluster);
            let out = match self.secrets.delete(&name, &DeleteParams::default()).await {
                Ok(_) => true,
                Err(e) if is_not_found(&e) => false,
                Err(e) => return Err(backend("delete", &self.name(&name))(e)),
            };
            self.cache.forget(cluster);
            Ok(out)
        })
    }
}
