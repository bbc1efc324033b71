//! Maintenance windows (`spec.maintenanceWindows`, a talm extension): parse and check them, and
//! answer the engine's three questions at an instant: is a window open, how long does it stay
//! open, and when does the next one open.
//!
//! A window opens on each of its days at its local `start` in its time zone and stays open for
//! `duration` of elapsed time. Local times are turned into instants with jiff and its bundled
//! copy of the IANA time-zone database (never the host's, so the engine stays pure and every
//! replica agrees): a start skipped by a spring-forward change opens that much later (02:30 →
//! 03:30), a start repeated by a fall-back change opens at its first occurrence. Windows that
//! overlap or touch count as one open period.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp};
use talm_shared::api::cgu::{ClusterGroupUpgradeSpec, MaintenanceWindow};

/// The longest window accepted.
pub const MAX_DURATION: SignedDuration = SignedDuration::from_hours(168);

/// How far ahead the engine looks for the next opening (every window opens at least once a
/// week, so this always finds one).
const HORIZON: SignedDuration = SignedDuration::from_hours(24 * 16);

/// What is wrong with `spec.maintenanceWindows`: the field path and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct WindowError {
    /// The offending field, e.g. `spec.maintenanceWindows[1].start`.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One checked window.
#[derive(Clone, Debug)]
struct Window {
    /// Indexed by `Weekday::to_monday_zero_offset`.
    days: [bool; 7],
    start: Time,
    duration: SignedDuration,
    tz: TimeZone,
}

/// A checked, non-empty set of maintenance windows.
#[derive(Clone, Debug)]
pub struct Schedule {
    windows: Vec<Window>,
}

/// An open period: from `opens` (included) to `closes` (excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    /// When it opens.
    pub opens: Timestamp,
    /// When it closes.
    pub closes: Timestamp,
}

impl Period {
    /// How long it is open.
    pub fn length(&self) -> SignedDuration {
        self.closes.duration_since(self.opens)
    }
}

/// The CGU's schedule: `Ok(None)` without `spec.maintenanceWindows`.
pub fn schedule(spec: &ClusterGroupUpgradeSpec) -> Result<Option<Schedule>, WindowError> {
    spec.maintenance_windows.as_deref().map(parse).transpose()
}

/// Checks the windows of `spec.maintenanceWindows`.
pub fn parse(windows: &[MaintenanceWindow]) -> Result<Schedule, WindowError> {
    if windows.is_empty() {
        return Err(WindowError {
            path: "spec.maintenanceWindows".into(),
            problem:
                "must list at least one window (remove the field to start batches at any time)"
                    .into(),
        });
    }
    let db = TimeZoneDatabase::bundled();
    let windows = windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let err = |field: &str, problem: String| WindowError {
                path: format!("spec.maintenanceWindows[{i}].{field}"),
                problem,
            };
            let mut days = [w.days.is_empty(); 7];
            for (j, d) in w.days.iter().enumerate() {
                let day = weekday(d).ok_or_else(|| {
                    err(
                        &format!("days[{j}]"),
                        format!("{d:?} is not a day: use Mon, Tue, Wed, Thu, Fri, Sat or Sun"),
                    )
                })?;
                days[day.to_monday_zero_offset() as usize] = true;
            }
            let start = start_time(&w.start).map_err(|p| err("start", p))?;
            let duration = duration(&w.duration).map_err(|p| err("duration", p))?;
            let tz = match w.time_zone.as_deref() {
                None => TimeZone::UTC,
                Some("") => {
                    return Err(err(
                        "timeZone",
                        "must not be empty (omit it for UTC)".into(),
                    ));
                }
                Some(name) => db.get(name).map_err(|_| {
                    err(
                        "timeZone",
                        format!(
                            "unknown time zone {name:?}: use an IANA name such as Europe/Berlin, America/New_York or UTC"
                        ),
                    )
                })?,
            };
            Ok(Window {
                days,
                start,
                duration,
                tz,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Schedule { windows })
}

fn weekday(s: &str) -> Option<Weekday> {
    let lower = s.to_ascii_lowercase();
    let day = match lower.as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    };
    Some(day)
}

