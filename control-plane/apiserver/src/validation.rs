//! Decoding checks (the object must fit its k8s-openapi type; unknown fields
//! are found by round-tripping) and semantic validation that yields 422s
//! naming the offending field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use weft_api::k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, node};
use weft_api::{Cause, Resource, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<FieldValidation, Status> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(Status::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: Value) -> Result<Value, String> {
    let typed: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decodes `object` into its k8s-openapi type and back: the result has the
/// canonical shape, with unknown fields gone.
fn typed_roundtrip(kind: &str, v: Value) -> Result<Value, String> {
    match kind {
        "Namespace" => roundtrip::<core::v1::Namespace>(v),
        "Pod" => roundtrip::<core::v1::Pod>(v),
        "Node" => roundtrip::<core::v1::Node>(v),
        "Service" => roundtrip::<core::v1::Service>(v),
        "Endpoints" => roundtrip::<core::v1::Endpoints>(v),
        "ConfigMap" => roundtrip::<core::v1::ConfigMap>(v),
        "Secret" => roundtrip::<core::v1::Secret>(v),
        "Event" => roundtrip::<core::v1::Event>(v),
        "ServiceAccount" => roundtrip::<core::v1::ServiceAccount>(v),
        "Deployment" => roundtrip::<apps::v1::Deployment>(v),
        "ReplicaSet" => roundtrip::<apps::v1::ReplicaSet>(v),
        "DaemonSet" => roundtrip::<apps::v1::DaemonSet>(v),
        "Job" => roundtrip::<batch::v1::Job>(v),
        "CronJob" => roundtrip::<batch::v1::CronJob>(v),
        "Lease" => roundtrip::<coordination::v1::Lease>(v),
        "EndpointSlice" => roundtrip::<discovery::v1::EndpointSlice>(v),
        "RuntimeClass" => roundtrip::<node::v1::RuntimeClass>(v),
        "Scale" => roundtrip::<autoscaling::v1::Scale>(v),
        _ => Ok(v),
    }
}

/// Kubernetes accepts bare numbers for quantities (`cpu: 1`); the typed
/// Quantity is a string, so numbers under quantity maps become strings first.
fn normalize_quantities(v: &mut Value, parent_key: &str) {
    let quantity_map = matches!(
        parent_key,
        "limits" | "requests" | "capacity" | "allocatable" | "hard" | "used" | "overhead"
    );
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if (quantity_map || k == "sizeLimit") && child.is_number() {
                    *child = Value::String(child.to_string());
                } else {
                    normalize_quantities(child, k);
                }
            }
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|c| normalize_quantities(c, parent_key)),
        _ => {}
    }
}

/// Paths present in `input` but absent after the typed round trip.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, iv) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => unknown_fields(iv, tv, &p, out),
                    None if iv.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(t)) if i.len() == t.len() => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                unknown_fields(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a body into its kind. Returns the canonical object and any
/// warnings (unknown fields under `Warn`).
pub fn decode(
    kind: &str,
    mut object: Value,
    fv: FieldValidation,
) -> Result<(Value, Vec<String>), Status> {
    normalize_quantities(&mut object, "");
    let typed = typed_roundtrip(kind, object.clone()).map_err(|e| {
        Status::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
        ))
    })?;
    let mut unknown = Vec::new();
    if fv != FieldValidation::Ignore {
        unknown_fields(&object, &typed, "", &mut unknown);
    }
    if fv == FieldValidation::Strict && !unknown.is_empty() {
        let list = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Status::bad_request(format!(
            "strict decoding error: {list}"
        )));
    }
    Ok((
        typed,
        unknown
            .into_iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect(),
    ))
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Checks a name the way its kind requires; `None` when valid.
pub fn name_problem(resource: &Resource, name: &str) -> Option<String> {
    let label_only = matches!(resource.kind, "Namespace" | "Service");
    if label_only {
        (!is_dns1123_label(name)).then(|| {
            if name.len() > 63 {
                "must be no more than 63 characters".to_string()
            } else {
                DNS1123_LABEL_MSG.to_string()
            }
        })
    } else {
        (!is_dns1123_subdomain(name)).then(|| {
            if name.len() > 253 {
                "must be no more than 253 characters".to_string()
            } else {
                DNS1123_SUBDOMAIN_MSG.to_string()
            }
        })
    }
}

