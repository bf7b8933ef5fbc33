//! Recurring schedules (spec/pulse.md, "Schedules"): when a schedule's
//! occurrences fall, and what one step of the clock does to a schedule.
//! Pure: the store writes what [`Schedule::plan`] decides, and the time
//! is always the caller's, so tests drive it with a simulated clock.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::error::{PulseError, PulseErrorCode};
use super::job::{JobId, JobRequest};
use crate::Did;

/// Shortest `every` interval, ms: a schedule is not a busy loop.
pub const MIN_EVERY_MS: u64 = 1_000;
/// Longest `every` interval, ms (a year of 366 days).
pub const MAX_EVERY_MS: u64 = 366 * 86_400_000;
/// Occurrences counted as missed in one catch-up, at most: the count of a
/// schedule that was stopped for a long time saturates there.
pub(crate) const MAX_MISSED_COUNT: u64 = 10_000;
/// How late an occurrence may fire and still be on time, ms: a step of
/// the dispatcher may come a little after the occurrence.
pub(crate) const ON_TIME_MS: u64 = 60_000;
/// Longest cron pattern or time zone name accepted, bytes.
pub(crate) const MAX_PATTERN_BYTES: usize = 256;

/// A schedule's ID: 8 bytes of creation time (Unix ms, big-endian) then 8
/// random bytes, like a job's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScheduleId(pub [u8; 16]);

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScheduleId({self})")
    }
}

/// When a schedule's occurrences fall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recurrence {
    /// A cron pattern (five fields, or six with seconds first), read in
    /// `timezone` (an IANA name; UTC when absent).
    Cron {
        /// The pattern as given.
        pattern: String,
        /// IANA time zone name.
        timezone: Option<String>,
    },
    /// Every `every_ms` from the schedule's creation.
    Every {
        /// The interval, ms.
        every_ms: u64,
    },
}

fn invalid(message: impl Into<String>) -> PulseError {
    PulseError::new(PulseErrorCode::InvalidSchedule, message)
}

/// A parsed cron pattern and its zone.
struct CronIn {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl CronIn {
    fn parse(pattern: &str, timezone: Option<&str>) -> Result<CronIn, PulseError> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(invalid(format!(
                "a cron pattern is at most {MAX_PATTERN_BYTES} bytes"
            )));
        }
        let cron = croner::Cron::from_str(pattern)
            .map_err(|e| invalid(format!("cron pattern {pattern:?}: {e}")))?;
        let zone = match timezone {
            None => chrono_tz::UTC,
            Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
                invalid(format!(
                    "time zone {name:?} is not an IANA name such as Europe/Paris or America/New_York"
                ))
            })?,
        };
        Ok(CronIn { cron, zone })
    }

    fn at(&self, ms: u64) -> Option<DateTime<chrono_tz::Tz>> {
        let ms = i64::try_from(ms).ok()?;
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&self.zone))
    }

    /// The first occurrence strictly after `after`. A local time that
    /// occurs twice (the hour a daylight-saving change repeats) fires
    /// once, at its first occurrence; a local time that does not occur
    /// (the hour skipped) fires at the first time after the gap for a
    /// pattern of one fixed time of day, and not at all for interval
    /// patterns (croner's rules).
    fn next_after(&self, after: u64) -> Option<u64> {
        let mut from = self.at(after)?;
        // Starting inside a repeated hour, croner may answer the first
        // pass of a local time already past: search on until later.
        for _ in 0..10_000 {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            let ms = u64::try_from(next.timestamp_millis()).ok()?;
            if ms > after {
                return Some(ms);
            }
            from = next;
        }
        None
    }

    /// The last occurrence at or before `at`.
    fn last_at_or_before(&self, at: u64) -> Option<u64> {
        let t = self.at(at)?;
        let prev = self.cron.find_previous_occurrence(&t, true).ok()?;
        u64::try_from(prev.timestamp_millis())
            .ok()
            .filter(|ms| *ms <= at)
    }
}