/// `HH:MM`, 24-hour.
fn start_time(s: &str) -> Result<Time, String> {
    if s.is_empty() {
        return Err("must not be empty: give the opening time as HH:MM (24-hour)".into());
    }
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 5 || b[2] != b':' || !digits(0..2) || !digits(3..5) {
        return Err(format!(
            "{s:?} is not HH:MM (24-hour, e.g. \"02:00\" or \"22:30\")"
        ));
    }
    let hour = i8::try_from((b[0] - b'0') * 10 + (b[1] - b'0')).unwrap_or(i8::MAX);
    let minute = i8::try_from((b[3] - b'0') * 10 + (b[4] - b'0')).unwrap_or(i8::MAX);
    if hour > 23 {
        return Err(format!(
            "{s:?} is not a time of day: the hour must be 00 to 23"
        ));
    }
    if minute > 59 {
        return Err(format!(
            "{s:?} is not a time of day: the minute must be 00 to 59"
        ));
    }
    Time::new(hour, minute, 0, 0).map_err(|e| format!("{s:?} is not a time of day: {e}"))
}

/// `4h`, `90m`, `1h30m` (jiff's friendly or ISO 8601 format), more than 0, at most 168h.
fn duration(s: &str) -> Result<SignedDuration, String> {
    if s.is_empty() {
        return Err("must not be empty: give how long the window is open, e.g. \"4h\"".into());
    }
    let d: SignedDuration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. \"4h\", \"90m\" or \"1h30m\""))?;
    if d <= SignedDuration::ZERO {
        return Err(format!("{s:?} must be more than zero"));
    }
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than 168h (a week)"));
    }
    Ok(d)
}

impl Window {
    /// The instant the window opens on local `date`, when it opens that day.
    fn opening_on(&self, date: Date) -> Option<Timestamp> {
        if !self.days[date.weekday().to_monday_zero_offset() as usize] {
            return None;
        }
        self.tz
            .to_ambiguous_timestamp(date.to_datetime(self.start))
            .compatible()
            .ok()
    }

    /// Every opening of this window that overlaps `[from, to)`, as periods.
    fn periods(&self, from: Timestamp, to: Timestamp, out: &mut Vec<Period>) {
        // Start far enough back to catch a window opened on an earlier day and still open.
        let back = self.duration.as_hours() / 24 + 2;
        let Ok(mut date) = from
            .to_zoned(self.tz.clone())
            .date()
            .checked_sub(jiff::Span::new().days(back))
        else {
            return;
        };
        let last = to.to_zoned(self.tz.clone()).date();
        while date <= last {
            if let Some(opens) = self.opening_on(date)
                && let Ok(closes) = opens.checked_add(self.duration)
                && closes > from
                && opens < to
            {
                out.push(Period { opens, closes });
            }
            let Ok(next) = date.tomorrow() else { break };
            date = next;
        }
    }
}

impl Schedule {
    /// The open periods (windows merged where they overlap or touch) that overlap
    /// `[from, to)`, in order.
    pub fn periods(&self, from: Timestamp, to: Timestamp) -> Vec<Period> {
        let mut all = Vec::new();
        for w in &self.windows {
            w.periods(from, to, &mut all);
        }
        all.sort_by_key(|p| p.opens);
        let mut merged: Vec<Period> = Vec::with_capacity(all.len());
        for p in all {
            match merged.last_mut() {
                Some(last) if p.opens <= last.closes => {
                    last.closes = last.closes.max(p.closes);
                }
                _ => merged.push(p),
            }
        }
        merged
    }

    fn around(&self, t: Timestamp) -> Vec<Period> {
        let to = t.checked_add(HORIZON).unwrap_or(Timestamp::MAX);
        self.periods(t, to)
    }

    /// The open period `t` falls in, if a window is open at `t`. Its `closes` is cut at the
    /// look-ahead horizon (16 days) when windows leave no gap.
    pub fn open_at(&self, t: Timestamp) -> Option<Period> {
        self.around(t)
            .into_iter()
            .find(|p| p.opens <= t && t < p.closes)
    }