fn qualified_name_ok(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn label_value_ok(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

fn validate_meta(meta: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !qualified_name_ok(k) {
                causes.push(Cause::invalid_value(format!("{path}.labels"), k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            let v = v.as_str().unwrap_or_default();
            if !label_value_ok(v) {
                causes.push(Cause::invalid_value(format!("{path}.labels"), v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !qualified_name_ok(k) {
                causes.push(Cause::invalid_value(format!("{path}.annotations"), k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
        if total > 256 * 1024 {
            causes.push(Cause::new(
                "FieldValueTooLong",
                format!("{path}.annotations"),
                "Too long: must have at most 262144 bytes",
            ));
        }
    }
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut seen = Vec::new();
    for (field, list) in [
        ("initContainers", spec.get("initContainers")),
        ("containers", spec.get("containers")),
    ] {
        for (i, c) in list
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cp = format!("{path}.{field}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required(format!("{cp}.name")));
            } else if !is_dns1123_label(name) {
                causes.push(Cause::invalid_value(
                    format!("{cp}.name"),
                    name,
                    DNS1123_LABEL_MSG,
                ));
            } else if seen.contains(&name) {
                causes.push(Cause::new(
                    "FieldValueDuplicate",
                    format!("{cp}.name"),
                    format!("Duplicate value: {name:?}"),
                ));
            }
            seen.push(name);
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                causes.push(Cause::required(format!("{cp}.image")));
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid_value(
                        format!("{cp}.ports[{j}].containerPort"),
                        &port.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(rp, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            format!("{path}.restartPolicy"),
            format!(
                "Unsupported value: {rp:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        ));
    }
}

/// Workloads: a selector that matches the template's labels, then the pod template.
fn validate_workload(spec: &Value, path: &str, causes: &mut Vec<Cause>, selector_required: bool) {
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::invalid_value(
            format!("{path}.replicas"),
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    match spec.get("selector") {
        None if selector_required => causes.push(Cause::required(format!("{path}.selector"))),
        None => {}
        Some(sel) => {
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && sel
                    .get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(|m| m.is_empty());
            if empty {
                causes.push(Cause::invalid_value(
                    format!("{path}.selector"),
                    "{}",
                    "empty selector is invalid for deployment",
                ));
            } else if let Some(s) = super::selectors::LabelSelector::from_object(sel) {
                let template = spec.get("template").cloned().unwrap_or(Value::Null);
                if !s.matches(&template) {
                    causes.push(Cause::invalid_value(
                        format!("{path}.template.metadata.labels"),
                        &template
                            .pointer("/metadata/labels")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
    match spec.get("template") {
        Some(t) => {
            if let Some(m) = t.get("metadata") {
                validate_meta(m, &format!("{path}.template.metadata"), causes);
            }
            validate_pod_spec(
                t.get("spec").unwrap_or(&Value::Null),
                &format!("{path}.template.spec"),
                causes,
            );
        }
        None => causes.push(Cause::required(format!("{path}.template"))),
    }
}

fn validate_service(spec: &Value, causes: &mut Vec<Cause>) {
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::new("FieldValueNotSupported", "spec.type", format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && !headless && ty != "ExternalName" {
        causes.push(Cause::required("spec.ports"));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid_value(
                format!("spec.ports[{i}].port"),
                &port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && names.contains(&name) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                format!("spec.ports[{i}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        names.push(name);
    }
}

fn validate_data_keys(obj: &Value, field: &str, causes: &mut Vec<Cause>) {
    for k in obj
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
    {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            causes.push(Cause::invalid_value(field, k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
        }
    }
}

/// Semantic validation of a decoded, defaulted object. 422 with every cause.
pub fn validate(resource: &Resource, obj: &Value) -> Result<(), Status> {
    let mut causes = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    } else if let Some(why) = name_problem(resource, name) {
        causes.push(Cause::invalid_value("metadata.name", name, &why));
    }
    validate_meta(
        obj.get("metadata").unwrap_or(&Value::Null),
        "metadata",
        &mut causes,
    );
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match resource.kind {
        "Pod" => validate_pod_spec(spec, "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            validate_workload(spec, "spec", &mut causes, true)
        }
        "Job" => {
            validate_workload(spec, "spec", &mut causes, false);
            let rp = spec
                .pointer("/template/spec/restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Always");
            if !matches!(rp, "OnFailure" | "Never") {
                causes.push(Cause::new(
                    "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    format!(
                        "Unsupported value: {rp:?}: supported values: \"OnFailure\", \"Never\""
                    ),
                ));
            }
        }
        "CronJob" => {
            if spec
                .get("schedule")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                causes.push(Cause::required("spec.schedule"));
            }
            match spec.pointer("/jobTemplate/spec") {
                Some(js) => validate_workload(js, "spec.jobTemplate.spec", &mut causes, false),
                None => causes.push(Cause::required("spec.jobTemplate")),
            }
        }
        "Service" => validate_service(spec, &mut causes),
        "ConfigMap" | "Secret" => {
            validate_data_keys(obj, "data", &mut causes);
            validate_data_keys(obj, "binaryData", &mut causes);
            let size = serde_json::to_vec(obj.get("data").unwrap_or(&Value::Null))
                .map_or(0, |v| v.len())
                + serde_json::to_vec(obj.get("binaryData").unwrap_or(&Value::Null))
                    .map_or(0, |v| v.len());
            if size > 1024 * 1024 {
                causes.push(Cause::new(
                    "FieldValueTooLong",
                    "data",
                    "Too long: must have at most 1048576 bytes",
                ));
            }
        }
        "Event"
            if obj.pointer("/involvedObject/name").is_none()
                && obj.pointer("/regarding/name").is_none() =>
        {
            causes.push(Cause::required("involvedObject"));
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid(resource.kind, name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_api::resources::by_kind;

    #[test]
    fn decode_finds_unknown_fields() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "alsoBogus": true}});
        let err = decode("Pod", pod.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("spec.containers[0].bogus"),
            "{}",
            err.message
        );
        assert!(err.message.contains("spec.alsoBogus"));
        let (clean, warnings) = decode("Pod", pod, FieldValidation::Warn).unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(clean["spec"].get("alsoBogus").is_none());
    }

    #[test]
    fn decode_reports_type_errors_with_path() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let err = decode("Deployment", d, FieldValidation::Strict).unwrap_err();
        assert!(err.message.contains("spec.replicas"), "{}", err.message);
    }

    #[test]
    fn numeric_quantities_are_accepted() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1}}}]}});
        let (clean, _) = decode("Pod", pod, FieldValidation::Strict).unwrap();
        assert_eq!(
            clean["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
        let ns = by_kind("v1", "Namespace").unwrap();
        assert!(name_problem(ns, "a.b").is_some());
        let cm = by_kind("v1", "ConfigMap").unwrap();
        assert!(name_problem(cm, "a.b").is_none());
    }

    #[test]
    fn semantic_causes_name_fields() {
        let d = by_kind("apps/v1", "Deployment").unwrap();
        let obj = json!({"metadata": {"name": "d", "labels": {"bad key!": "v"}},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c"}]}}}});
        let err = validate(d, &obj).unwrap_err();
        assert_eq!(err.code, 422);
        let fields: Vec<_> = err
            .details
            .unwrap()
            .causes
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert!(fields.contains(&"metadata.labels".to_string()));
        assert!(fields.contains(&"spec.template.metadata.labels".to_string()));
        assert!(fields.contains(&"spec.template.spec.containers[0].image".to_string()));
    }
}
