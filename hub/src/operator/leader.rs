//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one replica reconciles.
//!
//! The protocol is client-go's, on the Lease's `resourceVersion`:
//! - a replica takes the Lease when it does not exist, has no holder, or its holder has not
//!   renewed within `leaseDurationSeconds` (by the injected clock);
//! - the holder renews every `retry_period`; when it has not renewed for `renew_deadline` it
//!   stops leading (before anyone else may take over at `lease_duration`);
//! - on shutdown the holder releases the Lease (no holder, duration 1 s) so a successor need
//!   not wait.
//!
//! Every write is a replace guarded by `resourceVersion`: of two replicas racing, one gets 409.

use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use talm_shared::api::ObjectMeta;

use super::error::{OperatorError, is_already_exists, is_conflict};
use talm_shared::clock::Clock;

/// Lease timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a holder's claim lasts without renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// The holder stops leading when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's view of the Lease.
#[derive(Clone, Debug)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    clock: Arc<dyn Clock>,
}

impl LeaseLock {
    /// A lock on Lease `namespace/name` for the replica `identity`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            clock,
        }
    }

    /// The timing.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    fn err(&self, verb: &'static str) -> impl FnOnce(kube::Error) -> OperatorError + '_ {
        move |source| OperatorError::Api {
            verb,
            kind: "Lease",
            name: self.name.clone(),
            source,
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(15)
    }

    /// Tries to take or renew the Lease once; `Ok(true)` when this replica holds it after.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, OperatorError> {
        let now = self.clock.now();
        let Some(current) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.err("get"))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_already_exists(&e) || is_conflict(&e) => Ok(false),
                Err(e) => Err(self.err("create")(e)),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mut next = current.clone();
        let mut new_spec = spec.clone();
        if holder == self.identity {
            new_spec.renew_time = Some(MicroTime(now));
            new_spec.lease_duration_seconds = Some(self.duration_secs());
        } else {
            let duration = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(self.duration_secs()),
            ));
            let expired = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .is_none_or(|t| t.0.checked_add(duration).is_ok_and(|end| end < now));
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            new_spec.holder_identity = Some(self.identity.clone());
            new_spec.lease_duration_seconds = Some(self.duration_secs());
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.renew_time = Some(MicroTime(now));
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.err("replace")(e)),
        }
    }

    /// Gives the Lease up when this replica holds it.
    pub async fn release(&self) -> Result<(), OperatorError> {
        let Some(current) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.err("get"))?
        else {
            return Ok(());
        };
        let mut spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let mut next = current;
        next.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err("replace")(e)),
        }
    }

    /// Waits until this replica holds the Lease (retrying every `retry_period`).
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: acquire failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease every `retry_period`; returns when leadership is lost (no successful
    /// renewal within `renew_deadline`, or someone else holds the Lease).
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                // A conflict or a foreign holder: keep trying until the deadline, which comes
                // before anyone else may take the Lease over.
                Ok(false) => tracing::debug!("leader election: Lease not renewed this round"),
                Err(e) => tracing::warn!(error = %e, "leader election: renew failed"),
            }
            if last_ok.elapsed() >= self.timing.renew_deadline {
                tracing::warn!("leader election: renew deadline passed");
                return;
            }
        }
    }
}
