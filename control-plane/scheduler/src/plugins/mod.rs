//! The default plugins, in kube-scheduler's filter order, plus Weft's
//! runtime fit.

pub mod affinity;
pub mod basic;
pub mod resources;
pub mod spread;
pub mod taints;

use super::framework::Profile;

/// The profile `default-scheduler` runs.
pub fn default_profile() -> Profile {
    Profile {
        plugins: vec![
            Box::new(basic::NodeUnschedulable),
            Box::new(basic::NodeName),
            Box::new(taints::TaintToleration),
            Box::new(basic::NodeSelector),
            Box::new(basic::NodeAffinity),
            Box::new(basic::RuntimeFit),
            Box::new(resources::NodeResourcesFit),
            Box::new(resources::BalancedAllocation),
            Box::new(spread::PodTopologySpread),
            Box::new(affinity::InterPodAffinity),
        ],
    }
}

/// Node-level checks only: what decides where a DaemonSet pod belongs.
pub fn daemon_profile() -> Profile {
    Profile {
        plugins: vec![
            Box::new(taints::TaintToleration),
            Box::new(basic::NodeSelector),
            Box::new(basic::NodeAffinity),
            Box::new(basic::RuntimeFit),
        ],
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Pods and nodes for plugin tests.
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::super::framework::{Cluster, NodeInfo, PodInfo};

    pub fn node(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels},
               "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}})
    }

    pub fn pod(name: &str, spec: Value) -> Arc<PodInfo> {
        pod_with_labels(name, json!({}), spec)
    }

    pub fn pod_with_labels(name: &str, labels: Value, spec: Value) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec}),
        )))
    }

    pub fn cluster(nodes: Vec<Value>) -> Cluster {
        let mut c = Cluster::default();
        for n in nodes {
            c.upsert_node(Arc::new(n));
        }
        c
    }

    pub fn info(n: Value) -> NodeInfo {
        NodeInfo::new(Arc::new(n))
    }
}
