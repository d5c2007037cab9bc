//! NodeResourcesFit (requests against allocatable; LeastAllocated scoring)
//! and NodeResourcesBalancedAllocation.

use super::super::framework::{Cluster, CycleState, NodeInfo, Plugin, PodInfo, Reasons};

pub struct NodeResourcesFit;

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        _: &CycleState,
    ) -> Result<(), Reasons> {
        let (want, used, cap) = (&pod.requests, &node.requested, &node.allocatable);
        let mut reasons = Vec::new();
        if used.pods + 1 > cap.pods {
            reasons.push("Too many pods".to_string());
        }
        for (name, w, u, c) in [
            ("cpu", want.cpu, used.cpu, cap.cpu),
            ("memory", want.memory, used.memory, cap.memory),
            ("ephemeral-storage", want.storage, used.storage, cap.storage),
        ] {
            if w > 0 && w > c - u {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        for (name, w) in &want.extended {
            let c = cap.extended.get(name).copied().unwrap_or(0);
            let u = used.extended.get(name).copied().unwrap_or(0);
            if *w > 0 && *w > c - u {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn weight(&self) -> i64 {
        1
    }

    /// LeastAllocated: the share of cpu and memory left free after placing the pod.
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Cluster, _: &CycleState) -> i64 {
        let free = |cap: i64, used: i64| {
            if cap <= 0 {
                0
            } else {
                ((cap - used).max(0) * 100) / cap
            }
        };
        let cpu = free(
            node.allocatable.cpu,
            node.nonzero_requested.0 + pod.nonzero.0,
        );
        let mem = free(
            node.allocatable.memory,
            node.nonzero_requested.1 + pod.nonzero.1,
        );
        (cpu + mem) / 2
    }
}

pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn weight(&self) -> i64 {
        1
    }

    /// 100 when cpu and memory are used in the same proportion.
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &Cluster, _: &CycleState) -> i64 {
        let frac = |cap: i64, used: i64| {
            if cap <= 0 {
                1.0
            } else {
                (used as f64 / cap as f64).min(1.0)
            }
        };
        let cpu = frac(
            node.allocatable.cpu,
            node.nonzero_requested.0 + pod.nonzero.0,
        );
        let mem = frac(
            node.allocatable.memory,
            node.nonzero_requested.1 + pod.nonzero.1,
        );
        let std_dev = (cpu - mem).abs() / 2.0;
        ((1.0 - std_dev) * 100.0) as i64
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use super::*;

    #[test]
    fn requests_must_fit_allocatable() {
        let cl = Cluster::default();
        let st = CycleState::default();
        let mut n = info(node("a", json!({})));
        let big = pod(
            "big",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "100", "memory": "1Gi"}}}]}),
        );
        assert_eq!(
            NodeResourcesFit.filter(&big, &n, &cl, &st).unwrap_err(),
            vec!["Insufficient cpu".to_string()]
        );
        let half = pod(
            "half",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1500m"}}}]}),
        );
        assert!(NodeResourcesFit.filter(&half, &n, &cl, &st).is_ok());
        n.add_pod(half.clone());
        assert!(
            NodeResourcesFit.filter(&half, &n, &cl, &st).is_err(),
            "the second 1.5 CPU does not fit in 2"
        );
        let gpu = pod(
            "gpu",
            json!({"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "1"}}}]}),
        );
        assert_eq!(
            NodeResourcesFit.filter(&gpu, &n, &cl, &st).unwrap_err(),
            vec!["Insufficient example.com/gpu".to_string()]
        );
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let cl = Cluster::default();
        let st = CycleState::default();
        let empty = info(node("a", json!({})));
        let mut busy = info(node("b", json!({})));
        busy.add_pod(pod("x", json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]})));
        let p = pod("p", json!({"containers": [{"name": "c"}]}));
        assert!(
            NodeResourcesFit.score(&p, &empty, &cl, &st)
                > NodeResourcesFit.score(&p, &busy, &cl, &st)
        );
        assert!(BalancedAllocation.score(&p, &empty, &cl, &st) >= 90);
    }
}
