//! Node-level filters: cordon, node name, node selector and affinity, and
//! Weft's runtime fit.

use serde_json::Value;

use super::super::framework::{
    Cluster, CycleState, NodeInfo, Plugin, PodInfo, Reasons, normalize_max,
};
use weft_cluster::objects as o;

/// The label a node carries for each runtime handler its agent runs
/// (`runtime.weft.dev/wasmtime`, `runtime.weft.dev/containerd`).
pub const RUNTIME_LABEL_PREFIX: &str = "runtime.weft.dev/";
/// Pods without a runtimeClassName are containers.
pub const CONTAINER_HANDLER: &str = "containerd";

fn selector_reason() -> Reasons {
    vec!["node(s) didn't match Pod's node affinity/selector".into()]
}

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        _: &CycleState,
    ) -> Result<(), Reasons> {
        let cordoned = node
            .obj
            .pointer("/spec/unschedulable")
            .and_then(Value::as_bool)
            == Some(true);
        let taint =
            serde_json::json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        if cordoned
            && !o::tolerations(&pod.obj)
                .iter()
                .any(|t| o::tolerates(t, &taint))
        {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
        Ok(())
    }
}

pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        _: &CycleState,
    ) -> Result<(), Reasons> {
        match pod.spec("nodeName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != node.name => {
                Err(vec!["node(s) didn't match the requested node name".into()])
            }
            _ => Ok(()),
        }
    }
}

pub struct NodeSelector;

impl Plugin for NodeSelector {
    fn name(&self) -> &'static str {
        "NodeSelector"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        _: &CycleState,
    ) -> Result<(), Reasons> {
        if pod
            .node_selector
            .iter()
            .all(|(k, v)| node.label(k) == Some(v.as_str()))
        {
            Ok(())
        } else {
            Err(selector_reason())
        }
    }
}

