//! The garbage collector: dependents whose owners are gone are deleted
//! (Background), `foregroundDeletion` owners wait for their blocking
//! dependents, and `orphan` owners release theirs first.
//!
//! Keys are whole store keys (`group\0resource\0ns\0name`), since the
//! collector looks at every kind.

use serde_json::{Value, json};
use weft_api::{Resource, resources};

use super::Controller;
use weft_cluster::keys as store;
use weft_cluster::objects as o;
use weft_cluster::{Action, Outcome};
use weft_cluster::{Change, Snapshot};

pub struct GarbageCollector;

fn resource_of_key(key: &str) -> Option<&'static Resource> {
    let mut parts = key.splitn(3, '\0');
    let (g, r) = (parts.next()?, parts.next()?);
    resources::RESOURCES
        .iter()
        .find(|res| res.group == g && res.plural == r)
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The object an owner reference points at, if it exists with that uid.
fn owner<'a>(snap: &'a Snapshot, dependent: &Value, r: &Value) -> Option<&'a Value> {
    let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
    let res = resources::by_kind(api_version, kind)?;
    let ns = if res.namespaced {
        o::namespace(dependent)
    } else {
        ""
    };
    let name = r.get("name").and_then(Value::as_str).unwrap_or("");
    let found = snap.get(res.group, res.plural, ns, name)?;
    (o::uid(found) == r.get("uid").and_then(Value::as_str).unwrap_or("")).then_some(&**found)
}

/// Store keys of objects that name `uid` as an owner.
fn dependents<'a>(
    snap: &'a Snapshot,
    uid: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
    snap.objects.iter().filter_map(move |(k, v)| {
        o::owner_refs(v)
            .iter()
            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
            .then_some((k, &**v))
    })
}

fn interesting(obj: &Value) -> bool {
    !o::owner_refs(obj).is_empty()
        || (o::is_terminating(obj)
            && finalizers(obj)
                .iter()
                .any(|f| matches!(*f, "orphan" | "foregroundDeletion")))
}

fn patch(key: &str, obj: &Value, patch: Value) -> Option<Action> {
    Some(Action::Patch {
        res: resource_of_key(key)?,
        ns: o::namespace(obj).to_string(),
        name: o::name(obj).to_string(),
        status: false,
        patch,
    })
}