    /// Whether a window is open at `t`.
    pub fn is_open(&self, t: Timestamp) -> bool {
        self.open_at(t).is_some()
    }

    /// The time left in the window open at `t` (zero when none is open).
    pub fn time_left(&self, t: Timestamp) -> SignedDuration {
        self.open_at(t)
            .map(|p| p.closes.duration_since(t))
            .unwrap_or(SignedDuration::ZERO)
    }

    /// The next period that opens strictly after `t`.
    pub fn next_opening(&self, t: Timestamp) -> Option<Period> {
        self.around(t).into_iter().find(|p| p.opens > t)
    }

    /// The first period that opens strictly after `t` and is at least `length` long.
    pub fn next_opening_of(&self, t: Timestamp, length: SignedDuration) -> Option<Period> {
        self.around(t)
            .into_iter()
            .find(|p| p.opens > t && p.length() >= length)
    }

    /// The longest open period among those that open in the week after `t` (a whole window).
    pub fn longest(&self, t: Timestamp) -> SignedDuration {
        self.around(t)
            .iter()
            .map(Period::length)
            .max()
            .unwrap_or(SignedDuration::ZERO)
    }
}

/// How close to its opening a window counts as "at its opening" for a batch predicted to need
/// more than any whole window (the engine may run a little after the instant it asked for).
pub const OPENING_GRACE: SignedDuration = SignedDuration::from_mins(5);

/// Why the next batch may not start yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// No window is open; `next` is the next one (long enough for the batch, when its need is
    /// known and some window is).
    Closed {
        /// The period to wait for.
        next: Period,
    },
    /// A window is open, but the batch's predicted duration `need` does not fit in what is left
    /// of it (it closes at `closes`); `next` is the next window long enough.
    TooShort {
        /// When the open window closes.
        closes: Timestamp,
        /// The batch's predicted duration (p90).
        need: SignedDuration,
        /// The period to wait for.
        next: Period,
    },
    /// The batch needs more than any whole window, so it starts at a window's opening; one is
    /// open but not just opened, `next` opens next.
    AtOpening {
        /// The batch's predicted duration (p90).
        need: SignedDuration,
        /// The period to wait for.
        next: Period,
    },
    /// No window opens within the look-ahead (cannot happen with valid windows, which open at
    /// least weekly).
    Never,
}

impl Wait {
    /// When to look again.
    pub fn until(&self) -> Option<Timestamp> {
        match self {
            Wait::Closed { next } | Wait::TooShort { next, .. } | Wait::AtOpening { next, .. } => {
                Some(next.opens)
            }
            Wait::Never => None,
        }
    }

    /// What the batch waits for, for condition messages and events ("waits for ...").
    pub fn describe(&self) -> String {
        match self {
            Wait::Closed { next } => format!(
                "waits for the next maintenance window, which opens at {}",
                next.opens
            ),
            Wait::TooShort { closes, need, next } => format!(
                "does not fit in the open maintenance window (it closes at {closes}, the batch is predicted to need up to {need:#}); it waits for the next window, which opens at {}",
                next.opens
            ),
            Wait::AtOpening { need, next } => format!(
                "is predicted to need up to {need:#}, longer than any maintenance window; it starts at the opening of the next window, at {}",
                next.opens
            ),
            Wait::Never => {
                "waits for a maintenance window, but none opens in the next 16 days".into()
            }
        }
    }
}

