//! `meta.k8s.io/v1 Table` rendering for `kubectl get`: the columns
//! kube-apiserver prints, priority 1 for the `-o wide` extras. Each kind's
//! columns and cells sit together in one [`printers::Printer`].

mod format;
mod printers;

use jiff::Timestamp;
use serde_json::{Value, json};

/// Whether a request's Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

/// Kubernetes' `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        return if dy == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{dy}d", h / 24 / 365)
        };
    }
    format!("{}y", h / 24 / 365)
}

pub(super) fn age(ts: Option<&Value>, now: Timestamp) -> String {
    ts.and_then(Value::as_str)
        .and_then(|s| s.parse::<Timestamp>().ok())
        .map(|t| human_duration(now.as_second() - t.as_second()))
        .unwrap_or_else(|| "<unknown>".into())
}

pub(super) fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

pub(super) fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

/// One column definition (`TableColumnDefinition`).
pub(super) struct Col {
    name: &'static str,
    ty: &'static str,
    priority: u8,
    description: &'static str,
}

pub(super) const fn col(
    name: &'static str,
    ty: &'static str,
    priority: u8,
    description: &'static str,
) -> Col {
    Col {
        name,
        ty,
        priority,
        description,
    }
}

impl Col {
    fn to_json(&self) -> Value {
        let format = if self.name == "Name" { "name" } else { "" };
        json!({"name": self.name, "type": self.ty, "format": format,
               "description": self.description, "priority": self.priority})
    }
}

/// Row object for `includeObject`: full, metadata only (default), or none.
fn row_object(o: &Value, include: &str) -> Value {
    match include {
        "Object" => o.clone(),
        "None" => Value::Null,
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
        }
    }
}

/// A Table of `objects`.
pub fn render(
    kind: &str,
    objects: &[&Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include: &str,
    with_columns: bool,
) -> Value {
    let now = Timestamp::now();
    let printer = printers::of(kind);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": printer.cells(o, now), "object": row_object(o, include)}))
        .collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    let mut t =
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": rows});
    if with_columns {
        t["columnDefinitions"] = printer.columns().into_iter().map(Col::to_json).collect();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn every_kind_has_one_cell_per_column() {
        let o = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        for r in weft_api::RESOURCES {
            let printer = printers::of(r.kind);
            assert_eq!(
                printer.columns().len(),
                printer.cells(&o, Timestamp::now()).len(),
                "{}",
                r.kind
            );
        }
    }

    #[test]
    fn wide_columns_come_last_and_kinds_print_once() {
        let mut kinds = std::collections::BTreeSet::new();
        for p in printers::PRINTERS {
            assert!(kinds.insert(p.kind), "{} has two printers", p.kind);
            let cols = p.columns();
            assert_eq!(
                cols[0].name,
                if p.kind == "Event" {
                    "Last Seen"
                } else {
                    "Name"
                }
            );
            if p.template.is_some() {
                assert_eq!(cols[cols.len() - 3].name, "Containers", "{}", p.kind);
            }
        }
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        let t = render("Deployment", &[&d], "1", None, "None", true);
        let cells = t["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(
            cells[cells.len() - 3..],
            [json!("c"), json!("i:1"), json!("app=web")]
        );
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
    }

    #[test]
    fn pod_row() {
        let p = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "127.1.0.5",
                       "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = render("Pod", &[&p], "7", None, "Metadata", true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "127.1.0.5");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn node_row_shows_its_address_and_pod_cidrs() {
        let n = json!({"metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}});
        let t = render("Node", &[&n], "1", None, "None", true);
        let cells = t["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(cells[5], "10.0.0.2");
        assert_eq!(cells[cells.len() - 1], "10.244.1.0/24,fd00::/64");
        let bare = json!({"metadata": {"name": "n2"}});
        let t = render("Node", &[&bare], "1", None, "None", true);
        assert_eq!(t["rows"][0]["cells"][10], "<none>");
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
