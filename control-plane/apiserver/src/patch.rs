//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes strategic merge patch for the built-in kinds.

use serde_json::{Map, Value};
use weft_api::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    /// Server-side apply; served as a strategic merge of the applied config.
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

fn bad_patch(msg: impl std::fmt::Display) -> Status {
    Status::new(
        422,
        "Invalid",
        format!(
            "the server rejected our request due to an error in our request: invalid patch: {msg}"
        ),
    )
}

/// Applies `patch` (already parsed) to `original`.
pub fn apply(kind: PatchType, original: &Value, patch: &Value) -> Result<Value, Status> {
    let mut doc = original.clone();
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(bad_patch("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(bad_patch)?;
            json_patch::patch(&mut doc, &ops).map_err(bad_patch)?;
        }
        PatchType::Strategic | PatchType::Apply => {
            let p = patch
                .as_object()
                .ok_or_else(|| bad_patch("a strategic merge patch must be a JSON object"))?;
            let Value::Object(map) = &mut doc else {
                return Err(bad_patch("the target is not an object"));
            };
            merge_map(map, p)?;
        }
    }
    Ok(doc)
}

/// The patch merge key of a list field, as k8s.io/api's struct tags declare it.
/// `None` means the list is replaced wholesale.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "containerStatuses"
        | "initContainerStatuses" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "conditions" | "addresses" => "type",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        // Container ports merge by containerPort, Service ports by port.
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Lists of scalars that merge as sets (patchStrategy "merge" without a key).
fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), Status> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = replaced;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some(other) => return Err(bad_patch(format!("unknown $patch directive {other:?}"))),
        None => {}
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| bad_patch("$retainKeys must be a list"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, pv) in patch {
        if key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = pv
                .as_array()
                .ok_or_else(|| bad_patch(format!("{key} must be a list")))?;
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with("$setElementOrder/") {
            continue; // applied after the list itself is merged
        }
        if pv.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), pv) {
            (Some(Value::Object(t)), Value::Object(p)) => merge_map(t, p)?,
            (Some(Value::Array(t)), Value::Array(p)) => merge_list(key, t, p)?,
            (_, Value::Object(p)) => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, p)?;
                if p.get("$patch").and_then(Value::as_str) != Some("delete") {
                    target.insert(key.clone(), Value::Object(fresh));
                }
            }
            (_, Value::Array(p)) => {
                let mut fresh = Vec::new();
                merge_list(key, &mut fresh, p)?;
                target.insert(key.clone(), Value::Array(fresh));
            }
            (_, v) => {
                target.insert(key.clone(), v.clone());
            }
        }
    }
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let order = order
                .as_array()
                .ok_or_else(|| bad_patch(format!("{key} must be a list")))?;
            if let Some(Value::Array(list)) = target.get_mut(field) {
                reorder(field, list, order);
            }
        }
    }
    Ok(())
}

fn merge_list(field: &str, target: &mut Vec<Value>, patch: &[Value]) -> Result<(), Status> {
    // A `{"$patch": "replace"}` element replaces the whole list with the rest.
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    if is_set_list(field) {
        for v in patch {
            if !target.contains(v) {
                target.push(v.clone());
            }
        }
        return Ok(());
    }
    let Some(mk) = merge_key(field, patch.first().or(target.first())) else {
        *target = patch.to_vec();
        return Ok(());
    };
    for pe in patch {
        let Some(pobj) = pe.as_object() else {
            return Err(bad_patch(format!(
                "{field}: elements must be objects with merge key {mk:?}"
            )));
        };
        let Some(kv) = pobj.get(mk) else {
            return Err(bad_patch(format!(
                "{field}: element is missing merge key {mk:?}"
            )));
        };
        let pos = target.iter().position(|t| t.get(mk) == Some(kv));
        let delete = pobj.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                target.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Value::Object(t) = &mut target[i] {
                    merge_map(t, pobj)?;
                }
            }
            (None, false) => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, pobj)?;
                target.push(Value::Object(fresh));
            }
        }
    }
    Ok(())
}

/// `$setElementOrder`: listed elements first, in the given order; others keep theirs after.
fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let mk = merge_key(field, list.first());
    let key_of = |v: &Value| -> Value {
        match mk {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(key_of).collect();
    let mut rest = std::mem::take(list);
    for w in &wanted {
        if let Some(i) = rest.iter().position(|e| key_of(e) == *w) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"metadata": {"name": "d", "labels": {"app": "x"}, "finalizers": ["a"]},
               "spec": {"replicas": 1, "template": {"spec": {"containers": [
                   {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 80}]},
                   {"name": "side", "image": "busybox"}]}}}})
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let p = json!({"spec": {"replicas": 3, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "nginx:2"}]}}}});
        let out = apply(PatchType::Strategic, &deploy(), &p).unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        let cs = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["env"][0]["name"], "A", "untouched fields survive");
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn strategic_delete_directives_and_null() {
        let p = json!({"metadata": {"labels": {"app": null}, "finalizers": ["b"]},
            "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = apply(PatchType::Strategic, &deploy(), &p).unwrap();
        assert!(out["metadata"]["labels"].get("app").is_none());
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = apply(PatchType::Strategic, &deploy(), &p).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
    }

    #[test]
    fn strategic_replaces_lists_without_merge_key() {
        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let p = json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}});
        let out = apply(PatchType::Strategic, &node, &p).unwrap();
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoSchedule"}])
        );
    }

    #[test]
    fn strategic_rejects_elements_without_merge_key() {
        let p = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        assert_eq!(
            apply(PatchType::Strategic, &deploy(), &p).unwrap_err().code,
            422
        );
    }

    #[test]
    fn merge_and_json_patch() {
        let out = apply(
            PatchType::Merge,
            &deploy(),
            &json!({"spec": {"replicas": 5}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        let out = apply(
            PatchType::Json,
            &deploy(),
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 7}]),
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 7);
        let err = apply(
            PatchType::Json,
            &deploy(),
            &json!([{"op": "replace", "path": "/nope/x", "value": 1}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(apply(PatchType::Merge, &deploy(), &json!([1])).is_err());
    }
}
