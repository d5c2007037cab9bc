//! Pod garbage collection (kube-controller-manager's PodGC): the pods of a
//! node gone for good are force-deleted, since no agent will ever confirm
//! their end and their controllers' replacements are already running
//! elsewhere:
//! * **orphans**: pods bound to a Node that no longer exists, once they are
//!   [`ORPHAN_QUARANTINE`] old (Kubernetes' 40 s quarantine: a pod just
//!   bound may name a Node that is still on its way);
//! * **out of service**: terminating pods on a node that is not Ready and
//!   carries the `node.kubernetes.io/out-of-service` NoExecute taint (an
//!   operator's word that the host is down: Kubernetes' non-graceful node
//!   shutdown). The taint's NoExecute effect has the node lifecycle
//!   controller evict the pods first, which makes them terminating.

use serde_json::{Value, json};

use super::Controller;
use super::node_lifecycle::pods_on;
use weft_cluster::objects as o;
use weft_cluster::{Action, Change, Outcome, Snapshot, res};

pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
pub const ORPHAN_QUARANTINE: jiff::SignedDuration = jiff::SignedDuration::from_secs(40);

pub struct PodGcController;

fn out_of_service(node: &Value) -> bool {
    o::condition_status(node, "Ready") != Some("True")
        && o::taints(node)
            .iter()
            .any(|t| t["key"] == OUT_OF_SERVICE && t["effect"] == "NoExecute")
}

impl Controller for PodGcController {
    fn name(&self) -> &'static str {
        "pod-gc"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("", "pods")
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        let obj = change.object();
        match change.resource() {
            ("", "pods") if change.new.is_some() => vec![o::key_of(obj)],
            // A node deleted or marked out of service: every pod on it.
            ("", "nodes") => pods_on(snap, o::name(obj)).map(|p| o::key_of(p)).collect(),
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, now: jiff::Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let (ns, name) = o::split_key(key);
        let Some(pod) = snap.get("", "pods", ns, name) else {
            return out;
        };
        let Some(node_name) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else {
            return out;
        };
        let reason = match snap.get("", "nodes", "", node_name) {
            None => {
                let created =
                    o::parse_ts(pod.pointer("/metadata/creationTimestamp")).unwrap_or(now);
                if created + ORPHAN_QUARANTINE > now {
                    out.requeue(o::until(created + ORPHAN_QUARANTINE, now));
                    return out;
                }
                format!("node {node_name} no longer exists")
            }
            Some(node) if o::is_terminating(pod) && out_of_service(node) => {
                format!("node {node_name} is out of service")
            }
            Some(_) => return out,
        };
        out.push(Action::Event {
            regarding: pod.clone(),
            warning: false,
            reason: "PodGC".into(),
            message: format!("Force-deleting pod {ns}/{name}: {reason}"),
        });
        out.push(Action::Delete {
            res: res("pods"),
            ns: ns.into(),
            name: name.into(),
            options: json!({"gracePeriodSeconds": 0, "preconditions": {"uid": o::uid(pod)}}),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, terminating: bool) -> Value {
        let mut p = json!({"metadata": {"name": "p", "namespace": "default", "uid": "u",
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": node}, "status": {"phase": "Running"}});
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        p
    }

    fn node(ready: &str, taint: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": "n1"}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}});
        if let Some(t) = taint {
            n["spec"]["taints"] = json!([{"key": t, "effect": "NoExecute"}]);
        }
        n
    }

    fn force_deleted(snap: &Snapshot) -> bool {
        let out = PodGcController.reconcile("default/p", snap, jiff::Timestamp::now());
        out.actions.iter().any(|a| {
            matches!(a, Action::Delete { name, options, .. }
                if name == "p" && options["gracePeriodSeconds"] == 0 && options["preconditions"]["uid"] == "u")
        })
    }

    #[test]
    fn pods_of_a_deleted_node_are_force_deleted() {
        let mut snap = Snapshot::default();
        snap.insert("", "pods", pod("n1", false));
        assert!(force_deleted(&snap), "no node n1");
        // A pod younger than the quarantine waits for its node to show up.
        let mut young = pod("n1", false);
        young["metadata"]["creationTimestamp"] = json!(o::ts(jiff::Timestamp::now()));
        snap.insert("", "pods", young);
        let out = PodGcController.reconcile("default/p", &snap, jiff::Timestamp::now());
        assert!(out.actions.is_empty(), "{:?}", out.actions);
        assert!(
            out.requeue_after
                .is_some_and(|d| d > std::time::Duration::from_secs(35))
        );
        snap.insert("", "pods", pod("n1", false));
        snap.insert("", "nodes", node("Unknown", None));
        assert!(!force_deleted(&snap), "n1 may come back");
    }

    #[test]
    fn terminating_pods_of_an_out_of_service_node_are_force_deleted() {
        let mut snap = Snapshot::default();
        snap.insert("", "pods", pod("n1", true));
        snap.insert("", "nodes", node("Unknown", Some(OUT_OF_SERVICE)));
        assert!(force_deleted(&snap));
        // Not yet terminating: the lifecycle controller evicts it first.
        snap.insert("", "pods", pod("n1", false));
        assert!(!force_deleted(&snap));
        // The taint on a Ready node is not trusted.
        snap.insert("", "pods", pod("n1", true));
        snap.insert("", "nodes", node("True", Some(OUT_OF_SERVICE)));
        assert!(!force_deleted(&snap));
        // Unknown without the taint: the host may still run the pod.
        snap.insert("", "nodes", node("Unknown", Some("other")));
        assert!(!force_deleted(&snap));
    }

    #[test]
    fn a_node_change_looks_at_every_pod_on_it() {
        let mut snap = Snapshot::default();
        snap.insert("", "pods", pod("n1", false));
        let n = std::sync::Arc::new(node("Unknown", Some(OUT_OF_SERVICE)));
        let change = Change {
            key: weft_cluster::keys::key("", "nodes", "", "n1"),
            old: Some(n),
            new: None,
        };
        assert_eq!(
            PodGcController.keys_for(&change, &snap),
            vec!["default/p".to_string()]
        );
    }
}