impl Recurrence {
    /// A cron recurrence, checked.
    ///
    /// # Errors
    /// `invalid_schedule`: a pattern croner refuses, an unknown time zone,
    /// or a pattern that never occurs.
    pub fn cron(pattern: &str, timezone: Option<&str>) -> Result<Recurrence, PulseError> {
        let c = CronIn::parse(pattern, timezone)?;
        if c.next_after(0).is_none() {
            return Err(invalid(format!("cron pattern {pattern:?} never occurs")));
        }
        Ok(Recurrence::Cron {
            pattern: pattern.trim().to_owned(),
            timezone: timezone.map(str::to_owned),
        })
    }

    /// An interval recurrence, checked.
    ///
    /// # Errors
    /// `invalid_schedule` outside [`MIN_EVERY_MS`]..=[`MAX_EVERY_MS`].
    pub fn every(every_ms: u64) -> Result<Recurrence, PulseError> {
        if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(&every_ms) {
            return Err(invalid(format!(
                "every is {every_ms} ms; it must be from 1 second to 366 days"
            )));
        }
        Ok(Recurrence::Every { every_ms })
    }

    /// The first occurrence strictly after `after`; `anchor` is where an
    /// interval counts from. `None` if there is none (a cron pattern whose
    /// dates have all passed).
    pub fn next_after(&self, anchor: u64, after: u64) -> Option<u64> {
        match self {
            Recurrence::Every { every_ms } => {
                let every = (*every_ms).max(1);
                if after < anchor {
                    return Some(anchor);
                }
                let n = (after - anchor) / every + 1;
                anchor.checked_add(n.checked_mul(every)?)
            }
            Recurrence::Cron { pattern, timezone } => CronIn::parse(pattern, timezone.as_deref())
                .ok()?
                .next_after(after),
        }
    }

    /// The last occurrence at or before `at` (and at or after `anchor`
    /// for an interval).
    fn last_at_or_before(&self, anchor: u64, at: u64) -> Option<u64> {
        match self {
            Recurrence::Every { every_ms } => {
                let every = (*every_ms).max(1);
                (at >= anchor).then(|| anchor + (at - anchor) / every * every)
            }
            Recurrence::Cron { pattern, timezone } => CronIn::parse(pattern, timezone.as_deref())
                .ok()?
                .last_at_or_before(at),
        }
    }

    /// Occurrences strictly between `from` and `to`, counted up to
    /// [`MAX_MISSED_COUNT`].
    fn count_between(&self, _anchor: u64, from: u64, to: u64) -> u64 {
        match self {
            Recurrence::Every { every_ms } => {
                let every = (*every_ms).max(1);
                (to.saturating_sub(from) / every)
                    .saturating_sub(1)
                    .min(MAX_MISSED_COUNT)
            }
            Recurrence::Cron { pattern, timezone } => {
                // Parsed once for the whole count, not once per occurrence.
                let Ok(cron) = CronIn::parse(pattern, timezone.as_deref()) else {
                    return 0;
                };
                let mut n = 0;
                let mut at = from;
                while n < MAX_MISSED_COUNT {
                    match cron.next_after(at) {
                        Some(next) if next < to => {
                            n += 1;
                            at = next;
                        }
                        _ => break,
                    }
                }
                n
            }
        }
    }
}

impl fmt::Display for Recurrence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recurrence::Cron {
                pattern,
                timezone: Some(tz),
            } => write!(f, "cron {pattern:?} in {tz}"),
            Recurrence::Cron { pattern, .. } => write!(f, "cron {pattern:?} in UTC"),
            Recurrence::Every { every_ms } => write!(f, "every {every_ms} ms"),
        }
    }
}

/// What to do with an occurrence whose previous job has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// Skip it (counted as skipped).
    Skip,
    /// Enqueue it anyway.
    Allow,
}

/// What to do with occurrences that passed while nothing could fire
/// them (the server was stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Missed {
    /// Fire the latest one once, late; count the others as missed.
    RunOnce,
    /// Fire none; count them all as missed.
    Skip,
}

