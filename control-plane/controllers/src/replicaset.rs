//! ReplicaSet: keep `spec.replicas` active pods matching the template.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::Controller;
use weft_cluster::objects::{self as o, key_of};
use weft_cluster::{Action, Outcome, res};
use weft_cluster::{Change, Snapshot};

pub struct ReplicaSetController;

/// At most this many pods created or deleted per pass (kube's burstReplicas).
const BURST: usize = 500;

/// Pods controlled by `owner` (by uid), in its namespace.
pub(crate) fn owned_pods<'a>(snap: &'a Snapshot, owner: &'a Value) -> Vec<&'a Arc<Value>> {
    let uid = o::uid(owner);
    snap.list("", "pods", Some(o::namespace(owner)))
        .filter(|p| o::controlled_by(p, uid))
        .collect()
}

/// Keys of the controller owning a changed pod (or of the pod's own kind).
pub(crate) fn owner_keys(change: &Change, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    for obj in [&change.old, &change.new].into_iter().flatten() {
        if let Some(r) = o::controller_of(obj)
            && r.get("kind").and_then(Value::as_str) == Some(kind)
        {
            let k = o::key(
                o::namespace(obj),
                r.get("name").and_then(Value::as_str).unwrap_or(""),
            );
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

/// Deletion order: unscheduled, then pending, then not ready, then newest first.
fn deletion_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = p
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let created = p
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    (
        u8::from(scheduled),
        u8::from(o::phase(p) == "Running"),
        u8::from(o::is_ready(p)),
        std::cmp::Reverse(created),
    )
}

impl Controller for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("apps", "replicasets")
    }

    fn keys_for(&self, change: &Change, _snap: &Snapshot) -> Vec<String> {
        match change.resource() {
            ("apps", "replicasets") => vec![key_of(change.object())],
            ("", "pods") => owner_keys(change, "ReplicaSet"),
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let (ns, name) = o::split_key(key);
        let Some(rs) = snap.get("apps", "replicasets", ns, name) else {
            return out;
        };
        if o::is_terminating(rs) {
            return out;
        }
        let pods = owned_pods(snap, rs);
        let mut active: Vec<&Arc<Value>> =
            pods.iter().copied().filter(|p| o::is_active(p)).collect();
        let want = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        if active.len() < want {
            for _ in 0..(want - active.len()).min(BURST) {
                out.push(Action::Create {
                    res: res("pods"),
                    ns: ns.to_string(),
                    object: o::pod_from_template(&template, rs, &format!("{name}-")),
                });
            }
            out.push(Action::Event {
                regarding: rs.clone(),
                warning: false,
                reason: "SuccessfulCreate".into(),
                message: format!("Created {} pod(s)", (want - active.len()).min(BURST)),
            });
        } else if active.len() > want {
            active.sort_by_key(|p| deletion_rank(p));
            for p in active.iter().take((active.len() - want).min(BURST)) {
                out.push(Action::Delete {
                    res: res("pods"),
                    ns: ns.to_string(),
                    name: o::name(p).to_string(),
                    options: json!({"preconditions": {"uid": o::uid(p)}}),
                });
                out.push(Action::Event {
                    regarding: rs.clone(),
                    warning: false,
                    reason: "SuccessfulDelete".into(),
                    message: format!("Deleted pod: {}", o::name(p)),
                });
            }
        }
        let min_ready = rs
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let live: Vec<&&Arc<Value>> = pods.iter().filter(|p| o::is_active(p)).collect();
        let ready = live.iter().filter(|p| o::is_ready(p)).count();
        let available = live
            .iter()
            .filter(|p| o::is_available(p, min_ready, now))
            .count();
        if ready > available {
            // Someone becomes available once minReadySeconds pass.
            out.requeue(std::time::Duration::from_secs(min_ready.max(1) as u64));
        }
        let status = json!({
            "replicas": live.len(), "fullyLabeledReplicas": live.len(),
            "readyReplicas": ready, "availableReplicas": available,
            "observedGeneration": o::generation(rs)});
        let fields = [
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ];
        if o::status_counts_differ(rs, &status, &fields) {
            out.push(Action::patch_status(res("replicasets"), ns, name, status));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rs(name: &str, replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "5"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    pub(crate) fn pod(name: &str, owner: &Value, ready: bool) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "a"},
                         "creationTimestamp": "2026-01-01T00:00:00Z", "ownerReferences": [o::owner_ref(owner)]},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    }

    fn creates(out: &Outcome) -> usize {
        out.actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count()
    }

    fn deletes(out: &Outcome) -> Vec<String> {
        out.actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn creates_missing_pods_and_ignores_terminating_ones() {
        let mut snap = Snapshot::default();
        let r = rs("web", 3);
        snap.insert("apps", "replicasets", r.clone());
        snap.insert("", "pods", pod("web-a", &r, true));
        let mut dying = pod("web-b", &r, true);
        dying["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        snap.insert("", "pods", dying);
        let out = ReplicaSetController.reconcile("default/web", &snap, Timestamp::now());
        assert_eq!(creates(&out), 2);
        let Action::Create { object, .. } = &out.actions[0] else {
            panic!()
        };
        assert_eq!(object["metadata"]["generateName"], "web-");
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "uid-web");
        assert_eq!(object["metadata"]["labels"]["app"], "a");
    }

    #[test]
    fn deletes_not_ready_pods_first_and_reports_status() {
        let mut snap = Snapshot::default();
        let r = rs("web", 1);
        snap.insert("apps", "replicasets", r.clone());
        snap.insert("", "pods", pod("web-a", &r, true));
        snap.insert("", "pods", pod("web-b", &r, false));
        // Someone else's pod is never touched.
        snap.insert("", "pods", pod("other", &rs("other", 1), false));
        let out = ReplicaSetController.reconcile("default/web", &snap, Timestamp::now());
        assert_eq!(deletes(&out), vec!["web-b".to_string()]);
        let status = out.actions.iter().find_map(|a| match a {
            Action::Patch { patch, .. } => Some(patch.clone()),
            _ => None,
        });
        let status = status.expect("status patch");
        assert_eq!(status["status"]["replicas"], 2);
        assert_eq!(status["status"]["readyReplicas"], 1);
    }

    #[test]
    fn steady_state_does_nothing() {
        let mut snap = Snapshot::default();
        let mut r = rs("web", 1);
        r["status"] = json!({"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 1});
        snap.insert("apps", "replicasets", r.clone());
        snap.insert("", "pods", pod("web-a", &r, true));
        let out = ReplicaSetController.reconcile("default/web", &snap, Timestamp::now());
        assert!(out.actions.is_empty(), "{:?}", out.actions);
    }
}
