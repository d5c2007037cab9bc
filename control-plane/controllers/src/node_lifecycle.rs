//! Node lifecycle: a node whose Lease and status go stale for the grace
//! period turns Ready=Unknown and gets the unreachable taints; NotReady
//! nodes get the not-ready ones. Pods that do not tolerate a NoExecute
//! taint (or whose tolerationSeconds ran out) are evicted.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::Controller;
use weft_cluster::objects as o;
use weft_cluster::{Action, Outcome, res};
use weft_cluster::{Change, Snapshot};

pub struct NodeLifecycleController {
    pub grace: Duration,
}

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

pub(crate) fn pods_on<'a>(
    snap: &'a Snapshot,
    node: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<Value>> + 'a {
    snap.list("", "pods", None)
        .filter(move |p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
}

/// The taints this controller owns that the node should carry now.
fn wanted_taints(ready: &str, unschedulable: bool) -> Vec<(&'static str, &'static str)> {
    let mut t = match ready {
        "True" => vec![],
        "Unknown" => vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
        _ => vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
    };
    if unschedulable {
        t.push((UNSCHEDULABLE, "NoSchedule"));
    }
    t
}

impl Controller for NodeLifecycleController {
    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("", "nodes")
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        let obj = change.object();
        match change.resource() {
            ("", "nodes") => vec![o::name(obj).to_string()],
            ("coordination.k8s.io", "leases") if o::namespace(obj) == "kube-node-lease" => {
                vec![o::name(obj).to_string()]
            }
            ("", "pods") if change.new.is_some() => {
                let node = obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let tainted = snap
                    .get("", "nodes", "", node)
                    .is_some_and(|n| o::taints(n).iter().any(|t| t["effect"] == "NoExecute"));
                if tainted {
                    vec![node.to_string()]
                } else {
                    vec![]
                }
            }
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let Some(node) = snap.get("", "nodes", "", key) else {
            return out;
        };
        let grace = SignedDuration::try_from(self.grace).unwrap_or(SignedDuration::from_secs(40));
        let lease = snap.get("coordination.k8s.io", "leases", "kube-node-lease", key);
        let probe = [
            lease.and_then(|l| o::parse_ts(l.pointer("/spec/renewTime"))),
            o::parse_ts(o::condition_field(node, "Ready", "lastHeartbeatTime")),
            o::parse_ts(node.pointer("/metadata/creationTimestamp")),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now);
        let stale = probe + grace < now;
        let reported = o::condition_status(node, "Ready");
        let ts = o::ts(now);
        if stale && reported != Some("Unknown") {
            mark_unknown(&mut out, node, &ts);
        }
        if !stale {
            out.requeue(o::until(probe + grace, now));
        }
        // A node that never reported gets no opinion until its grace period runs out.
        let ready = match (stale, reported) {
            (true, _) => "Unknown",
            (false, Some(r)) => r,
            (false, None) => return out,
        };

        let taints = reconcile_taints(&mut out, node, ready, &ts);

        // A healthy node with nothing to evict needs no look at its pods.
        if ready == "True" && !taints.iter().any(|t| t["effect"] == "NoExecute") {
            return out;
        }
        for pod in pods_on(snap, key).filter(|p| o::is_active(p)) {
            if ready != "True" && o::is_ready(pod) {
                mark_pod_not_ready(&mut out, pod, &ts);
            }
            match evict_at(pod, &taints, now) {
                Some(at) if at <= now => {
                    out.push(Action::Event {
                        regarding: pod.clone(),
                        warning: false,
                        reason: "TaintManagerEviction".into(),
                        message: format!(
                            "Marking for deletion Pod {}/{}",
                            o::namespace(pod),
                            o::name(pod)
                        ),
                    });
                    out.push(Action::Delete {
                        res: res("pods"),
                        ns: o::namespace(pod).into(),
                        name: o::name(pod).into(),
                        options: json!({"preconditions": {"uid": o::uid(pod)}}),
                    });
                }
                Some(at) => out.requeue(o::until(at, now)),
                None => {}
            }
        }
        out
    }
}

