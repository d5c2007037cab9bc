//! Job: run pods until `completions` succeed, at most `parallelism` at a
//! time, failing after `backoffLimit` failed pods or `activeDeadlineSeconds`.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::Controller;
use super::replicaset::{owned_pods, owner_keys};
use weft_cluster::objects::{self as o, key_of};
use weft_cluster::{Action, Outcome, res};
use weft_cluster::{Change, Snapshot};

pub struct JobController;

pub fn finished(job: &Value) -> Option<&'static str> {
    ["Complete", "Failed"]
        .into_iter()
        .find(|c| o::condition_status(job, c) == Some("True"))
}

fn cond(ty: &str, reason: &str, message: &str, ts: &str) -> Value {
    json!({"type": ty, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": ts, "lastTransitionTime": ts})
}

impl Controller for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("batch", "jobs")
    }

    fn keys_for(&self, change: &Change, _snap: &Snapshot) -> Vec<String> {
        match change.resource() {
            ("batch", "jobs") => vec![key_of(change.object())],
            ("", "pods") => owner_keys(change, "Job"),
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let (ns, name) = o::split_key(key);
        let Some(job) = snap.get("batch", "jobs", ns, name) else {
            return out;
        };
        if o::is_terminating(job) || finished(job).is_some() {
            return out;
        }
        let int =
            |ptr: &str, default: i64| job.pointer(ptr).and_then(Value::as_i64).unwrap_or(default);
        let completions = int("/spec/completions", 1);
        let parallelism = int("/spec/parallelism", 1);
        let backoff_limit = int("/spec/backoffLimit", 6);
        let pods = owned_pods(snap, job);
        let succeeded = pods.iter().filter(|p| o::phase(p) == "Succeeded").count() as i64;
        let failed = pods.iter().filter(|p| o::phase(p) == "Failed").count() as i64;
        let active: Vec<_> = pods.iter().filter(|p| o::is_active(p)).collect();
        let ready = active.iter().filter(|p| o::is_ready(p)).count();
        let ts = o::ts(now);
        let start = o::parse_ts(job.pointer("/status/startTime")).unwrap_or(now);
        let mut status = json!({"active": active.len(), "succeeded": succeeded, "failed": failed, "ready": ready,
                                "startTime": o::ts(start), "uncountedTerminatedPods": {}});

        let deadline = job
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_i64);
        let failure = if failed > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if deadline.is_some_and(|d| start + SignedDuration::from_secs(d) <= now) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };
        let done = if let Some((reason, message)) = failure {
            status["conditions"] = json!([
                cond("FailureTarget", reason, message, &ts),
                cond("Failed", reason, message, &ts)
            ]);
            out.push(Action::Event {
                regarding: job.clone(),
                warning: true,
                reason: reason.into(),
                message: message.into(),
            });
            true
        } else if succeeded >= completions {
            status["conditions"] = json!([
                cond(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    &ts
                ),
                cond(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    &ts
                )
            ]);
            status["completionTime"] = json!(ts);
            out.push(Action::Event {
                regarding: job.clone(),
                warning: false,
                reason: "Completed".into(),
                message: "Job completed".into(),
            });
            true
        } else {
            false
        };
        if done {
            for p in &active {
                out.push(Action::Delete {
                    res: res("pods"),
                    ns: ns.into(),
                    name: o::name(p).into(),
                    options: json!({"preconditions": {"uid": o::uid(p)}}),
                });
            }
            status["active"] = json!(0);
        } else {
            let want = parallelism.min(completions - succeeded).max(0);
            let missing = want - active.len() as i64;
            if missing > 0 {
                start_pods(&mut out, job, missing);
            }
            if let Some(d) = deadline {
                out.requeue(o::until(start + SignedDuration::from_secs(d), now));
            }
        }
        let changed = done
            || o::status_counts_differ(job, &status, &["active", "succeeded", "failed", "ready"])
            || job.pointer("/status/startTime").is_none();
        if changed {
            out.push(Action::patch_status(res("jobs"), ns, name, status));
        }
        out
    }
}

