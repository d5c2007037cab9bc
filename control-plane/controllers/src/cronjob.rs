//! CronJob: a Job per scheduled time, with concurrency policy and history
//! limits. Schedules are standard five-field cron in UTC (plus @hourly and
//! friends). The parser is ours: the cron crates pull in chrono beside jiff.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp, ToSpan, civil::DateTime, tz::TimeZone};
use serde_json::{Value, json};

use super::Controller;
use super::job::finished;
use super::replicaset::owner_keys;
use weft_cluster::objects::{self as o, key_of};
use weft_cluster::{Action, Outcome, res};
use weft_cluster::{Change, Snapshot};

pub struct CronJobController;

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: either may match (cron's rule).
    day_or: bool,
}

fn field(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("bad step {s:?}"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err("step 0".into());
        }
        let value = |s: &str| -> Result<u32, String> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                return Ok(lo + i as u32);
            }
            s.parse().map_err(|_| format!("bad value {s:?}"))
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            (a, if part.contains('/') { hi } else { a })
        };
        // Sunday may be written 7.
        let (a, b) = if hi == 6 {
            (a.min(7), b.min(7))
        } else {
            (a, b)
        };
        if a < lo || b > hi.max(if hi == 6 { 7 } else { hi }) || a > b {
            return Err(format!("{part:?} is out of range {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << (if hi == 6 { v % 7 } else { v });
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let expanded = match spec.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s => s,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = f.as_slice() else {
            return Err(format!(
                "expected exactly 5 fields, found {}: {spec:?}",
                f.len()
            ));
        };
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        Ok(Schedule {
            minutes: field(m, 0, 59, &[])?,
            hours: field(h, 0, 23, &[])?,
            days: field(dom, 1, 31, &[])?,
            months: field(mon, 1, 12, MONTHS)?,
            weekdays: field(dow, 0, 6, DAYS)?,
            day_or: !dom.starts_with('*') && !dow.starts_with('*'),
        })
    }

    fn matches_day(&self, d: DateTime) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        self.months & (1 << d.month()) != 0 && if self.day_or { dom || dow } else { dom && dow }
    }

    /// The first scheduled time strictly after `t` (UTC), within four years.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let utc = TimeZone::UTC;
        let mut d = t.to_zoned(utc.clone()).datetime();
        d = d
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = d.checked_add(4.years()).ok()?;
        while d < limit {
            if !self.matches_day(d) {
                d = d
                    .date()
                    .tomorrow()
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if self.hours & (1 << d.hour()) == 0 {
                d = d
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << d.minute()) == 0 {
                d = d.checked_add(1.minute()).ok()?;
                continue;
            }
            return d.to_zoned(utc).ok().map(|z| z.timestamp());
        }
        None
    }
}

impl Controller for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("batch", "cronjobs")
    }

    fn keys_for(&self, change: &Change, _snap: &Snapshot) -> Vec<String> {
        match change.resource() {
            ("batch", "cronjobs") => vec![key_of(change.object())],
            ("batch", "jobs") => owner_keys(change, "CronJob"),
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let (ns, name) = o::split_key(key);
        let Some(cj) = snap.get("batch", "cronjobs", ns, name) else {
            return out;
        };
        if o::is_terminating(cj) {
            return out;
        }
        let spec_text = cj
            .pointer("/spec/schedule")
            .and_then(Value::as_str)
            .unwrap_or("");
        let schedule = match Schedule::parse(spec_text) {
            Ok(s) => s,
            Err(e) => {
                out.push(Action::Event {
                    regarding: cj.clone(),
                    warning: true,
                    reason: "UnparseableSchedule".into(),
                    message: format!("unparseable schedule: {spec_text:?} : {e}"),
                });
                return out;
            }
        };
        let mut jobs: Vec<_> = snap
            .list("batch", "jobs", Some(ns))
            .filter(|j| o::controlled_by(j, o::uid(cj)))
            .collect();
        jobs.sort_by_key(|j| {
            j.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        });
        let active: Vec<_> = jobs
            .iter()
            .filter(|j| finished(j).is_none() && !o::is_terminating(j))
            .collect();
        let mut status = json!({"active": active.iter().map(|j| json!({"apiVersion": "batch/v1", "kind": "Job",
            "name": o::name(j), "namespace": ns, "uid": o::uid(j)})).collect::<Vec<_>>()});
        if let Some(t) = jobs
            .iter()
            .filter(|j| finished(j) == Some("Complete"))
            .filter_map(|j| j.pointer("/status/completionTime").and_then(Value::as_str))
            .max()
        {
            status["lastSuccessfulTime"] = json!(t);
        }
        let suspended = cj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
        let last = o::parse_ts(cj.pointer("/status/lastScheduleTime"))
            .or_else(|| o::parse_ts(cj.pointer("/metadata/creationTimestamp")))
            .unwrap_or(now);
        let due = latest_missed(&schedule, last, now);
        let deadline = cj
            .pointer("/spec/startingDeadlineSeconds")
            .and_then(Value::as_i64);
        if let Some(at) = due.filter(|_| !suspended)
            && deadline.is_none_or(|d| at + SignedDuration::from_secs(d) >= now)
        {
            let policy = cj
                .pointer("/spec/concurrencyPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Allow");
            if policy == "Forbid" && !active.is_empty() {
                out.requeue(Duration::from_secs(5));
            } else {
                if policy == "Replace" {
                    for j in &active {
                        delete_job(&mut out, ns, j);
                    }
                }
                start_job(&mut out, snap, cj, at);
                status["lastScheduleTime"] = json!(o::ts(at));
            }
        }
        prune_history(&mut out, cj, &jobs);
        let cur = cj.get("status").cloned().unwrap_or(json!({}));
        let differs = ["active", "lastScheduleTime", "lastSuccessfulTime"]
            .iter()
            .any(|f| {
                match (status.get(*f), cur.get(*f)) {
                    // An empty active list and none at all say the same.
                    (Some(Value::Array(want)), have) if want.is_empty() => have
                        .and_then(Value::as_array)
                        .is_some_and(|h| !h.is_empty()),
                    (Some(want), have) => have != Some(want),
                    (None, _) => false,
                }
            });
        if differs {
            out.push(Action::patch_status(res("cronjobs"), ns, name, status));
        }
        if !suspended && let Some(next) = schedule.next_after(now) {
            out.requeue(o::until(next, now));
        }
        out
    }
}