/// A recurring schedule: the job it enqueues at each occurrence, and its
/// bookkeeping. Stored as a versioned record (see `pulse/record.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its ID.
    pub id: ScheduleId,
    /// The handler each occurrence's job is for.
    pub handler: Did,
    /// When occurrences fall.
    pub recurrence: Recurrence,
    /// Each job's payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Each job's priority.
    pub priority: u8,
    /// Each job's lowered limits (none: the handler's).
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout, ms.
    pub timeout_ms: Option<u64>,
    /// Cost limit.
    pub max_cost: Option<u64>,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Missed-occurrence policy.
    pub missed: Missed,
    /// Paused schedules fire nothing.
    pub paused: bool,
    /// Unix ms it was created (where `every` counts from).
    pub created_at: u64,
    /// The next occurrence not yet handled, Unix ms (`None`: no more).
    pub next_at: Option<u64>,
    /// The last occurrence that enqueued a job, and that job.
    pub last_fired: Option<(u64, JobId)>,
    /// Occurrences that enqueued a job.
    pub fired: u64,
    /// Occurrences skipped because the previous job still ran.
    pub skipped: u64,
    /// Occurrences that passed while the server was stopped (or paused
    /// schedules' are not counted: they were not due).
    pub missed_count: u64,
    /// Why the last occurrence enqueued nothing, if it failed (the
    /// handler was revoked, say).
    pub last_error: Option<String>,
    /// Unix ms of the last change.
    pub updated_at: u64,
}

/// What one occurrence does ([`Schedule::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The occurrence, Unix ms.
    pub at: u64,
    /// Whether to enqueue its job (false: skipped by the overlap or
    /// missed policy).
    pub enqueue: bool,
    /// Whether it is skipped because the previous job still runs.
    pub overlapped: bool,
    /// Earlier occurrences that passed unfired.
    pub missed: u64,
    /// The next occurrence after it.
    pub next_at: Option<u64>,
}

impl Schedule {
    /// A new schedule, created at `now`: its first occurrence is the
    /// first strictly after `now`.
    pub fn new(
        id: ScheduleId,
        handler: Did,
        recurrence: Recurrence,
        job: &JobRequest,
        overlap: Overlap,
        missed: Missed,
        now: u64,
    ) -> Schedule {
        let next_at = recurrence.next_after(now, now);
        Schedule {
            id,
            handler,
            recurrence,
            payload: job.payload.clone(),
            priority: job.priority,
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout_ms,
            max_cost: job.max_cost,
            overlap,
            missed,
            paused: false,
            created_at: now,
            next_at,
            last_fired: None,
            fired: 0,
            skipped: 0,
            missed_count: 0,
            last_error: None,
            updated_at: now,
        }
    }

    /// What the clock at `now` does: nothing (`None`) unless an occurrence
    /// is due. Of the due occurrences only the latest is handled; earlier
    /// ones are missed (they passed while nothing fired them). The latest
    /// is skipped if `previous_running` and the overlap policy is skip, or
    /// if it is late (more than [`ON_TIME_MS`]) and the missed policy is
    /// skip.
    pub fn plan(&self, now: u64, previous_running: bool) -> Option<Firing> {
        let due = self.next_at.filter(|at| *at <= now && !self.paused)?;
        let latest = self
            .recurrence
            .last_at_or_before(self.created_at, now)
            .unwrap_or(due)
            .max(due);
        let missed = if latest > due {
            1 + self
                .recurrence
                .count_between(self.created_at, due, latest)
                .min(MAX_MISSED_COUNT - 1)
        } else {
            0
        };
        let too_late = now.saturating_sub(latest) > ON_TIME_MS && self.missed == Missed::Skip;
        let overlapped = previous_running && self.overlap == Overlap::Skip;
        Some(Firing {
            at: latest,
            enqueue: !(overlapped || too_late),
            overlapped,
            missed: missed + u64::from(too_late && !overlapped),
            next_at: self.recurrence.next_after(self.created_at, latest),
        })
    }

    /// Records `firing`, which enqueued `job` (if it did) or failed with
    /// `error`.
    pub fn record(&mut self, firing: &Firing, job: Option<JobId>, error: Option<String>, now: u64) {
        self.next_at = firing.next_at;
        self.missed_count = self.missed_count.saturating_add(firing.missed);
        if firing.overlapped {
            self.skipped += 1;
        }
        if let Some(id) = job {
            self.last_fired = Some((firing.at, id));
            self.fired += 1;
        }
        self.last_error = error;
        self.updated_at = now;
    }

