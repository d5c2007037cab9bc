//! PodTopologySpread: hard (DoNotSchedule) constraints filter, soft
//! (ScheduleAnyway) ones score.

use std::collections::HashMap;

use super::super::framework::{
    Cluster, CycleState, NodeInfo, Plugin, PodInfo, Reasons, Spread, normalize_min_max,
};
use super::basic::{NodeAffinity, NodeSelector};
use weft_cluster::objects as o;

/// Matching pods per domain, for each constraint (same order as the pod's).
#[derive(Debug, Default)]
pub struct SpreadState {
    counts: Vec<HashMap<String, i64>>,
}

pub struct PodTopologySpread;

/// Matching pods per domain, over the nodes the pod could go to (every
/// domain present, even at zero).
fn counts(pod: &PodInfo, c: &Spread, cluster: &Cluster) -> HashMap<String, i64> {
    let st = CycleState::default();
    let restricted =
        c.honor_affinity && (!pod.node_selector.is_empty() || pod.node_terms.is_some());
    let eligible = |node: &NodeInfo| {
        !restricted
            || (NodeSelector.filter(pod, node, cluster, &st).is_ok()
                && NodeAffinity.filter(pod, node, cluster, &st).is_ok())
    };
    let mut out: HashMap<String, i64> = HashMap::new();
    for node in &cluster.nodes {
        if let Some(v) = node.label(&c.topology_key)
            && eligible(node)
        {
            out.entry(v.to_string()).or_default();
        }
    }
    for g in cluster.groups.values() {
        if g.namespace != pod.namespace
            || !o::selector_matches(Some(&c.selector), g.labels.as_ref())
        {
            continue;
        }
        for (n, count) in &g.per_node {
            if let Some(node) = cluster.node(n)
                && let Some(v) = node.label(&c.topology_key)
                && eligible(node)
            {
                *out.entry(v.to_string()).or_default() += *count as i64;
            }
        }
    }
    out
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Cluster, state: &mut CycleState) {
        state.spread.counts = pod.spread.iter().map(|c| counts(pod, c, cluster)).collect();
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        state: &CycleState,
    ) -> Result<(), Reasons> {
        for (c, counts) in pod
            .spread
            .iter()
            .zip(&state.spread.counts)
            .filter(|(c, _)| c.hard)
        {
            let Some(v) = node.label(&c.topology_key) else {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into(),
                ]);
            };
            let self_match = i64::from(o::selector_matches(Some(&c.selector), pod.labels()));
            // Too few domains: the global minimum counts as zero.
            let min = if (counts.len() as i64) < c.min_domains {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            };
            let here = counts.get(v).copied().unwrap_or(0);
            if here + self_match - min > c.max_skew {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints".into(),
                ]);
            }
        }
        Ok(())
    }

    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Cluster, state: &CycleState) -> i64 {
        pod.spread
            .iter()
            .zip(&state.spread.counts)
            .filter(|(c, _)| !c.hard)
            .map(|(c, counts)| {
                node.label(&c.topology_key)
                    .and_then(|v| counts.get(v))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize_min_max(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use super::*;

    fn spread_pod(name: &str, hard: bool) -> std::sync::Arc<PodInfo> {
        pod_with_labels(
            name,
            json!({"app": "web"}),
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
            "whenUnsatisfiable": if hard {"DoNotSchedule"} else {"ScheduleAnyway"}, "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        )
    }

    #[test]
    fn max_skew_keeps_zones_level() {
        let mut cl = cluster(vec![
            node("a1", json!({"zone": "a"})),
            node("b1", json!({"zone": "b"})),
            node("x", json!({})),
        ]);
        cl.place(spread_pod("p1", true), "a1");
        let p = spread_pod("p2", true);
        let mut st = CycleState::default();
        PodTopologySpread.pre_filter(&p, &cl, &mut st);
        assert_eq!(
            PodTopologySpread
                .filter(&p, &cl.nodes[0], &cl, &st)
                .unwrap_err()[0],
            "node(s) didn't match pod topology spread constraints"
        );
        assert!(PodTopologySpread.filter(&p, &cl.nodes[1], &cl, &st).is_ok());
        assert!(
            PodTopologySpread
                .filter(&p, &cl.nodes[2], &cl, &st)
                .unwrap_err()[0]
                .contains("missing required label")
        );
    }

    #[test]
    fn soft_constraints_prefer_emptier_domains() {
        let mut cl = cluster(vec![
            node("a1", json!({"zone": "a"})),
            node("b1", json!({"zone": "b"})),
        ]);
        cl.place(spread_pod("p1", false), "a1");
        let p = spread_pod("p2", false);
        let mut st = CycleState::default();
        PodTopologySpread.pre_filter(&p, &cl, &mut st);
        assert!(PodTopologySpread.filter(&p, &cl.nodes[0], &cl, &st).is_ok());
        let mut scores: Vec<i64> = cl
            .nodes
            .iter()
            .map(|n| PodTopologySpread.score(&p, n, &cl, &st))
            .collect();
        PodTopologySpread.normalize(&mut scores);
        assert_eq!(scores, vec![0, 100]);
    }
}
