//! The automatic rollback watchdog, hub side (talm extension, CGU `spec.recovery`; issue 18).
//!
//! This module holds the rules that do not need a reconcile: checking `spec.recovery` (valid
//! only with `spec.backup: true`; `healthTimeout` a bounded Go duration), the watchdog task id,
//! the task the hub assigns, what an agent's rollback report means for the CGU, and how a
//! rolled-back cluster is recorded in `status.clusters`. The reconcile steps that use them live
//! in `reconcile/rollback.rs`.

use jiff::Timestamp;
use talm_shared::api::Time;
use talm_shared::api::cgu::{ClusterGroupUpgrade, ClusterGroupUpgradeSpec};
use talm_shared::api::spokeagent::{RollbackTask, SpokeAgent};
use talm_shared::task_state::TaskState;

use talm_shared::api::rhacm::Policy;

use crate::validate::{self, ValidationFailure};

/// `status.clusters[].state` of a cluster whose agent rolled it back (`RolledBack`).
pub const STATE_ROLLED_BACK: &str = "rolledback";
/// `status.clusters[].state` of a cluster whose agent tried to roll it back and failed
/// (`RollbackFailed`): the node needs a person.
pub const STATE_ROLLBACK_FAILED: &str = "rollbackfailed";

/// The default `spec.recovery.healthTimeout`.
pub const DEFAULT_HEALTH_TIMEOUT: &str = "90m";
/// The shortest `healthTimeout` accepted (seconds): an upgrade cannot be healthy sooner, and a
/// shorter watchdog would roll back good upgrades.
pub const MIN_HEALTH_TIMEOUT_SECS: i64 = 10 * 60;
/// The longest `healthTimeout` accepted (seconds).
pub const MAX_HEALTH_TIMEOUT_SECS: i64 = 24 * 60 * 60;

/// Whether a `status.clusters[].state` is a failure for a failure budget: `timedout`, and the
/// rollback outcomes `rolledback` and `rollbackfailed`.
pub fn counts_as_failed(cluster_state: &str) -> bool {
    matches!(
        cluster_state,
        "timedout" | STATE_ROLLED_BACK | STATE_ROLLBACK_FAILED
    )
}

/// The watchdog settings of a CGU, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The health timeout in seconds.
    pub health_timeout_secs: i64,
}

/// The watchdog settings when `spec.recovery.automatic` is true and valid; `None` otherwise
/// (an invalid spec never reaches the rollout: [`spec_failure`] stops it at validation).
pub fn automatic(spec: &ClusterGroupUpgradeSpec) -> Option<Recovery> {
    let r = spec.recovery.as_ref().filter(|r| r.automatic)?;
    if spec.backup != Some(true) {
        return None;
    }
    let secs = health_timeout_secs(
        r.health_timeout
            .as_deref()
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT),
    )
    .ok()?;
    Some(Recovery {
        health_timeout_secs: secs,
    })
}

/// What is wrong with `spec.recovery`, as `(field, problem)`, or `None` when it is fine.
pub fn spec_problem(spec: &ClusterGroupUpgradeSpec) -> Option<(&'static str, String)> {
    let r = spec.recovery.as_ref()?;
    if let Some(t) = r.health_timeout.as_deref()
        && let Err(e) = health_timeout_secs(t)
    {
        return Some(("spec.recovery.healthTimeout", e));
    }
    if r.automatic && spec.backup != Some(true) {
        return Some((
            "spec.recovery.automatic",
            "true needs spec.backup: true (the rollback restores that backup)".into(),
        ));
    }
    None
}

/// `spec.recovery` problems as a `Validated=False` failure.
pub fn spec_failure(spec: &ClusterGroupUpgradeSpec) -> Option<ValidationFailure> {
    let (field, problem) = spec_problem(spec)?;
    Some(ValidationFailure {
        reason: crate::conditions::reasons::INVALID_RECOVERY,
        message: format!("{field} {problem}"),
        event_kind: "invalid recovery",
        event_items: vec![field.to_string()],
        requeue_secs: 300,
    })
}