    /// Pauses or resumes at `now`. A resumed schedule starts at its first
    /// occurrence after `now`: occurrences while it was paused are not
    /// fired late, nor counted as missed.
    pub fn set_paused(&mut self, paused: bool, now: u64) {
        if self.paused && !paused {
            self.next_at = self.recurrence.next_after(self.created_at, now);
        }
        self.paused = paused;
        self.updated_at = now;
    }

    /// The job request of the occurrence at `at`: its idempotency key
    /// names the schedule and the occurrence, so an occurrence enqueues
    /// at most one job however often it is tried.
    pub fn job_request(&self, at: u64) -> JobRequest {
        JobRequest {
            payload: self.payload.clone(),
            priority: self.priority,
            run_at_ms: 0,
            idempotency_key: Some(occurrence_key(&self.id, at)),
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            max_cost: self.max_cost,
            parent: None,
            trace_parent: None,
        }
    }

    /// The next `n` occurrences from the next one due (none when paused).
    pub fn upcoming(&self, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = self.next_at.filter(|_| !self.paused);
        while let Some(t) = at {
            if out.len() >= n {
                break;
            }
            out.push(t);
            at = self.recurrence.next_after(self.created_at, t);
        }
        out
    }
}

/// The idempotency key of a schedule's occurrence:
/// `schedule:<32 hex digits>:<Unix ms>`.
pub fn occurrence_key(id: &ScheduleId, at: u64) -> String {
    format!("schedule:{id}:{at}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u64 {
        let t: DateTime<Utc> = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        t.timestamp_millis() as u64
    }

    fn every(ms: u64) -> Schedule {
        Schedule::new(
            ScheduleId([1; 16]),
            crate::Did::from_public_key([0x11; 32]).unwrap_or_else(|e| panic!("{e}")),
            Recurrence::every(ms).unwrap_or_else(|e| panic!("{e}")),
            &JobRequest::default(),
            Overlap::Allow,
            Missed::RunOnce,
            1_000_000,
        )
    }

    /// The stored bytes of a schedule of each recurrence and policy: a
    /// reordered field or variant fails here (the rule of
    /// `pulse/record.rs`; regenerate only on purpose, with
    /// `PULSE_LEDGER_BLESS=1`).
    #[test]
    fn schedule_records_match_the_golden_bytes() {
        let mut cron = every(5_000);
        cron.recurrence = Recurrence::Cron {
            pattern: "*/5 * * * *".into(),
            timezone: Some("Europe/Paris".into()),
        };
        cron.overlap = Overlap::Skip;
        cron.missed = Missed::Skip;
        cron.paused = true;
        cron.max_attempts = Some(3);
        cron.timeout_ms = Some(60_000);
        cron.max_cost = Some(9);
        cron.last_fired = Some((1_005_000, JobId::new(1_005_001, 7)));
        (cron.fired, cron.skipped, cron.missed_count) = (4, 2, 1);
        cron.last_error = Some("handler_revoked".into());
        let cases = [("schedule/every", every(5_000)), ("schedule/cron", cron)];
        let text: String = cases
            .iter()
            .map(|(name, s)| format!("{name} {}\n", hex::encode(super::super::record::encode(s))))
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/schedule-records-v2.txt");
        if std::env::var_os("PULSE_LEDGER_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(golden, text, "schedule record bytes changed");
        for ((_, s), line) in cases.iter().zip(golden.lines()) {
            let hex = line.split_once(' ').map_or("", |(_, h)| h);
            let bytes = hex::decode(hex).unwrap_or_default();
            let read: Schedule =
                super::super::record::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&read, s);
        }
    }

    /// A schedule stopped for longer than MAX_MISSED_COUNT occurrences
    /// counts that many, by interval and by cron pattern alike.
    #[test]
    fn missed_counts_saturate() {
        let s = every(1_000);
        let f = s
            .plan(1_000_000 + 50_000_000, false)
            .unwrap_or_else(|| panic!("due"));
        assert_eq!(f.missed, MAX_MISSED_COUNT);
        let mut c = every(1_000);
        c.recurrence = Recurrence::cron("* * * * * *", None).unwrap_or_else(|e| panic!("{e}"));
        c.next_at = c.recurrence.next_after(c.created_at, c.created_at);
        let f = c
            .plan(1_000_000 + 50_000_000, false)
            .unwrap_or_else(|| panic!("due"));
        assert_eq!(f.missed, MAX_MISSED_COUNT);
        assert_eq!(f.at, 51_000_000);
    }

    #[test]
    fn intervals_count_from_creation() {
        let s = every(5_000);
        assert_eq!(s.next_at, Some(1_005_000));
        assert_eq!(s.plan(1_004_999, false), None);
        let f = s.plan(1_005_010, false).unwrap_or_else(|| panic!("due"));
        assert_eq!(
            (f.at, f.enqueue, f.missed, f.next_at),
            (1_005_000, true, 0, Some(1_010_000))
        );
        // Stopped for 12 occurrences: the latest fires, 11 are missed.
        let f = s.plan(1_060_001, false).unwrap_or_else(|| panic!("due"));
        assert_eq!(
            (f.at, f.missed, f.next_at),
            (1_060_000, 11, Some(1_065_000))
        );
    }

    #[test]
    fn cron_patterns_and_zones_are_checked() {
        for (pattern, tz) in [
            ("*/5 * * *", None),
            ("61 * * * *", None),
            ("* * * * *", Some("Mars/Olympus")),
            ("0 0 30 2 *", None),
        ] {
            let e = Recurrence::cron(pattern, tz).unwrap_err();
            assert_eq!(e.code(), PulseErrorCode::InvalidSchedule, "{pattern}");
        }
        assert!(Recurrence::every(999).is_err());
        assert!(Recurrence::every(MAX_EVERY_MS + 1).is_err());
        let r = Recurrence::cron("*/5 * * * *", None).unwrap_or_else(|e| panic!("{e}"));
        let at = ms("2026-12-04T10:02:30Z");
        assert_eq!(r.next_after(0, at), Some(ms("2026-12-04T10:05:00Z")));
    }

    /// Daylight-saving changes in a zone: a time of day that occurs twice
    /// fires once; one that is skipped fires just after the gap.
    #[test]
    fn daylight_saving_changes_fire_each_local_time_once() {
        let ny = Some("America/New_York");
        // 2026-11-01 01:30 happens twice in New York (EDT, then EST).
        let r = Recurrence::cron("30 1 * * *", ny).unwrap_or_else(|e| panic!("{e}"));
        let first = r.next_after(0, ms("2026-10-31T12:00:00Z")).unwrap_or(0);
        assert_eq!(first, ms("2026-11-01T05:30:00Z"), "the first 01:30, EDT");
        let second = r.next_after(0, first).unwrap_or(0);
        assert_eq!(second, ms("2026-11-02T06:30:00Z"), "not 01:30 EST again");
        // Asked from inside the repeated hour (a restart at 01:45 EST), the
        // next is still in the future.
        let from = ms("2026-11-01T06:45:00Z");
        assert_eq!(r.next_after(0, from), Some(second));
        // An interval pattern too runs each local time once: the hour
        // 01:00-01:59 is not run again in EST.
        let hourly = Recurrence::cron("0 * * * *", ny).unwrap_or_else(|e| panic!("{e}"));
        let t = hourly
            .next_after(0, ms("2026-11-01T05:00:00Z"))
            .unwrap_or(0);
        assert_eq!(t, ms("2026-11-01T07:00:00Z"), "01:00 EDT, then 02:00 EST");
        // 2026-03-08 02:30 does not happen in New York: it fires at 03:00.
        let r = Recurrence::cron("30 2 * * *", ny).unwrap_or_else(|e| panic!("{e}"));
        let t = r.next_after(0, ms("2026-03-07T12:00:00Z")).unwrap_or(0);
        assert_eq!(t, ms("2026-03-08T07:00:00Z"), "03:00 EDT");
        let t = r.next_after(0, t).unwrap_or(0);
        assert_eq!(t, ms("2026-03-09T06:30:00Z"), "back to 02:30 EDT");
    }
}
