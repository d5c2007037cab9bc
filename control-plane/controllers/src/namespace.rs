//! Namespace lifecycle: a Terminating namespace has its contents deleted,
//! then its `kubernetes` finalizer removed, which lets the API server drop it.

use std::time::Duration;

use serde_json::Value;
use weft_api::resources;

use super::Controller;
use weft_cluster::objects as o;
use weft_cluster::{Action, Outcome};
use weft_cluster::{Change, Snapshot};

pub struct NamespaceController;

impl Controller for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("", "namespaces")
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        if change.resource() == ("", "namespaces") {
            return vec![o::name(change.object()).to_string()];
        }
        let ns = o::namespace(change.object());
        let terminating = !ns.is_empty()
            && snap
                .get("", "namespaces", "", ns)
                .is_some_and(|n| o::is_terminating(n));
        if terminating && change.new.is_none() {
            vec![ns.to_string()]
        } else {
            vec![]
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, _now: jiff::Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let Some(ns) = snap.get("", "namespaces", "", key) else {
            return out;
        };
        if !o::is_terminating(ns) {
            return out;
        }
        let mut remaining = 0;
        for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let objs: Vec<_> = snap.list(res.group, res.plural, Some(key)).collect();
            remaining += objs.len();
            if objs.iter().any(|x| !o::is_terminating(x)) {
                out.push(Action::DeleteCollection {
                    res,
                    ns: key.to_string(),
                });
            }
        }
        if remaining == 0 {
            // Events are not mirrored: clear them last, then release the namespace.
            out.push(Action::DeleteCollection {
                res: weft_cluster::res("events"),
                ns: key.to_string(),
            });
            let has_finalizer = ns
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if has_finalizer {
                out.push(Action::FinalizeNamespace {
                    object: (**ns).clone(),
                });
            }
        } else {
            // Graceful pod deletions finish on their own schedule.
            out.requeue(Duration::from_secs(2));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empties_then_finalizes() {
        let mut snap = Snapshot::default();
        snap.insert("", "namespaces", json!({"metadata": {"name": "t", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"finalizers": ["kubernetes"]}}));
        snap.insert(
            "",
            "configmaps",
            json!({"metadata": {"name": "c", "namespace": "t"}}),
        );
        snap.insert(
            "",
            "configmaps",
            json!({"metadata": {"name": "elsewhere", "namespace": "u"}}),
        );
        let out = NamespaceController.reconcile("t", &snap, jiff::Timestamp::now());
        assert!(
            matches!(&out.actions[..], [Action::DeleteCollection { res, ns }] if res.plural == "configmaps" && ns == "t"),
            "{:?}",
            out.actions
        );
        assert!(out.requeue_after.is_some());
        snap.objects.retain(|k, _| !k.contains("\0t\0c"));
        let out = NamespaceController.reconcile("t", &snap, jiff::Timestamp::now());
        assert!(
            matches!(out.actions.last(), Some(Action::FinalizeNamespace { .. })),
            "{:?}",
            out.actions
        );
    }
}