/// A `healthTimeout` in seconds: a Go duration within the bounds.
pub fn health_timeout_secs(s: &str) -> Result<i64, String> {
    let secs = go_duration_secs(s)?;
    if !(MIN_HEALTH_TIMEOUT_SECS..=MAX_HEALTH_TIMEOUT_SECS).contains(&secs) {
        return Err(format!("{s:?} is out of range: must be from 10m to 24h"));
    }
    Ok(secs)
}

/// Parses a Go duration (`"90m"`, `"1h30m"`, `"1.5h"`, `"300s"`; units `ns us µs ms s m h`),
/// truncated to whole seconds. Negative values and an empty string are errors.
pub fn go_duration_secs(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("{s:?} is not a duration ({why}; e.g. \"90m\" or \"1h30m\")");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s == "0" {
        return Ok(0);
    }
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let rest = s.strip_prefix('+').unwrap_or(s);
    let mut nanos: u128 = 0;
    let mut chars = rest.char_indices().peekable();
    if chars.peek().is_none() {
        return Err(bad("no number"));
    }
    while chars.peek().is_some() {
        let start = chars.peek().map_or(0, |(i, _)| *i);
        let mut end = start;
        while let Some((i, c)) = chars.peek().copied() {
            if c.is_ascii_digit() || c == '.' {
                end = i + c.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let number = &rest[start..end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad("a number is missing or malformed"));
        }
        let ustart = end;
        let mut uend = end;
        while let Some((i, c)) = chars.peek().copied() {
            if c.is_ascii_digit() || c == '.' {
                break;
            }
            uend = i + c.len_utf8();
            chars.next();
        }
        let unit: u128 = match &rest[ustart..uend] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("a unit is missing")),
            u => return Err(bad(&format!("unknown unit {u:?}"))),
        };
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad("number too large"))?
        };
        let mut part = int.checked_mul(unit).ok_or_else(|| bad("too large"))?;
        let mut scale = unit;
        for d in frac.bytes().take(18) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        nanos = nanos.checked_add(part).ok_or_else(|| bad("too large"))?;
    }
    i64::try_from(nanos / 1_000_000_000).map_err(|_| bad("too large"))
}

/// The watchdog task id of this CGU: `<ns>/<name>/<uid>/rollback`.
pub fn task_id(cgu: &ClusterGroupUpgrade) -> String {
    format!("{}rollback", crate::tasks::task_id_prefix(cgu))
}

/// The task that arms the watchdog.
pub fn task(
    cgu: &ClusterGroupUpgrade,
    r: Recovery,
    now: Timestamp,
    target_version: Option<String>,
) -> RollbackTask {
    RollbackTask {
        id: task_id(cgu),
        armed_at: Time(now),
        health_timeout_seconds: r.health_timeout_secs,
        target_version,
    }
}

/// The OpenShift version the CGU's ClusterVersion policy upgrades to, if one of `policies`
/// holds a ClusterVersion with a literal (untemplated) `spec.desiredUpdate.version`.
pub fn target_version(policies: &[&Policy]) -> Option<String> {
    policies
        .iter()
        .filter_map(|p| validate::policy_objects(p).ok())
        .flatten()
        .filter(|o| o.kind() == "ClusterVersion" && !o.must_not_have())
        .filter_map(|o| {
            o.object
                .pointer("/spec/desiredUpdate/version")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        })
        .find(|v| !v.is_empty() && !v.contains("{{"))
}

/// What a cluster's agent says about this CGU's watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// Not in the SpokeAgent spec, and no final report for it: arm it.
    NotArmed,
    /// In the spec; the agent has not accepted it yet, or watches (`Armed`), or recovers
    /// (`RollingBack`).
    Armed,
    /// Over without a rollback: healthy in time, disarmed by a person (`Cancelled`), or the
    /// agent could not arm it (rejected: an agent without the watchdog). Never re-armed in this
    /// CGU, and never a failure.
    Over,
    /// The agent rolled the node back.
    RolledBack,
    /// The agent tried to roll the node back and failed.
    RollbackFailed,
}