/// Whether a batch may start at `now`: `Ok` when it may, else what it waits for. `need` is the
/// batch's predicted duration (p90) when the forecast has a basis for it. Rules: a batch starts
/// only while a window is open; with a known need, only if it fits in what is left of the open
/// window, unless it needs more than any whole window, in which case it starts at a window's
/// opening (within [`OPENING_GRACE`]).
pub fn gate(schedule: &Schedule, now: Timestamp, need: Option<SignedDuration>) -> Result<(), Wait> {
    let longest = schedule.longest(now);
    let too_long = need.is_some_and(|n| n > longest);
    let next_fitting = || {
        let found = match need {
            Some(n) if !too_long => schedule.next_opening_of(now, n),
            _ => schedule.next_opening(now),
        };
        found.ok_or(Wait::Never)
    };
    match (schedule.open_at(now), need) {
        (None, _) => Err(Wait::Closed {
            next: next_fitting()?,
        }),
        (Some(_), None) => Ok(()),
        (Some(open), Some(need)) => {
            if too_long {
                if now.duration_since(open.opens) <= OPENING_GRACE {
                    Ok(())
                } else {
                    Err(Wait::AtOpening {
                        need,
                        next: next_fitting()?,
                    })
                }
            } else if open.closes.duration_since(now) >= need {
                Ok(())
            } else {
                Err(Wait::TooShort {
                    closes: open.closes,
                    need,
                    next: next_fitting()?,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(days: &[&str], start: &str, duration: &str, tz: Option<&str>) -> MaintenanceWindow {
        MaintenanceWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            duration: duration.into(),
            time_zone: tz.map(str::to_string),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sched(ws: &[MaintenanceWindow]) -> Schedule {
        parse(ws).unwrap()
    }

    fn err(ws: &[MaintenanceWindow]) -> String {
        parse(ws).unwrap_err().to_string()
    }

    #[test]
    fn utc_daily_window() {
        let s = sched(&[w(&[], "02:00", "4h", None)]);
        assert!(!s.is_open(ts("2026-03-02T01:59:59Z")));
        assert!(s.is_open(ts("2026-03-02T02:00:00Z")));
        assert!(s.is_open(ts("2026-03-02T05:59:59Z")));
        assert!(!s.is_open(ts("2026-03-02T06:00:00Z")));
        assert_eq!(
            s.time_left(ts("2026-03-02T03:00:00Z")),
            SignedDuration::from_hours(3)
        );
        assert_eq!(
            s.time_left(ts("2026-03-02T07:00:00Z")),
            SignedDuration::ZERO
        );
        let next = s.next_opening(ts("2026-03-02T06:00:00Z")).unwrap();
        assert_eq!(next.opens, ts("2026-03-03T02:00:00Z"));
        assert_eq!(next.closes, ts("2026-03-03T06:00:00Z"));
        // Strictly after: at the opening instant, the next one is tomorrow's.
        let next = s.next_opening(ts("2026-03-02T02:00:00Z")).unwrap();
        assert_eq!(next.opens, ts("2026-03-03T02:00:00Z"));
    }

    #[test]
    fn days_filter_and_midnight_crossing() {
        // Saturday 22:00 for 4h: open until Sunday 02:00, not on other days.
        let s = sched(&[w(&["Sat"], "22:00", "4h", None)]);
        // 2026-03-07 is a Saturday.
        assert!(!s.is_open(ts("2026-03-06T22:30:00Z")), "Friday");
        assert!(s.is_open(ts("2026-03-07T22:00:00Z")));
        assert!(
            s.is_open(ts("2026-03-08T01:30:00Z")),
            "Sunday morning, same window"
        );
        assert_eq!(
            s.time_left(ts("2026-03-08T01:30:00Z")),
            SignedDuration::from_mins(30)
        );
        assert!(!s.is_open(ts("2026-03-08T02:00:00Z")));
        assert!(!s.is_open(ts("2026-03-08T22:30:00Z")), "Sunday evening");
        // From Sunday, the next opening is the next Saturday.
        assert_eq!(
            s.next_opening(ts("2026-03-08T03:00:00Z")).unwrap().opens,
            ts("2026-03-14T22:00:00Z")
        );
        // Full names and any case are accepted.
        let s = sched(&[w(&["saturday", "SUN"], "22:00", "1h", None)]);
        assert!(s.is_open(ts("2026-03-08T22:30:00Z")));
        assert!(!s.is_open(ts("2026-03-09T22:30:00Z")), "Monday");
    }

    #[test]
    fn berlin_spring_forward() {
        // 2026-03-29: Europe/Berlin goes 02:00 CET → 03:00 CEST.
        let s = sched(&[w(&[], "01:00", "3h", Some("Europe/Berlin"))]);
        // The day before: 01:00 CET = 00:00Z, closes 03:00Z.
        let p = s.open_at(ts("2026-03-28T01:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-28T00:00:00Z"));
        assert_eq!(p.closes, ts("2026-03-28T03:00:00Z"));
        // That night: 01:00 CET = 00:00Z; three hours of elapsed time end at 03:00Z = 05:00
        // CEST local, not 04:00.
        let p = s.open_at(ts("2026-03-29T00:30:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-29T00:00:00Z"));
        assert_eq!(p.closes, ts("2026-03-29T03:00:00Z"));
        // The day after: 01:00 CEST = 23:00Z the day before.
        let p = s.next_opening(ts("2026-03-29T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-29T23:00:00Z"));
    }

    #[test]
    fn berlin_start_inside_the_skipped_hour() {
        // 02:30 does not exist in Berlin on 2026-03-29: the window opens an hour later on the
        // wall clock, 03:30 CEST = 01:30Z (the instant 02:30 CET would have been).
        let s = sched(&[w(&[], "02:30", "1h", Some("Europe/Berlin"))]);
        let p = s.next_opening(ts("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-29T01:30:00Z"));
        assert_eq!(p.closes, ts("2026-03-29T02:30:00Z"));
        assert_eq!(
            p.opens
                .to_zoned(TimeZoneDatabase::bundled().get("Europe/Berlin").unwrap())
                .time(),
            jiff::civil::time(3, 30, 0, 0)
        );
        // The night before, 02:30 CET = 01:30Z; the night after, 02:30 CEST = 00:30Z.
        let p = s.next_opening(ts("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-28T01:30:00Z"));
        let p = s.next_opening(ts("2026-03-29T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-30T00:30:00Z"));
    }

    #[test]
    fn berlin_fall_back() {
        // 2026-10-25: Europe/Berlin goes 03:00 CEST → 02:00 CET; 02:30 happens twice.
        let s = sched(&[w(&[], "02:30", "1h", Some("Europe/Berlin"))]);
        // First occurrence: 02:30 CEST = 00:30Z.
        let p = s.next_opening(ts("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-10-25T00:30:00Z"));
        assert_eq!(p.closes, ts("2026-10-25T01:30:00Z"));
        // Not open again at the second 02:30 (CET, 01:30Z) ...
        assert!(!s.is_open(ts("2026-10-25T01:45:00Z")));
        // ... and the next night is 02:30 CET = 01:30Z.
        let p = s.next_opening(ts("2026-10-25T01:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-10-26T01:30:00Z"));
        // A window across the change keeps its elapsed length: 00:00 CEST + 4h = 03:00 CET.
        let s = sched(&[w(&["Sun"], "00:00", "4h", Some("Europe/Berlin"))]);
        let p = s.next_opening(ts("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-10-24T22:00:00Z"));
        assert_eq!(p.length(), SignedDuration::from_hours(4));
        assert_eq!(
            p.closes
                .to_zoned(TimeZoneDatabase::bundled().get("Europe/Berlin").unwrap())
                .time(),
            jiff::civil::time(3, 0, 0, 0)
        );
    }

    #[test]
    fn new_york() {
        // America/New_York: EST (−5) until 2026-03-08 02:00, then EDT (−4).
        let s = sched(&[w(&["Mon", "Fri"], "23:00", "2h", Some("America/New_York"))]);
        // Friday 2026-03-06 23:00 EST = Saturday 04:00Z.
        let p = s.next_opening(ts("2026-03-06T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-07T04:00:00Z"));
        // Monday 2026-03-09 23:00 EDT = Tuesday 03:00Z.
        let p = s.next_opening(ts("2026-03-07T12:00:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-10T03:00:00Z"));
        // The day is the local one: at 2026-03-10T03:30Z it is still Monday in New York.
        assert!(s.is_open(ts("2026-03-10T03:30:00Z")));
    }

    #[test]
    fn overlapping_windows_merge() {
        let s = sched(&[
            w(&[], "01:00", "2h", None),
            w(&[], "02:30", "2h", None),
            w(&[], "04:30", "1h", None),
        ]);
        let p = s.open_at(ts("2026-03-02T01:30:00Z")).unwrap();
        assert_eq!(p.opens, ts("2026-03-02T01:00:00Z"));
        assert_eq!(p.closes, ts("2026-03-02T05:30:00Z"));
        assert_eq!(
            s.longest(ts("2026-03-02T00:00:00Z")),
            SignedDuration::from_mins(270)
        );
        // A week-long window on every day leaves no gap: open, cut at the horizon.
        let s = sched(&[w(&[], "00:00", "168h", None)]);
        assert!(s.is_open(ts("2026-03-02T12:00:00Z")));
        assert!(s.next_opening(ts("2026-03-02T12:00:00Z")).is_none());
    }

    #[test]
    fn next_opening_of_a_length() {
        // Short on weekdays, long on Saturdays.
        let s = sched(&[
            w(&["Mon", "Tue", "Wed", "Thu", "Fri"], "02:00", "1h", None),
            w(&["Sat"], "00:00", "6h", None),
        ]);
        // 2026-03-02 is a Monday.
        let p = s
            .next_opening_of(ts("2026-03-02T00:00:00Z"), SignedDuration::from_hours(2))
            .unwrap();
        assert_eq!(p.opens, ts("2026-03-07T00:00:00Z"));
        assert!(
            s.next_opening_of(ts("2026-03-02T00:00:00Z"), SignedDuration::from_hours(7))
                .is_none()
        );
    }

    #[test]
    fn gate_without_a_forecast_waits_only_while_closed() {
        let s = sched(&[w(&[], "02:00", "4h", None)]);
        assert_eq!(gate(&s, ts("2026-03-02T05:59:00Z"), None), Ok(()));
        let wait = gate(&s, ts("2026-03-02T06:00:00Z"), None).unwrap_err();
        assert_eq!(wait.until(), Some(ts("2026-03-03T02:00:00Z")));
        assert_eq!(
            wait.describe(),
            "waits for the next maintenance window, which opens at 2026-03-03T02:00:00Z"
        );
    }

    #[test]
    fn gate_with_a_forecast_checks_the_fit() {
        // Weekdays 1h at 02:00, Saturdays 6h at 00:00. 2026-03-02 is a Monday.
        let s = sched(&[
            w(&["Mon", "Tue", "Wed", "Thu", "Fri"], "02:00", "1h", None),
            w(&["Sat"], "00:00", "6h", None),
        ]);
        let h = SignedDuration::from_hours;
        let m = SignedDuration::from_mins;
        // Fits what is left: starts.
        assert_eq!(gate(&s, ts("2026-03-02T02:00:00Z"), Some(m(50))), Ok(()));
        // Fits a whole weekday window but not what is left: waits for tomorrow's.
        let wait = gate(&s, ts("2026-03-02T02:30:00Z"), Some(m(50))).unwrap_err();
        assert_eq!(
            wait,
            Wait::TooShort {
                closes: ts("2026-03-02T03:00:00Z"),
                need: m(50),
                next: Period {
                    opens: ts("2026-03-03T02:00:00Z"),
                    closes: ts("2026-03-03T03:00:00Z")
                },
            }
        );
        assert_eq!(
            wait.describe(),
            "does not fit in the open maintenance window (it closes at 2026-03-02T03:00:00Z, the batch is predicted to need up to 50m); it waits for the next window, which opens at 2026-03-03T02:00:00Z"
        );
        // Needs 2h: only the Saturday window fits; skips the weekday ones.
        let wait = gate(&s, ts("2026-03-02T02:00:00Z"), Some(h(2))).unwrap_err();
        assert_eq!(wait.until(), Some(ts("2026-03-07T00:00:00Z")));
        let wait = gate(&s, ts("2026-03-02T12:00:00Z"), Some(h(2))).unwrap_err();
        assert!(matches!(wait, Wait::Closed { .. }));
        assert_eq!(wait.until(), Some(ts("2026-03-07T00:00:00Z")));
        assert_eq!(gate(&s, ts("2026-03-07T00:00:00Z"), Some(h(2))), Ok(()));
        // Needs 8h, more than any window: starts at an opening (any window, the earliest) ...
        assert_eq!(gate(&s, ts("2026-03-02T02:00:00Z"), Some(h(8))), Ok(()));
        assert_eq!(gate(&s, ts("2026-03-02T02:05:00Z"), Some(h(8))), Ok(()));
        // ... not in the middle of one ...
        let wait = gate(&s, ts("2026-03-02T02:06:00Z"), Some(h(8))).unwrap_err();
        assert!(matches!(wait, Wait::AtOpening { .. }), "{wait:?}");
        assert_eq!(wait.until(), Some(ts("2026-03-03T02:00:00Z")));
        // ... and, while closed, waits for the very next opening.
        let wait = gate(&s, ts("2026-03-02T12:00:00Z"), Some(h(8))).unwrap_err();
        assert_eq!(wait.until(), Some(ts("2026-03-03T02:00:00Z")));
    }

    #[test]
    fn bad_input_names_the_field() {
        assert_eq!(
            err(&[]),
            "spec.maintenanceWindows: must list at least one window (remove the field to start batches at any time)"
        );
        assert_eq!(
            err(&[
                w(&[], "02:00", "4h", None),
                w(&[], "02:00", "4h", Some("Europe/Berln"))
            ]),
            "spec.maintenanceWindows[1].timeZone: unknown time zone \"Europe/Berln\": use an IANA name such as Europe/Berlin, America/New_York or UTC"
        );
        assert_eq!(
            err(&[w(&[], "02:00", "4h", Some(""))]),
            "spec.maintenanceWindows[0].timeZone: must not be empty (omit it for UTC)"
        );
        assert_eq!(
            err(&[w(&[], "25:00", "4h", None)]),
            "spec.maintenanceWindows[0].start: \"25:00\" is not a time of day: the hour must be 00 to 23"
        );
        assert_eq!(
            err(&[w(&[], "02:60", "4h", None)]),
            "spec.maintenanceWindows[0].start: \"02:60\" is not a time of day: the minute must be 00 to 59"
        );
        assert_eq!(
            err(&[w(&[], "2:00", "4h", None)]),
            "spec.maintenanceWindows[0].start: \"2:00\" is not HH:MM (24-hour, e.g. \"02:00\" or \"22:30\")"
        );
        assert_eq!(
            err(&[w(&[], "", "4h", None)]),
            "spec.maintenanceWindows[0].start: must not be empty: give the opening time as HH:MM (24-hour)"
        );
        assert_eq!(
            err(&[w(&[], "02:00", "0h", None)]),
            "spec.maintenanceWindows[0].duration: \"0h\" must be more than zero"
        );
        assert_eq!(
            err(&[w(&[], "02:00", "-1h", None)]),
            "spec.maintenanceWindows[0].duration: \"-1h\" must be more than zero"
        );
        assert_eq!(
            err(&[w(&[], "02:00", "169h", None)]),
            "spec.maintenanceWindows[0].duration: \"169h\" is longer than 168h (a week)"
        );
        assert_eq!(
            err(&[w(&[], "02:00", "four hours", None)]),
            "spec.maintenanceWindows[0].duration: \"four hours\" is not a duration: use e.g. \"4h\", \"90m\" or \"1h30m\""
        );
        assert_eq!(
            err(&[w(&[], "02:00", "", None)]),
            "spec.maintenanceWindows[0].duration: must not be empty: give how long the window is open, e.g. \"4h\""
        );
        assert_eq!(
            err(&[w(&["Mon", "Mo"], "02:00", "4h", None)]),
            "spec.maintenanceWindows[0].days[1]: \"Mo\" is not a day: use Mon, Tue, Wed, Thu, Fri, Sat or Sun"
        );
        // Accepted forms.
        assert!(parse(&[w(&[], "00:00", "90m", None)]).is_ok());
        assert!(parse(&[w(&[], "23:59", "1h30m", Some("UTC"))]).is_ok());
        assert!(parse(&[w(&[], "12:00", "168h", Some("Asia/Kolkata"))]).is_ok());
    }
}
