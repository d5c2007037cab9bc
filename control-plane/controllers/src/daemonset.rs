//! DaemonSet: one pod on every node the pod template fits (node selector,
//! affinity, taints, runtime), pinned with node affinity on the node name
//! and placed by the scheduler, as Kubernetes does since 1.12. Template
//! changes roll out one node at a time (RollingUpdate, maxUnavailable 1).

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::Controller;
use super::replicaset::{owned_pods, owner_keys};
use weft_cluster::objects::{self as o, key_of};
use weft_cluster::{Action, NodeFit, Outcome, res};
use weft_cluster::{Change, Snapshot};

pub struct DaemonSetController {
    /// Where the template fits: the scheduler's node-level filters.
    pub fit: Arc<dyn NodeFit>,
}

const HASH_LABEL: &str = "controller-revision-hash";

/// Tolerations every daemon pod gets, so node trouble does not evict it.
fn daemon_tolerations() -> Vec<Value> {
    let mut t: Vec<Value> = [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ]
    .iter()
    .map(|k| json!({"key": k, "operator": "Exists", "effect": "NoExecute"}))
    .collect();
    for k in [
        "disk-pressure",
        "memory-pressure",
        "pid-pressure",
        "unschedulable",
    ] {
        t.push(json!({"key": format!("node.kubernetes.io/{k}"), "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The pod this DaemonSet would run on `node`.
fn pod_for(ds: &Value, template: &Value, hash: &str, node: &str) -> Value {
    let mut t = template.clone();
    t["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut tolerations = t
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    t["spec"]["tolerations"] = json!(tolerations);
    t["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    o::pod_from_template(&t, ds, &format!("{}-", o::name(ds)))
}

/// The node a daemon pod is pinned to.
fn pinned_node(pod: &Value) -> Option<&str> {
    if let Some(n) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Some(n);
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
        .and_then(Value::as_str)
}

impl Controller for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("apps", "daemonsets")
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        match change.resource() {
            ("apps", "daemonsets") => vec![key_of(change.object())],
            ("", "pods") => owner_keys(change, "DaemonSet"),
            // A node joined, left, or changed labels or taints: every DaemonSet looks again.
            ("", "nodes") => {
                let relevant = match (&change.old, &change.new) {
                    (Some(a), Some(b)) => ["/metadata/labels", "/spec/taints"]
                        .iter()
                        .any(|p| a.pointer(p) != b.pointer(p)),
                    _ => true,
                };
                if relevant {
                    snap.list("apps", "daemonsets", None)
                        .map(|d| key_of(d))
                        .collect()
                } else {
                    vec![]
                }
            }
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let (ns, name) = o::split_key(key);
        let Some(ds) = snap.get("apps", "daemonsets", ns, name) else {
            return out;
        };
        if o::is_terminating(ds) {
            return out;
        }
        let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = o::template_hash(&template);
        let mut by_node: HashMap<&str, Vec<&Arc<Value>>> = HashMap::new();
        let pods = owned_pods(snap, ds);
        for p in pods.iter().filter(|p| o::is_active(p)) {
            if let Some(n) = pinned_node(p) {
                by_node.entry(n).or_default().push(p);
            }
        }
        let min_ready = ds
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let (mut desired, mut scheduled, mut ready, mut available, mut updated, mut misscheduled) =
            (0, 0, 0, 0, 0, 0);
        let mut outdated: Vec<&Arc<Value>> = Vec::new();
        let mut unavailable = 0;
        for node in snap.list("", "nodes", None) {
            let node_name = o::name(node);
            let probe = pod_for(ds, &template, &hash, node_name);
            let fits = self.fit.fits(&probe, node, snap);
            let here = by_node.remove(node_name).unwrap_or_default();
            if !fits {
                misscheduled += usize::from(!here.is_empty());
                for p in here {
                    out.push(Action::Delete {
                        res: res("pods"),
                        ns: ns.into(),
                        name: o::name(p).into(),
                        options: json!({}),
                    });
                }
                continue;
            }
            desired += 1;
            match here.as_slice() {
                [] => {
                    out.push(Action::Create {
                        res: res("pods"),
                        ns: ns.into(),
                        object: probe,
                    });
                    unavailable += 1;
                }
                [first, extra @ ..] => {
                    scheduled += 1;
                    for p in extra {
                        out.push(Action::Delete {
                            res: res("pods"),
                            ns: ns.into(),
                            name: o::name(p).into(),
                            options: json!({}),
                        });
                    }
                    ready += usize::from(o::is_ready(first));
                    let is_available = o::is_available(first, min_ready, now);
                    available += usize::from(is_available);
                    unavailable += usize::from(!is_available);
                    if o::labels(first)
                        .and_then(|l| l.get(HASH_LABEL))
                        .and_then(Value::as_str)
                        == Some(hash.as_str())
                    {
                        updated += 1;
                    } else {
                        outdated.push(first);
                    }
                }
            }
        }
        // Pods pinned to nodes that no longer exist.
        for p in by_node.into_values().flatten() {
            out.push(Action::Delete {
                res: res("pods"),
                ns: ns.into(),
                name: o::name(p).into(),
                options: json!({}),
            });
        }
        let on_delete = ds
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            == Some("OnDelete");
        if !on_delete && unavailable == 0 {
            // One at a time: replace an outdated pod only while all others are available.
            if let Some(p) = outdated.first() {
                out.push(Action::Delete {
                    res: res("pods"),
                    ns: ns.into(),
                    name: o::name(p).into(),
                    options: json!({}),
                });
            }
        }
        let status = json!({"desiredNumberScheduled": desired, "currentNumberScheduled": scheduled,
            "numberMisscheduled": misscheduled, "numberReady": ready, "numberAvailable": available,
            "numberUnavailable": desired - available, "updatedNumberScheduled": updated,
            "observedGeneration": o::generation(ds)});
        let fields: Vec<&str> = status
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if o::status_counts_differ(ds, &status, &fields) {
            out.push(Action::patch_status(res("daemonsets"), ns, name, status));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the scheduler's filters: a node fits unless tainted.
    struct Untainted;

    impl NodeFit for Untainted {
        fn fits(&self, _pod: &Value, node: &Arc<Value>, _snap: &Snapshot) -> bool {
            node.pointer("/spec/taints").is_none()
        }
    }

    fn controller() -> DaemonSetController {
        DaemonSetController {
            fit: Arc::new(Untainted),
        }
    }

    fn ds() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default", "uid": "uid-ds", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"runtimeClassName": "wasm", "containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn node(name: &str, tainted: bool) -> Value {
        let mut n =
            json!({"metadata": {"name": name, "labels": {"runtime.weft.dev/wasmtime": "true"}}});
        if tainted {
            n["spec"] =
                json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]});
        }
        n
    }

    fn snapshot() -> Snapshot {
        let mut snap = Snapshot::default();
        snap.insert(
            "node.k8s.io",
            "runtimeclasses",
            json!({"metadata": {"name": "wasm"}, "handler": "wasmtime"}),
        );
        snap.insert("apps", "daemonsets", ds());
        snap
    }

    #[test]
    fn one_pod_per_fitting_node() {
        let mut snap = snapshot();
        snap.insert("", "nodes", node("n1", false));
        snap.insert("", "nodes", node("n2", false));
        snap.insert("", "nodes", node("n3", true));
        let out = controller().reconcile("default/agent", &snap, Timestamp::now());
        let pinned: Vec<String> = out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { object, .. } => pinned_node(object).map(String::from),
                _ => None,
            })
            .collect();
        assert_eq!(pinned, vec!["n1", "n2"], "the tainted node is skipped");
    }

    #[test]
    fn a_new_node_gets_its_pod_and_outdated_pods_roll() {
        let mut snap = snapshot();
        snap.insert("", "nodes", node("n1", false));
        let d = ds();
        let mut running = pod_for(&d, &d["spec"]["template"], "oldhash", "n1");
        running["metadata"]["name"] = json!("agent-a");
        running["metadata"]["uid"] = json!("a");
        running["spec"]["nodeName"] = json!("n1");
        running["status"] =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        snap.insert("", "pods", running);
        // Outdated and alone: it is replaced.
        let out = controller().reconcile("default/agent", &snap, Timestamp::now());
        assert!(
            out.actions
                .iter()
                .any(|a| matches!(a, Action::Delete { name, .. } if name == "agent-a")),
            "{:?}",
            out.actions
        );
        snap.insert("", "nodes", node("n2", false));
        let out = controller().reconcile("default/agent", &snap, Timestamp::now());
        assert!(out.actions.iter().any(
            |a| matches!(a, Action::Create { object, .. } if pinned_node(object) == Some("n2"))
        ));
        assert!(
            !out.actions
                .iter()
                .any(|a| matches!(a, Action::Delete { .. })),
            "no rollout while a pod is missing"
        );
    }
}
