//! Pause and alert holds (talm extension; docs/contract.md §11.1).
//!
//! A CGU is held when `spec.paused` is true (reason `Paused`) or when its annotation
//! `talm.dev/held-by` names firing alerts (reason `HeldByAlert`, written by the alert
//! receiver of any replica); the user's `spec.paused` wins. Each pass records the hold here:
//! the `Paused` condition (True while held, False/`Resumed` after), an event on each
//! transition, and, once the rollout's clock has started (`startedAt`), the interval that does
//! not count against the timeouts: `status.status.pausedAt` opens it and resume adds it to
//! `excludedSeconds` ([`crate::timeouts::excluded`]). What a hold stops is decided by the
//! phases: the not-started path does not start, and the in-progress path starts no batch,
//! releases no cluster and runs no action, while released clusters stay enforced.

use talm_shared::api::Time;

use super::Run;
use crate::conditions::{self as cond, reasons, types};
use crate::events;

/// CGU annotation: the comma-separated names of the firing alerts that hold the CGU.
pub const HELD_BY_ANNOTATION: &str = "talm.dev/held-by";

/// Why a CGU is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Hold {
    /// `spec.paused: true`.
    User,
    /// The alerts named in [`HELD_BY_ANNOTATION`].
    Alerts(String),
}

/// The alert names in a `talm.dev/held-by` value: trimmed, empty entries dropped.
pub fn held_by(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl Run<'_> {
    /// The hold on this CGU, if any: `spec.paused` first, then the alert annotation.
    pub(super) fn hold(&self) -> Option<Hold> {
        if self.cgu.spec.paused == Some(true) {
            return Some(Hold::User);
        }
        let names = held_by(
            self.cgu
                .metadata
                .annotations
                .as_ref()?
                .get(HELD_BY_ANNOTATION)?,
        );
        (!names.is_empty()).then(|| Hold::Alerts(names.join(",")))
    }

    /// Records this pass's hold state (condition, events, excluded interval) and returns true
    /// while the CGU is held.
    pub(super) fn apply_hold(&mut self) -> bool {
        let now = self.now;
        let clock_started = self
            .status
            .status
            .as_ref()
            .is_some_and(|s| s.started_at.is_some());
        let was = cond::find(&self.status.conditions, types::PAUSED)
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.last_transition_time.0));
        match self.hold() {
            Some(hold) => {
                if clock_started {
                    let us = self.upgrade_status();
                    if us.paused_at.is_none() {
                        us.paused_at = Some(Time(now));
                    }
                }
                let since = self
                    .status
                    .status
                    .as_ref()
                    .and_then(|s| s.paused_at.as_ref())
                    .map(|t| t.0)
                    .or(was.as_ref().map(|w| w.1))
                    .unwrap_or(now);
                let (reason, message) = match &hold {
                    Hold::User => (
                        reasons::PAUSED,
                        format!("Paused since {since}: spec.paused is true"),
                    ),
                    Hold::Alerts(names) => (
                        reasons::HELD_BY_ALERT,
                        format!(
                            "Held since {since} by firing alerts: {names} (annotation {HELD_BY_ANNOTATION})"
                        ),
                    ),
                };
                self.set_cond(types::PAUSED, true, reason, &message);
                if was.as_ref().map(|w| w.0.as_str()) != Some(reason) {
                    self.events.push(events::paused(
                        self.cgu,
                        matches!(hold, Hold::Alerts(_)),
                        &message,
                    ));
                }
                let resume = match hold {
                    Hold::User => "set spec.paused to false to resume".to_string(),
                    Hold::Alerts(_) => format!(
                        "held until the alerts resolve (or annotation {HELD_BY_ANNOTATION} is removed)"
                    ),
                };
                self.notes
                    .pending_actions
                    .push(format!("{message}; {resume}"));
                true
            }
            None => {
                self.close_pause();
                if let Some((_, since)) = was {
                    let message = format!("Resumed at {now}, paused since {since}");
                    self.set_cond(types::PAUSED, false, reasons::RESUMED, &message);
                    self.events.push(events::resumed(self.cgu, &message));
                }
                false
            }
        }
    }

    /// Closes the open pause interval, if any, adding it to `excludedSeconds`.
    pub(super) fn close_pause(&mut self) {
        let now = self.now;
        let Some(us) = self.status.status.as_mut() else {
            return;
        };
        if let Some(at) = us.paused_at.take() {
            let secs = now.duration_since(at.0).as_secs().max(0);
            us.excluded_seconds = Some(us.excluded_seconds.unwrap_or(0).saturating_add(secs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::held_by;

    #[test]
    fn held_by_lists_the_non_empty_trimmed_names() {
        assert_eq!(held_by("A, B,,  ,C "), ["A", "B", "C"]);
        assert!(held_by("").is_empty());
        assert!(held_by(" , ").is_empty());
    }
}