/// The agent stopped posting: every condition turns Unknown.
fn mark_unknown(out: &mut Outcome, node: &Arc<Value>, ts: &str) {
    let conds: Vec<Value> = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            c["status"] = json!("Unknown");
            c["reason"] = json!("NodeStatusUnknown");
            c["message"] = json!("Kubelet stopped posting node status.");
            c["lastTransitionTime"] = json!(ts);
            c
        })
        .collect();
    out.push(Action::patch_status(
        res("nodes"),
        "",
        o::name(node),
        json!({"conditions": conds}),
    ));
    out.push(Action::Event {
        regarding: node.clone(),
        warning: false,
        reason: "NodeNotReady".into(),
        message: format!("Node {} status is now: NodeNotReady", o::name(node)),
    });
}

/// Taints: keep everyone else's, make ours match the Ready condition.
/// Returns the node's taints as they will be.
fn reconcile_taints(out: &mut Outcome, node: &Value, ready: &str, ts: &str) -> Vec<Value> {
    let unschedulable = node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true);
    let wanted = wanted_taints(ready, unschedulable);
    let ours = [UNREACHABLE, NOT_READY, UNSCHEDULABLE];
    let current = o::taints(node);
    let mut taints: Vec<Value> = current
        .iter()
        .filter(|t| {
            let k = t["key"].as_str().unwrap_or("");
            let e = t["effect"].as_str().unwrap_or("");
            !ours.contains(&k) || wanted.contains(&(k, e))
        })
        .cloned()
        .collect();
    for (k, e) in &wanted {
        if !taints.iter().any(|t| t["key"] == *k && t["effect"] == *e) {
            let mut t = json!({"key": k, "effect": e});
            if *e == "NoExecute" {
                t["timeAdded"] = json!(ts);
            }
            taints.push(t);
        }
    }
    if taints.as_slice() != current {
        out.push(Action::Patch {
            res: res("nodes"),
            ns: String::new(),
            name: o::name(node).into(),
            status: false,
            patch: json!({"spec": {"taints": taints}}),
        });
    }
    taints
}

/// The node is not Ready, so neither are its pods.
fn mark_pod_not_ready(out: &mut Outcome, pod: &Arc<Value>, ts: &str) {
    let conds: Vec<Value> = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!("False");
                c["lastTransitionTime"] = json!(ts);
            }
            c
        })
        .collect();
    out.push(Action::patch_status(
        res("pods"),
        o::namespace(pod),
        o::name(pod),
        json!({"conditions": conds}),
    ));
}