/// The watchdog's state for `cgu` on `agent`. Only the report for this CGU's task id counts.
pub fn watch(cgu: &ClusterGroupUpgrade, agent: Option<&SpokeAgent>) -> Watch {
    let id = task_id(cgu);
    let report = agent
        .and_then(|a| a.status.as_ref())
        .and_then(|s| s.rollback.as_ref())
        .filter(|r| r.id == id)
        .and_then(|r| TaskState::from_name(&r.state));
    match report {
        Some(TaskState::RolledBack) => return Watch::RolledBack,
        Some(TaskState::RollbackFailed) => return Watch::RollbackFailed,
        Some(s) if s.is_final() => return Watch::Over,
        _ => {}
    }
    let in_spec = agent
        .and_then(|a| a.spec.rollback.as_ref())
        .is_some_and(|t| t.id == id);
    if in_spec {
        Watch::Armed
    } else {
        Watch::NotArmed
    }
}

/// The message the agent gave with its rollback report for this CGU, if any.
pub fn report_message(cgu: &ClusterGroupUpgrade, agent: Option<&SpokeAgent>) -> String {
    let id = task_id(cgu);
    agent
        .and_then(|a| a.status.as_ref())
        .and_then(|s| s.rollback.as_ref())
        .filter(|r| r.id == id)
        .map(|r| r.message.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use talm_shared::api::cgu::RecoverySpec;

    #[test]
    fn go_durations() {
        for (s, want) in [
            ("90m", 5400),
            ("1h30m", 5400),
            ("1.5h", 5400),
            ("5400s", 5400),
            ("24h", 86400),
            ("1h0m30.9s", 3630),
            ("0", 0),
            ("+10m", 600),
        ] {
            assert_eq!(go_duration_secs(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "90",
            "m",
            "-5m",
            "1x",
            "1..5h",
            "h1",
            "9999999999999999999999h",
        ] {
            let e = go_duration_secs(s).unwrap_err();
            assert!(e.contains("is not a duration"), "{s}: {e}");
        }
    }

    #[test]
    fn health_timeout_bounds() {
        assert_eq!(health_timeout_secs("10m"), Ok(600));
        assert_eq!(health_timeout_secs("24h"), Ok(86400));
        assert!(
            health_timeout_secs("9m59s")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            health_timeout_secs("24h1s")
                .unwrap_err()
                .contains("out of range")
        );
    }

    fn spec(
        backup: Option<bool>,
        automatic: bool,
        timeout: Option<&str>,
    ) -> ClusterGroupUpgradeSpec {
        ClusterGroupUpgradeSpec {
            backup,
            recovery: Some(RecoverySpec {
                automatic,
                health_timeout: timeout.map(Into::into),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn recovery_needs_backup_and_a_valid_timeout() {
        assert_eq!(
            automatic(&spec(Some(true), true, None)),
            Some(Recovery {
                health_timeout_secs: 5400
            })
        );
        assert_eq!(automatic(&spec(Some(true), false, None)), None);
        assert_eq!(spec_problem(&spec(Some(true), true, Some("2h"))), None);
        let f = spec_failure(&spec(None, true, None)).unwrap();
        assert_eq!(
            f.message,
            "spec.recovery.automatic true needs spec.backup: true (the rollback restores that backup)"
        );
        assert_eq!(automatic(&spec(Some(false), true, None)), None);
        let f = spec_failure(&spec(Some(true), true, Some("soon"))).unwrap();
        assert!(
            f.message
                .starts_with("spec.recovery.healthTimeout \"soon\" is not a duration")
        );
        // Not automatic: nothing to check but the timeout's syntax.
        assert!(spec_failure(&spec(None, false, None)).is_none());
        assert!(spec_failure(&ClusterGroupUpgradeSpec::default()).is_none());
    }

    #[test]
    fn failed_states_for_a_budget() {
        for s in ["timedout", "rolledback", "rollbackfailed"] {
            assert!(counts_as_failed(s), "{s}");
        }
        assert!(!counts_as_failed("complete"));
    }
}
