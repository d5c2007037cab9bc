//! TaintToleration: NoSchedule and NoExecute taints must be tolerated;
//! untolerated PreferNoSchedule taints lower a node's score.

use serde_json::Value;

use super::super::framework::{
    Cluster, CycleState, NodeInfo, Plugin, PodInfo, Reasons, normalize_max,
};
use weft_cluster::objects as o;

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        _: &CycleState,
    ) -> Result<(), Reasons> {
        let tolerations = &pod.tolerations;
        let untolerated = node.taints.iter().find(|t| {
            matches!(
                t.get("effect").and_then(Value::as_str),
                Some("NoSchedule" | "NoExecute")
            ) && !tolerations.iter().any(|tol| o::tolerates(tol, t))
        });
        match untolerated {
            None => Ok(()),
            Some(t) => Err(vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.get("key").and_then(Value::as_str).unwrap_or(""),
                t.get("value").and_then(Value::as_str).unwrap_or("")
            )]),
        }
    }

    fn weight(&self) -> i64 {
        3
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Cluster, _: &CycleState) -> i64 {
        let tolerations = &pod.tolerations;
        node.taints
            .iter()
            .filter(|t| t.get("effect").and_then(Value::as_str) == Some("PreferNoSchedule"))
            .filter(|t| !tolerations.iter().any(|tol| o::tolerates(tol, t)))
            .count() as i64
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize_max(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use super::*;

    #[test]
    fn taints_need_tolerations() {
        let cl = Cluster::default();
        let st = CycleState::default();
        let mut n = node("db", json!({}));
        n["spec"] =
            json!({"taints": [{"key": "dedicated", "value": "database", "effect": "NoSchedule"}]});
        let n = info(n);
        let plain = pod("p", json!({}));
        assert_eq!(
            TaintToleration.filter(&plain, &n, &cl, &st).unwrap_err()[0],
            "node(s) had untolerated taint {dedicated: database}"
        );
        let equal = pod(
            "p",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "database", "effect": "NoSchedule"}]}),
        );
        assert!(TaintToleration.filter(&equal, &n, &cl, &st).is_ok());
        let wrong = pod(
            "p",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web"}]}),
        );
        assert!(TaintToleration.filter(&wrong, &n, &cl, &st).is_err());
        let mut soft = node("soft", json!({}));
        soft["spec"] = json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]});
        let soft = info(soft);
        assert!(
            TaintToleration.filter(&plain, &soft, &cl, &st).is_ok(),
            "PreferNoSchedule only scores"
        );
        let mut scores = vec![
            TaintToleration.score(&plain, &soft, &cl, &st),
            TaintToleration.score(&plain, &info(node("x", json!({}))), &cl, &st),
        ];
        TaintToleration.normalize(&mut scores);
        assert_eq!(scores, vec![0, 100]);
    }
}
