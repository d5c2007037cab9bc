//! Small accessors over JSON objects that every controller (and the
//! scheduler) needs: names, owners, label selectors, pod readiness.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

pub fn name(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn namespace(o: &Value) -> &str {
    o.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn uid(o: &Value) -> &str {
    o.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `namespace/name` (or `name` for cluster-scoped objects): a controller's key.
pub fn key_of(o: &Value) -> String {
    key(namespace(o), name(o))
}

pub fn key(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

pub fn labels(o: &Value) -> Option<&Map<String, Value>> {
    o.pointer("/metadata/labels").and_then(Value::as_object)
}

pub fn annotation<'a>(o: &'a Value, k: &str) -> Option<&'a str> {
    o.pointer("/metadata/annotations")
        .and_then(|a| a.get(k))
        .and_then(Value::as_str)
}

pub fn is_terminating(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

pub fn generation(o: &Value) -> i64 {
    o.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

pub fn owner_refs(o: &Value) -> &[Value] {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(o: &Value) -> Option<&Value> {
    owner_refs(o)
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// Whether `o` is controlled by the object with uid `owner`.
pub fn controlled_by(o: &Value, owner: &str) -> bool {
    controller_of(o)
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        == Some(owner)
}

/// A controller owner reference to `owner`.
pub fn owner_ref(owner: &Value) -> Value {
    json!({"apiVersion": owner.get("apiVersion").cloned().unwrap_or(json!("v1")),
           "kind": owner.get("kind").cloned().unwrap_or(json!("")),
           "name": name(owner), "uid": uid(owner),
           "controller": true, "blockOwnerDeletion": true})
}

/// Whether `labels` satisfy a metav1.LabelSelector (matchLabels and
/// matchExpressions). An empty selector matches everything; a missing one
/// (None) nothing, as for ReplicaSets.
pub fn selector_matches(selector: Option<&Value>, labels: Option<&Map<String, Value>>) -> bool {
    let Some(sel) = selector.filter(|s| s.is_object()) else {
        return false;
    };
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object)
        && ml.iter().any(|(k, v)| get(k) != v.as_str())
    {
        return false;
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let k = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ok = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => get(k).is_some_and(|v| values.contains(&v)),
            "NotIn" => get(k).is_none_or(|v| !values.contains(&v)),
            "Exists" => get(k).is_some(),
            "DoesNotExist" => get(k).is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether a pod toleration tolerates a node taint (key, operator, value, effect).
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    fn field<'a>(v: &'a Value, f: &str) -> &'a str {
        v.get(f).and_then(Value::as_str).unwrap_or("")
    }
    let effect = field(toleration, "effect");
    if !effect.is_empty() && effect != field(taint, "effect") {
        return false;
    }
    let key = field(toleration, "key");
    let exists = field(toleration, "operator") == "Exists";
    if key.is_empty() {
        // An empty key with Exists tolerates everything.
        return exists;
    }
    key == field(taint, "key") && (exists || field(toleration, "value") == field(taint, "value"))
}

pub fn tolerations(pod: &Value) -> &[Value] {
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub fn taints(node: &Value) -> &[Value] {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub use super::time::ts;

/// How long until `at` (at least a second: requeues are not busy loops).
pub fn until(at: Timestamp, now: Timestamp) -> std::time::Duration {
    std::time::Duration::try_from(now.duration_until(at))
        .unwrap_or_default()
        .max(std::time::Duration::from_secs(1))
}

pub fn parse_ts(v: Option<&Value>) -> Option<Timestamp> {
    v.and_then(Value::as_str).and_then(|s| s.parse().ok())
}

pub fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Counts toward a controller's replicas: not terminating, not finished.
pub fn is_active(pod: &Value) -> bool {
    !is_terminating(pod) && !matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn condition<'a>(o: &'a Value, ty: &str) -> Option<&'a Value> {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

pub fn condition_status<'a>(o: &'a Value, ty: &str) -> Option<&'a str> {
    condition(o, ty)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
}

pub fn condition_field<'a>(o: &'a Value, ty: &str, field: &str) -> Option<&'a Value> {
    condition(o, ty).and_then(|c| c.get(field))
}

/// Whether `obj`'s stored status differs from the computed `next` status in
/// any of these integer fields (absent reads as 0): a controller writes
/// status only when it changed.
pub fn status_counts_differ(obj: &Value, next: &Value, fields: &[&str]) -> bool {
    let int = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
    let current = obj.get("status");
    fields
        .iter()
        .any(|f| int(current.and_then(|s| s.get(*f))) != int(next.get(*f)))
}

pub fn is_ready(pod: &Value) -> bool {
    condition_status(pod, "Ready") == Some("True")
}

/// Ready for at least `min_ready` seconds (available, in Deployment terms).
pub fn is_available(pod: &Value, min_ready: i64, now: Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    parse_ts(condition_field(pod, "Ready", "lastTransitionTime"))
        .is_some_and(|t| t + SignedDuration::from_secs(min_ready) <= now)
}

/// A pod from a template, owned by `owner`, named `{prefix}` + a random suffix.
pub fn pod_from_template(template: &Value, owner: &Value, prefix: &str) -> Value {
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    meta["generateName"] = json!(prefix);
    meta["namespace"] = json!(namespace(owner));
    meta["ownerReferences"] = json!([owner_ref(owner)]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
        m.remove("creationTimestamp");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
           "spec": template.get("spec").cloned().unwrap_or(json!({}))})
}

/// A core/v1 Event, named as kube's recorder names them.
pub fn event(regarding: &Arc<Value>, warning: bool, reason: &str, message: &str) -> Value {
    let now = jiff::Timestamp::now();
    let ns = match namespace(regarding) {
        "" => "default",
        n => n,
    };
    let suffix = format!("{:x}", uuid::Uuid::new_v4().as_u128() as u64);
    let component = match reason {
        "Scheduled" | "FailedScheduling" => "default-scheduler",
        _ => "weft-controller-manager",
    };
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{suffix}", name(regarding)), "namespace": ns},
        "involvedObject": {"apiVersion": regarding.get("apiVersion").cloned().unwrap_or(json!("v1")),
            "kind": regarding.get("kind").cloned().unwrap_or(json!("")),
            "name": name(regarding), "namespace": namespace(regarding), "uid": uid(regarding),
            "resourceVersion": regarding.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))},
        "reason": reason, "message": message, "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": component}, "reportingComponent": component, "reportingInstance": "",
        "firstTimestamp": ts(now), "lastTimestamp": ts(now), "count": 1})
}