/// `count` more pods from the Job's template, labelled as Kubernetes
/// labels a Job's pods.
fn start_pods(out: &mut Outcome, job: &Arc<Value>, count: i64) {
    let (ns, name) = (o::namespace(job), o::name(job));
    let mut template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", o::uid(job)),
        ("batch.kubernetes.io/job-name", name),
        ("controller-uid", o::uid(job)),
        ("job-name", name),
    ] {
        template["metadata"]["labels"][k] = json!(v);
    }
    for _ in 0..count {
        out.push(Action::Create {
            res: res("pods"),
            ns: ns.into(),
            object: o::pod_from_template(&template, job, &format!("{name}-")),
        });
    }
    out.push(Action::Event {
        regarding: job.clone(),
        warning: false,
        reason: "SuccessfulCreate".into(),
        message: format!("Created {count} pod(s)"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(completions: i64, parallelism: i64, backoff: i64) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "default", "uid": "uid-j"},
            "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": backoff,
                     "template": {"metadata": {}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn pod(name: &str, j: &Value, phase: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": name, "ownerReferences": [o::owner_ref(j)]},
               "status": {"phase": phase}})
    }

    fn creates(out: &Outcome) -> usize {
        out.actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count()
    }

    fn status(out: &Outcome) -> Value {
        out.actions
            .iter()
            .find_map(|a| match a {
                Action::Patch {
                    status: true,
                    patch,
                    ..
                } => Some(patch["status"].clone()),
                _ => None,
            })
            .expect("status")
    }

    #[test]
    fn runs_parallelism_pods_until_completions() {
        let j = job(3, 2, 6);
        let mut snap = Snapshot::default();
        snap.insert("batch", "jobs", j.clone());
        let out = JobController.reconcile("default/j", &snap, Timestamp::now());
        assert_eq!(creates(&out), 2, "parallelism 2");
        let Action::Create { object, .. } = &out.actions[0] else {
            panic!()
        };
        assert_eq!(object["metadata"]["labels"]["job-name"], "j");
        snap.insert("", "pods", pod("a", &j, "Succeeded"));
        snap.insert("", "pods", pod("b", &j, "Succeeded"));
        snap.insert("", "pods", pod("c", &j, "Running"));
        let out = JobController.reconcile("default/j", &snap, Timestamp::now());
        assert_eq!(creates(&out), 0, "one left to do and it is running");
        snap.insert("", "pods", pod("c", &j, "Succeeded"));
        let out = JobController.reconcile("default/j", &snap, Timestamp::now());
        let s = status(&out);
        assert_eq!(s["succeeded"], 3);
        assert!(
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Complete")
        );
    }

    #[test]
    fn fails_past_the_backoff_limit() {
        let j = job(1, 1, 1);
        let mut snap = Snapshot::default();
        snap.insert("batch", "jobs", j.clone());
        snap.insert("", "pods", pod("a", &j, "Failed"));
        let out = JobController.reconcile("default/j", &snap, Timestamp::now());
        assert_eq!(creates(&out), 1, "one failure is within backoffLimit 1");
        snap.insert("", "pods", pod("b", &j, "Failed"));
        let out = JobController.reconcile("default/j", &snap, Timestamp::now());
        assert_eq!(creates(&out), 0);
        let s = status(&out);
        assert!(
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Failed" && c["reason"] == "BackoffLimitExceeded")
        );
    }

    #[test]
    fn active_deadline_fails_the_job() {
        let mut j = job(1, 1, 6);
        j["spec"]["activeDeadlineSeconds"] = json!(5);
        j["status"] = json!({"startTime": o::ts(Timestamp::now() - SignedDuration::from_secs(10))});
        let mut snap = Snapshot::default();
        snap.insert("batch", "jobs", j.clone());
        snap.insert("", "pods", pod("a", &j, "Running"));
        let out = JobController.reconcile("default/j", &snap, Timestamp::now());
        assert!(
            out.actions
                .iter()
                .any(|a| matches!(a, Action::Delete { name, .. } if name == "a"))
        );
        assert!(
            status(&out)["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["reason"] == "DeadlineExceeded")
        );
    }
}