/// The latest scheduled time in (last, now], if any (at most 100 looked
/// at, as Kubernetes does).
fn latest_missed(schedule: &Schedule, last: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let mut due = None;
    let mut t = last;
    for _ in 0..100 {
        match schedule.next_after(t) {
            Some(n) if n <= now => {
                due = Some(n);
                t = n;
            }
            _ => break,
        }
    }
    due
}

/// The Job for the run scheduled `at`, named after the minute as
/// Kubernetes names it, so a retried reconcile never starts a run twice.
fn start_job(out: &mut Outcome, snap: &Snapshot, cj: &Arc<Value>, at: Timestamp) {
    let (ns, name) = (o::namespace(cj), o::name(cj));
    let job_name = format!("{name}-{}", at.as_second() / 60);
    if snap.get("batch", "jobs", ns, &job_name).is_some() {
        return;
    }
    let tmpl = cj
        .pointer("/spec/jobTemplate")
        .cloned()
        .unwrap_or(json!({}));
    let mut meta = tmpl.get("metadata").cloned().unwrap_or(json!({}));
    meta["name"] = json!(job_name);
    meta["namespace"] = json!(ns);
    meta["ownerReferences"] = json!([o::owner_ref(cj)]);
    meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(at.to_string());
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                     "spec": tmpl.get("spec").cloned().unwrap_or(json!({}))});
    out.push(Action::Create {
        res: res("jobs"),
        ns: ns.into(),
        object: job,
    });
    out.push(Action::Event {
        regarding: cj.clone(),
        warning: false,
        reason: "SuccessfulCreate".into(),
        message: format!("Created job {job_name}"),
    });
}

fn delete_job(out: &mut Outcome, ns: &str, job: &Value) {
    out.push(Action::Delete {
        res: res("jobs"),
        ns: ns.into(),
        name: o::name(job).into(),
        options: json!({"propagationPolicy": "Background"}),
    });
}

/// Keeps successfulJobsHistoryLimit finished and failedJobsHistoryLimit
/// failed Jobs, the newest ones (`jobs` is oldest first).
fn prune_history(out: &mut Outcome, cj: &Value, jobs: &[&Arc<Value>]) {
    for (kind, limit) in [
        (
            "Complete",
            cj.pointer("/spec/successfulJobsHistoryLimit")
                .and_then(Value::as_i64)
                .unwrap_or(3),
        ),
        (
            "Failed",
            cj.pointer("/spec/failedJobsHistoryLimit")
                .and_then(Value::as_i64)
                .unwrap_or(1),
        ),
    ] {
        let done: Vec<_> = jobs
            .iter()
            .filter(|j| finished(j) == Some(kind) && !o::is_terminating(j))
            .collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in done.iter().take(extra) {
            delete_job(out, o::namespace(cj), j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_parse_and_step() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every5.next_after(at("2026-03-01T10:02:30Z")),
            Some(at("2026-03-01T10:05:00Z"))
        );
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(
            daily.next_after(at("2026-03-01T10:02:00Z")),
            Some(at("2026-03-02T00:00:00Z"))
        );
        let weekday = Schedule::parse("30 9 * * mon-fri").unwrap();
        // 2026-03-07 is a Saturday.
        assert_eq!(
            weekday.next_after(at("2026-03-07T12:00:00Z")),
            Some(at("2026-03-09T09:30:00Z"))
        );
        let months = Schedule::parse("0 0 1 jan,jul *").unwrap();
        assert_eq!(
            months.next_after(at("2026-03-07T12:00:00Z")),
            Some(at("2026-07-01T00:00:00Z"))
        );
        assert!(Schedule::parse("* * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
    }

    #[test]
    fn creates_a_job_when_due_and_respects_forbid() {
        let now = at("2026-03-01T10:05:30Z");
        let mut cj = json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "tick", "namespace": "default", "uid": "uid-c", "creationTimestamp": "2026-03-01T10:00:30Z"},
            "spec": {"schedule": "*/5 * * * *", "concurrencyPolicy": "Forbid",
                     "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}});
        let mut snap = Snapshot::default();
        snap.insert("batch", "cronjobs", cj.clone());
        let out = CronJobController.reconcile("default/tick", &snap, now);
        let job = out
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Create { object, .. } => Some(object.clone()),
                _ => None,
            })
            .expect("a job");
        assert_eq!(
            job["metadata"]["name"],
            format!("tick-{}", at("2026-03-01T10:05:00Z").as_second() / 60)
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-c");
        assert_eq!(out.requeue_after, Some(Duration::from_secs(270)));
        // Forbid: while that job runs, the next slot is skipped.
        let mut running = job.clone();
        running["metadata"]["uid"] = json!("uid-j");
        snap.insert("batch", "jobs", running);
        cj["status"] = json!({"lastScheduleTime": "2026-03-01T10:05:00Z"});
        snap.insert("batch", "cronjobs", cj);
        let out = CronJobController.reconcile("default/tick", &snap, at("2026-03-01T10:10:30Z"));
        assert!(
            !out.actions
                .iter()
                .any(|a| matches!(a, Action::Create { .. }))
        );
    }
}
