//! One reconcile of one CGU: read it and the snapshot from the cache, run the engine at the
//! clock's `now`, apply the decision (writes, finalizer, status, events) and map its requeue.
//!
//! A decision made from a CGU that has changed since (the status or finalizer write gets 409)
//! is dropped, not retried as is: the CGU is read again and the engine decides again, so
//! events are never published twice for one transition.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use talm_hub_core::{Context, Requeue};
use talm_shared::api::cgu::ClusterGroupUpgrade;
use tracing::Instrument;

use super::cache::CguRef;
use super::error::OperatorError;
use super::writes::{self, Outcome};
use super::{CguMeta, Shared};

/// Decisions attempted per reconcile before giving up on conflicts.
pub const MAX_ATTEMPTS: usize = 4;
/// The delay for `Requeue::Immediately` (the cache already holds the written objects).
pub const IMMEDIATE: Duration = Duration::ZERO;
/// The delay for `Requeue::Immediately` when the decision changed nothing: the engine would
/// decide the same again, so an immediate requeue would spin.
pub const IDLE_IMMEDIATE: Duration = Duration::from_secs(1);
/// The first back-off after a failure; it doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// The longest back-off after failures (TALM's longest requeue).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Maps the engine's requeue to the controller's action.
pub fn action(requeue: Requeue) -> Action {
    match requeue {
        Requeue::Never => Action::await_change(),
        Requeue::Immediately => Action::requeue(IMMEDIATE),
        Requeue::After(s) => Action::requeue(Duration::from_secs(s)),
    }
}

/// The controller's reconcile function.
pub async fn reconcile(obj: Arc<CguMeta>, shared: Arc<Shared>) -> Result<Action, OperatorError> {
    let key = CguRef::of_meta(&obj.metadata);
    let span = tracing::info_span!("reconcile", cgu = %key);
    let result = {
        let _measure = shared.metrics.measure();
        reconcile_cgu(&key, &shared).instrument(span).await
    };
    match &result {
        Ok(_) => {
            shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        Err(e) => shared.metrics.failed(e.metric_label()),
    }
    result
}

/// The controller's error policy: log, and back off exponentially per CGU.
pub fn error_policy(obj: Arc<CguMeta>, error: &OperatorError, shared: Arc<Shared>) -> Action {
    let key = CguRef::of_meta(&obj.metadata);
    let n = {
        let mut f = shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(n);
    tracing::warn!(cgu = %key, error = %error, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The back-off after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    BASE_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

async fn reconcile_cgu(key: &CguRef, shared: &Shared) -> Result<Action, OperatorError> {
    let mut fetched_graphs = false;
    let mut attempt = 0;
    while attempt < MAX_ATTEMPTS {
        attempt += 1;
        let now = shared.clock.now();
        let started = std::time::Instant::now();
        let decided = {
            let cache = shared.cache_read();
            cache
                .snapshot()
                .cgu_shared(&key.namespace, &key.name)
                .map(|cgu| {
                    let ctx = Context {
                        now,
                        graph: &*shared.graph,
                    };
                    let d = talm_hub_core::reconcile(&cgu, cache.snapshot(), &ctx);
                    (cgu, d)
                })
        };
        shared.metrics.phase("decide", started.elapsed());
        let Some((cgu, mut decision)) = decided else {
            return Ok(Action::await_change());
        };
        // The engine asked for update graphs not fetched yet: fetch them (outside the cache
        // lock) and decide again, once per reconcile.
        if let Some(g) = &shared.graph_fetcher
            && g.has_missing()
            && !fetched_graphs
        {
            fetched_graphs = true;
            g.fetch_missing().await;
            attempt -= 1;
            continue;
        }
        tracing::debug!(
            attempt,
            writes = decision.writes.len(),
            events = decision.events.len(),
            finalizer = ?decision.finalizer,
            requeue = ?decision.requeue,
            "decided"
        );
        let started = std::time::Instant::now();
        writes::apply_writes(shared, &decision.writes).await?;
        shared.metrics.phase("writes", started.elapsed());
        let started = std::time::Instant::now();
        let outcome = writes::apply_cgu(shared, &cgu, &mut decision).await?;
        shared.metrics.phase("status", started.elapsed());
        match outcome {
            Outcome::Done { changed } => {
                let started = std::time::Instant::now();
                writes::publish_events(shared, &cgu, &decision.events, now).await;
                shared.metrics.phase("events", started.elapsed());
                if let Some(updated) = shared
                    .cache_read()
                    .snapshot()
                    .cgu(&key.namespace, &key.name)
                {
                    shared.metrics.observe_cgu(&key.to_string(), updated, now);
                }
                let idle = !changed && decision.writes.is_empty();
                if idle && decision.requeue == Requeue::Immediately {
                    tracing::debug!("immediate requeue without changes; delaying it");
                    return Ok(Action::requeue(IDLE_IMMEDIATE));
                }
                return Ok(action(decision.requeue));
            }
            Outcome::Gone => {
                writes::publish_events(shared, &cgu, &decision.events, now).await;
                shared.metrics.forget_cgu(&key.to_string());
                return Ok(Action::await_change());
            }
            Outcome::Stale => {
                tracing::debug!(attempt, "CGU changed under the decision; reading it again");
                refresh(shared, key).await?;
            }
        }
    }
    Err(OperatorError::Conflict {
        cgu: key.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Reads the CGU from the API into the cache (after a conflict).
async fn refresh(shared: &Shared, key: &CguRef) -> Result<(), OperatorError> {
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(shared.client.clone(), &key.namespace);
    match api.get_opt(&key.name).await {
        Ok(Some(fresh)) => shared.cache_write().record_write(fresh),
        Ok(None) => {
            shared
                .cache_write()
                .record_delete(super::cache::Kind::Cgu, &key.namespace, &key.name)
        }
        Err(source) => {
            return Err(OperatorError::Api {
                verb: "get",
                kind: "ClusterGroupUpgrade",
                name: key.to_string(),
                source,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn requeue_maps_to_actions() {
        assert_eq!(action(Requeue::Never), Action::await_change());
        assert_eq!(
            action(Requeue::Immediately),
            Action::requeue(Duration::ZERO)
        );
        assert_eq!(
            action(Requeue::After(30)),
            Action::requeue(Duration::from_secs(30))
        );
    }
}