impl Controller for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("", "")
    }

    fn initial_keys(&self, snap: &Snapshot) -> Vec<String> {
        snap.objects
            .iter()
            .filter(|(_, v)| interesting(v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        let obj = change.object();
        let mut keys = Vec::new();
        if change.new.as_ref().is_some_and(|n| interesting(n)) {
            keys.push(change.key.clone());
        }
        let gone_or_going = change.new.as_ref().is_none_or(|n| o::is_terminating(n));
        if gone_or_going {
            // Its dependents may now be orphans.
            keys.extend(dependents(snap, o::uid(obj)).map(|(k, _)| k.clone()));
            // A foreground owner may be waiting for it.
            for r in o::owner_refs(obj) {
                if let Some(ow) = owner(snap, obj, r)
                    && let Some(res) = resources::by_kind(
                        ow.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                        ow.get("kind").and_then(Value::as_str).unwrap_or(""),
                    )
                {
                    keys.push(store::key(
                        res.group,
                        res.plural,
                        o::namespace(ow),
                        o::name(ow),
                    ));
                }
            }
        }
        keys
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, _now: jiff::Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let Some(obj) = snap.objects.get(key) else {
            return out;
        };
        let fins = finalizers(obj);
        if o::is_terminating(obj) && fins.contains(&"orphan") {
            for (dk, dep) in dependents(snap, o::uid(obj)) {
                let refs: Vec<&Value> = o::owner_refs(dep)
                    .iter()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(o::uid(obj)))
                    .collect();
                out.actions.extend(patch(
                    dk,
                    dep,
                    json!({"metadata": {"ownerReferences": refs}}),
                ));
            }
            let rest: Vec<&str> = fins.iter().copied().filter(|f| *f != "orphan").collect();
            out.actions
                .extend(patch(key, obj, json!({"metadata": {"finalizers": rest}})));
            return out;
        }
        if o::is_terminating(obj) && fins.contains(&"foregroundDeletion") {
            let mut blocking = 0;
            for (dk, dep) in dependents(snap, o::uid(obj)) {
                let blocks = o::owner_refs(dep).iter().any(|r| {
                    r.get("uid").and_then(Value::as_str) == Some(o::uid(obj))
                        && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                });
                blocking += usize::from(blocks);
                if !o::is_terminating(dep)
                    && let Some(res) = resource_of_key(dk)
                {
                    out.push(Action::Delete {
                        res,
                        ns: o::namespace(dep).to_string(),
                        name: o::name(dep).to_string(),
                        options: json!({"propagationPolicy": "Foreground", "preconditions": {"uid": o::uid(dep)}}),
                    });
                }
            }
            if blocking == 0 {
                let rest: Vec<&str> = fins
                    .iter()
                    .copied()
                    .filter(|f| *f != "foregroundDeletion")
                    .collect();
                out.actions
                    .extend(patch(key, obj, json!({"metadata": {"finalizers": rest}})));
            }
            return out;
        }
        let refs = o::owner_refs(obj);
        if refs.is_empty() || o::is_terminating(obj) {
            return out;
        }
        let live: Vec<&Value> = refs
            .iter()
            .filter(|r| owner(snap, obj, r).is_some())
            .collect();
        if live.is_empty() {
            if let Some(res) = resource_of_key(key) {
                out.push(Action::Delete {
                    res,
                    ns: o::namespace(obj).to_string(),
                    name: o::name(obj).to_string(),
                    options: json!({"propagationPolicy": "Background", "preconditions": {"uid": o::uid(obj)}}),
                });
            }
        } else if live.len() < refs.len() {
            out.actions.extend(patch(
                key,
                obj,
                json!({"metadata": {"ownerReferences": live}}),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, name: &str, owner: Option<&Value>) -> Value {
        let api = if kind == "Pod" { "v1" } else { "apps/v1" };
        let mut v = json!({"apiVersion": api, "kind": kind,
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}});
        if let Some(ow) = owner {
            v["metadata"]["ownerReferences"] = json!([o::owner_ref(ow)]);
        }
        v
    }

    fn key(g: &str, r: &str, name: &str) -> String {
        store::key(g, r, "default", name)
    }

    #[test]
    fn orphans_are_deleted_in_the_background() {
        let d = obj("Deployment", "web", None);
        let rs = obj("ReplicaSet", "web-1", Some(&d));
        let mut snap = Snapshot::default();
        snap.insert("apps", "replicasets", rs.clone());
        let out = GarbageCollector.reconcile(
            &key("apps", "replicasets", "web-1"),
            &snap,
            jiff::Timestamp::now(),
        );
        assert!(
            matches!(&out.actions[..], [Action::Delete { name, .. }] if name == "web-1"),
            "{:?}",
            out.actions
        );
        // With its owner present, nothing happens.
        snap.insert("apps", "deployments", d);
        let out = GarbageCollector.reconcile(
            &key("apps", "replicasets", "web-1"),
            &snap,
            jiff::Timestamp::now(),
        );
        assert!(out.actions.is_empty());
        // An owner with the same name but another uid is a different object.
        let mut d2 = obj("Deployment", "web", None);
        d2["metadata"]["uid"] = json!("other");
        snap.insert("apps", "deployments", d2);
        let out = GarbageCollector.reconcile(
            &key("apps", "replicasets", "web-1"),
            &snap,
            jiff::Timestamp::now(),
        );
        assert_eq!(out.actions.len(), 1);
    }

    #[test]
    fn foreground_waits_for_blocking_dependents() {
        let mut d = obj("Deployment", "web", None);
        d["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        d["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
        let rs = obj("ReplicaSet", "web-1", Some(&d));
        let mut snap = Snapshot::default();
        snap.insert("apps", "deployments", d.clone());
        snap.insert("apps", "replicasets", rs);
        let k = key("apps", "deployments", "web");
        let out = GarbageCollector.reconcile(&k, &snap, jiff::Timestamp::now());
        assert!(
            matches!(&out.actions[..], [Action::Delete { name, options, .. }] if name == "web-1" && options["propagationPolicy"] == "Foreground"),
            "{:?}",
            out.actions
        );
        snap.objects.remove(&key("apps", "replicasets", "web-1"));
        let out = GarbageCollector.reconcile(&k, &snap, jiff::Timestamp::now());
        assert!(
            matches!(&out.actions[..], [Action::Patch { patch, .. }] if patch["metadata"]["finalizers"] == json!([]) ),
            "{:?}",
            out.actions
        );
    }

    #[test]
    fn orphan_policy_releases_dependents() {
        let mut d = obj("Deployment", "web", None);
        d["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        d["metadata"]["finalizers"] = json!(["orphan"]);
        let rs = obj("ReplicaSet", "web-1", Some(&d));
        let mut snap = Snapshot::default();
        snap.insert("apps", "deployments", d);
        snap.insert("apps", "replicasets", rs);
        let out = GarbageCollector.reconcile(
            &key("apps", "deployments", "web"),
            &snap,
            jiff::Timestamp::now(),
        );
        assert_eq!(out.actions.len(), 2);
        assert!(
            matches!(&out.actions[0], Action::Patch { name, patch, .. } if name == "web-1" && patch["metadata"]["ownerReferences"] == json!([]))
        );
    }
}