/// NoExecute taints evict a pod now, or when the shortest matching
/// tolerationSeconds runs out; None if it tolerates them for ever.
fn evict_at(pod: &Value, taints: &[Value], now: Timestamp) -> Option<Timestamp> {
    let mut evict_at: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t["effect"] == "NoExecute") {
        let added = o::parse_ts(taint.get("timeAdded")).unwrap_or(now);
        let matching: Vec<&Value> = o::tolerations(pod)
            .iter()
            .filter(|tol| o::tolerates(tol, taint))
            .collect();
        let at = if matching.is_empty() {
            Some(now)
        } else {
            matching
                .iter()
                .filter_map(|tol| tol.get("tolerationSeconds").and_then(Value::as_i64))
                .min()
                .map(|s| added + SignedDuration::from_secs(s.max(0)))
        };
        if let Some(at) = at {
            evict_at = Some(evict_at.map_or(at, |e| e.min(at)));
        }
    }
    evict_at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(heartbeat: Timestamp) -> Value {
        json!({"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": o::ts(heartbeat)}]}})
    }

    fn pod(tolerate_secs: Option<i64>) -> Value {
        let mut p = json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        if let Some(s) = tolerate_secs {
            p["spec"]["tolerations"] = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": s}]);
        }
        p
    }

    #[test]
    fn fresh_nodes_are_left_alone_until_the_grace_period() {
        let now = Timestamp::now();
        let mut snap = Snapshot::default();
        snap.insert("", "nodes", node(now - SignedDuration::from_secs(5)));
        snap.insert("", "pods", pod(None));
        let c = NodeLifecycleController {
            grace: Duration::from_secs(40),
        };
        let out = c.reconcile("n1", &snap, now);
        assert!(out.actions.is_empty(), "{:?}", out.actions);
        let after = out.requeue_after.expect("rechecks at the deadline");
        assert!(
            after <= Duration::from_secs(36) && after >= Duration::from_secs(34),
            "{after:?}"
        );
    }

    #[test]
    fn a_node_that_never_reported_is_left_alone_until_its_grace_runs_out() {
        let now = Timestamp::now();
        let mut snap = Snapshot::default();
        snap.insert(
            "",
            "nodes",
            json!({"metadata": {"name": "n1", "creationTimestamp": o::ts(now)}}),
        );
        let c = NodeLifecycleController {
            grace: Duration::from_secs(40),
        };
        assert!(c.reconcile("n1", &snap, now).actions.is_empty());
        let later = c.reconcile("n1", &snap, now + SignedDuration::from_secs(41));
        assert!(later.actions.iter().any(|a| matches!(a, Action::Patch { status: false, patch, .. } if patch["spec"]["taints"][0]["key"] == UNREACHABLE)));
    }

    #[test]
    fn silent_node_becomes_unknown_tainted_and_evicts() {
        let now = Timestamp::now();
        let mut snap = Snapshot::default();
        snap.insert("", "nodes", node(now - SignedDuration::from_secs(60)));
        snap.insert("", "pods", pod(None));
        let c = NodeLifecycleController {
            grace: Duration::from_secs(40),
        };
        let out = c.reconcile("n1", &snap, now);
        let status = out
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Patch {
                    res,
                    status: true,
                    patch,
                    ..
                } if res.plural == "nodes" => Some(patch.clone()),
                _ => None,
            })
            .expect("condition update");
        assert_eq!(status["status"]["conditions"][0]["status"], "Unknown");
        let taints = out
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Patch {
                    res,
                    status: false,
                    patch,
                    ..
                } if res.plural == "nodes" => Some(patch.clone()),
                _ => None,
            })
            .expect("taints");
        assert_eq!(taints["spec"]["taints"].as_array().unwrap().len(), 2);
        assert!(
            out.actions
                .iter()
                .any(|a| matches!(a, Action::Delete { name, .. } if name == "p")),
            "untolerating pod evicted"
        );
    }

    #[test]
    fn toleration_seconds_delay_eviction() {
        let now = Timestamp::now();
        let mut n = node(now - SignedDuration::from_secs(60));
        n["status"]["conditions"][0]["status"] = json!("Unknown");
        n["spec"]["taints"] = json!([{"key": UNREACHABLE, "effect": "NoSchedule"},
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": o::ts(now - SignedDuration::from_secs(10))}]);
        let mut snap = Snapshot::default();
        snap.insert("", "nodes", n);
        snap.insert("", "pods", pod(Some(30)));
        let c = NodeLifecycleController {
            grace: Duration::from_secs(40),
        };
        let out = c.reconcile("n1", &snap, now);
        assert!(
            !out.actions
                .iter()
                .any(|a| matches!(a, Action::Delete { .. }))
        );
        // timeAdded has whole seconds, so the wait is just under 20 s.
        let wait = out.requeue_after.expect("requeued for the eviction");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        let out = c.reconcile("n1", &snap, now + SignedDuration::from_secs(21));
        assert!(
            out.actions
                .iter()
                .any(|a| matches!(a, Action::Delete { .. }))
        );
    }
}