/// One NodeSelectorRequirement against a value (a label, or the node name).
fn requirement(req: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = req
        .get("values")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    match req.get("operator").and_then(Value::as_str).unwrap_or("") {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(num), values.first().and_then(|v| num(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(num), values.first().and_then(|v| num(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// A NodeSelectorTerm: every expression and field requirement holds. An empty term matches nothing.
pub fn term_matches(term: &Value, node: &NodeInfo) -> bool {
    let list = |f: &str| {
        term.get(f)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    let (exprs, fields) = (list("matchExpressions"), list("matchFields"));
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| {
        requirement(
            r,
            node.label(r.get("key").and_then(Value::as_str).unwrap_or("")),
        )
    }) && fields.iter().all(|r| {
        let v = (r.get("key").and_then(Value::as_str) == Some("metadata.name"))
            .then_some(node.name.as_str());
        requirement(r, v)
    })
}

pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        _: &CycleState,
    ) -> Result<(), Reasons> {
        let Some(terms) = &pod.node_terms else {
            return Ok(());
        };
        if terms.iter().any(|t| term_matches(t, node)) {
            Ok(())
        } else {
            Err(selector_reason())
        }
    }

    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Cluster, _: &CycleState) -> i64 {
        pod.node_preferences
            .iter()
            .filter(|(_, t)| term_matches(t, node))
            .map(|(w, _)| w)
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize_max(scores, false);
    }
}

/// A handler's bit in `cluster` (0: no node runs it).
fn handler_bit(cluster: &Cluster, handler: &str) -> u64 {
    match cluster.handlers.iter().position(|h| h == handler) {
        Some(i) if i < 64 => 1 << i,
        _ => 0,
    }
}

/// What RuntimeFit resolved for the pod in pre-filter.
#[derive(Debug, Default)]
pub struct RuntimeState {
    /// The node label that says the handler runs there, and its bit.
    label: String,
    bit: u64,
    selector: Vec<(String, String)>,
    /// Why no node can fit (an unknown class), or the per-node reason.
    unknown: Option<String>,
    reason: String,
}

/// A pod with `runtimeClassName` goes only to nodes whose agent runs that
/// class's handler (and that match the class's `scheduling.nodeSelector`);
/// a pod without one is a container and needs a containerd node.
pub struct RuntimeFit;

impl Plugin for RuntimeFit {
    fn name(&self) -> &'static str {
        "RuntimeFit"
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Cluster, state: &mut CycleState) {
        let s = &mut state.runtime;
        match pod.runtime_class.as_deref() {
            None => {
                s.label = format!("{RUNTIME_LABEL_PREFIX}{CONTAINER_HANDLER}");
                s.bit = handler_bit(cluster, CONTAINER_HANDLER);
                s.reason = "node(s) didn't run containers".into();
            }
            Some(c) => match cluster.runtime_classes.get(c) {
                Some(rc) => {
                    let handler = rc.get("handler").and_then(Value::as_str).unwrap_or("");
                    s.label = format!("{RUNTIME_LABEL_PREFIX}{handler}");
                    s.bit = handler_bit(cluster, handler);
                    s.selector = rc
                        .pointer("/scheduling/nodeSelector")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default();
                    s.reason = format!("node(s) didn't support runtime class {c:?}");
                }
                None => s.unknown = Some(format!("node(s) didn't have runtime class {c:?}")),
            },
        }
    }

    fn filter(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        state: &CycleState,
    ) -> Result<(), Reasons> {
        let s = &state.runtime;
        if let Some(why) = &s.unknown {
            return Err(vec![why.clone()]);
        }
        let runs = match node.runtime_bits {
            Some(bits) => bits & s.bit != 0,
            None => node.label(&s.label) == Some("true"),
        };
        if runs
            && s.selector
                .iter()
                .all(|(k, v)| node.label(k) == Some(v.as_str()))
        {
            Ok(())
        } else {
            Err(vec![s.reason.clone()])
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::testing::*;
    use super::*;

    #[test]
    fn node_selector_and_affinity() {
        let cl = Cluster::default();
        let st = CycleState::default();
        let ssd = info(node("a", json!({"disk": "ssd", "cores": "8"})));
        let hdd = info(node("b", json!({"disk": "hdd"})));
        let p = pod("p", json!({"nodeSelector": {"disk": "ssd"}}));
        assert!(NodeSelector.filter(&p, &ssd, &cl, &st).is_ok());
        assert_eq!(
            NodeSelector.filter(&p, &hdd, &cl, &st).unwrap_err()[0],
            "node(s) didn't match Pod's node affinity/selector"
        );
        let aff = pod(
            "p",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}]}}}}),
        );
        assert!(NodeAffinity.filter(&aff, &ssd, &cl, &st).is_ok());
        assert!(NodeAffinity.filter(&aff, &hdd, &cl, &st).is_err());
        assert!(
            NodeAffinity
                .filter(&aff, &info(node("c", json!({}))), &cl, &st)
                .is_ok(),
            "matchFields on the name"
        );
        let pref = pod(
            "p",
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}),
        );
        assert_eq!(NodeAffinity.score(&pref, &ssd, &cl, &st), 10);
        assert_eq!(NodeAffinity.score(&pref, &hdd, &cl, &st), 0);
    }

    #[test]
    fn cordoned_nodes_and_node_names() {
        let cl = Cluster::default();
        let st = CycleState::default();
        let mut n = node("a", json!({}));
        n["spec"] = json!({"unschedulable": true});
        let n = info(n);
        assert_eq!(
            NodeUnschedulable
                .filter(&pod("p", json!({})), &n, &cl, &st)
                .unwrap_err()[0],
            "node(s) were unschedulable"
        );
        let tolerant = pod(
            "p",
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}),
        );
        assert!(NodeUnschedulable.filter(&tolerant, &n, &cl, &st).is_ok());
        assert!(
            NodeName
                .filter(&pod("p", json!({"nodeName": "b"})), &n, &cl, &st)
                .is_err()
        );
    }

    #[test]
    fn runtime_fit_separates_wasm_and_container_nodes() {
        let mut cl = Cluster::default();
        cl.runtime_classes.insert(
            "wasm".into(),
            Arc::new(json!({"metadata": {"name": "wasm"}, "handler": "wasmtime"})),
        );
        let wasm_node = info(node("w", json!({"runtime.weft.dev/wasmtime": "true"})));
        let both = info(node(
            "b",
            json!({"runtime.weft.dev/wasmtime": "true", "runtime.weft.dev/containerd": "true"}),
        ));
        let fit = |p: &PodInfo, n: &NodeInfo| {
            let mut st = CycleState::default();
            RuntimeFit.pre_filter(p, &cl, &mut st);
            RuntimeFit.filter(p, n, &cl, &st)
        };
        let wasm_pod = pod("p", json!({"runtimeClassName": "wasm"}));
        let container_pod = pod("c", json!({}));
        assert!(fit(&wasm_pod, &wasm_node).is_ok());
        assert!(fit(&wasm_pod, &both).is_ok());
        assert_eq!(
            fit(&container_pod, &wasm_node).unwrap_err()[0],
            "node(s) didn't run containers"
        );
        assert!(fit(&container_pod, &both).is_ok());
        let unknown = pod("u", json!({"runtimeClassName": "gvisor"}));
        assert!(fit(&unknown, &both).is_err());
    }
}