/// A stable short hash of a pod template (the `pod-template-hash` label):
/// FNV-1a over the template with keys sorted, in Kubernetes' safe alphabet.
pub fn template_hash(template: &Value) -> String {
    fn canonical(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for k in keys {
                    out.push_str(k);
                    out.push(':');
                    canonical(&m[k], out);
                    out.push(',');
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for x in a {
                    canonical(x, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(template, &mut text);
    let mut h: u32 = 0x811c9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHABET[(d - b'0') as usize % ALPHABET.len()] as char)
        .collect()
}

/// The template without the labels controllers add, for comparing revisions.
pub fn template_without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove("pod-template-hash");
        if l.is_empty()
            && let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("labels");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let labels = json!({"app": "web", "tier": "front"});
        let l = labels.as_object();
        assert!(selector_matches(
            Some(&json!({"matchLabels": {"app": "web"}})),
            l
        ));
        assert!(!selector_matches(
            Some(&json!({"matchLabels": {"app": "db"}})),
            l
        ));
        assert!(selector_matches(Some(&json!({})), l), "empty matches all");
        assert!(!selector_matches(None, l), "absent matches none");
        let expr = |op: &str, vals: &[&str]| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": vals}]});
        assert!(selector_matches(Some(&expr("In", &["front", "x"])), l));
        assert!(!selector_matches(Some(&expr("NotIn", &["front"])), l));
        assert!(selector_matches(Some(&expr("Exists", &[])), l));
        assert!(!selector_matches(Some(&expr("DoesNotExist", &[])), l));
    }

    #[test]
    fn template_hash_ignores_key_order() {
        let a = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        let b = json!({"spec": {"x": 1}, "metadata": {"labels": {"b": "2", "a": "1"}}});
        assert_eq!(template_hash(&a), template_hash(&b));
        let c = json!({"spec": {"x": 2}, "metadata": {"labels": {"b": "2", "a": "1"}}});
        assert_ne!(template_hash(&a), template_hash(&c));
    }
}
