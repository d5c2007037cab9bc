//! The formatting kubectl's columns use: selectors, ports, addresses and
//! statuses the way kube-apiserver's printers write them.

use serde_json::Value;

use super::{n, or_none, s};

pub(super) fn containers_images(template_spec: &Value) -> (String, String) {
    let cs: Vec<&Value> = template_spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    (
        cs.iter()
            .map(|c| s(c, "/name"))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(c, "/image"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub(super) fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match s(e, "/operator") {
            "Exists" => s(e, "/key").to_string(),
            "DoesNotExist" => format!("!{}", s(e, "/key")),
            op => format!(
                "{} {} ({})",
                s(e, "/key"),
                op.to_lowercase(),
                vals.join(",")
            ),
        });
    }
    or_none(parts.join(","))
}

pub(super) fn map_selector(sel: Option<&Value>) -> String {
    or_none(
        sel.and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub(super) fn pod_status_reason(p: &Value) -> String {
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = s(p, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(p, "/status/phase").to_string();
    }
    for cs in p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(r) = cs
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = r.to_string();
        }
    }
    or_none(reason).replace("<none>", "Pending")
}

pub(super) fn service_ports(svc: &Value) -> String {
    or_none(
        svc.pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let node_port = p
                    .get("nodePort")
                    .and_then(Value::as_i64)
                    .map(|np| format!(":{np}"))
                    .unwrap_or_default();
                format!("{}{node_port}/{}", n(p, "/port"), s(p, "/protocol"))
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub(super) fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| match s(c, "/status") {
            "True" => "Ready",
            _ => "NotReady",
        })
        .unwrap_or("Unknown");
    let mut out = ready.to_string();
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        out.push_str(",SchedulingDisabled");
    }
    out
}

pub(super) fn node_roles(node: &Value) -> String {
    let roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    or_none(roles.join(","))
}

/// `spec.podCIDRs` (or the older `spec.podCIDR`), comma separated.
pub(super) fn pod_cidrs(node: &Value) -> String {
    match node.pointer("/spec/podCIDRs").and_then(Value::as_array) {
        Some(all) => all
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        None => s(node, "/spec/podCIDR").to_string(),
    }
}

pub(super) fn node_address(node: &Value, ty: &str) -> String {
    or_none(
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| s(a, "/type") == ty)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_default(),
    )
}

pub(super) fn endpoints_summary(ep: &Value) -> String {
    let mut out = Vec::new();
    for subset in ep
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| n(p, "/port"))
            .collect();
        for a in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if ports.is_empty() {
                out.push(s(a, "/ip").to_string());
            }
            for p in &ports {
                out.push(format!("{}:{p}", s(a, "/ip")));
            }
        }
    }
    let more = out.len().saturating_sub(3);
    let mut shown = out.into_iter().take(3).collect::<Vec<_>>().join(",");
    if more > 0 {
        shown.push_str(&format!(" + {more} more..."));
    }
    or_none(shown)
}

pub(super) fn event_object(e: &Value) -> String {
    format!(
        "{}/{}",
        s(e, "/involvedObject/kind").to_lowercase(),
        s(e, "/involvedObject/name")
    )
}
