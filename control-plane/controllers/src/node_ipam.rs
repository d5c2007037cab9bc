//! Node IPAM (kube-controller-manager's range allocator, on with
//! `--cluster-cidr`): each Node without a podCIDR gets the lowest free block
//! of the cluster CIDR, `--node-cidr-mask-size` bits long. A block is free
//! when no Node's podCIDR overlaps it, so a deleted Node's block is free
//! again at once, and a restarted controller rebuilds nothing: the Nodes
//! are the allocation table. A podCIDR once set is never changed, as in
//! Kubernetes (the API makes it immutable there).
//!
//! One worker reconciles Nodes one at a time and waits for its own writes
//! to reach the cache (see the manager), so two Nodes never get one block.

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use super::Controller;
use weft_cluster::objects as o;
use weft_cluster::{Action, Change, Outcome, Snapshot, res};

pub struct NodeIpamController {
    pub cluster_cidr: Ipv4Net,
    /// The prefix length of each Node's block.
    pub mask: u8,
}

impl NodeIpamController {
    /// Checks that `mask` carves `cluster_cidr` into blocks of at least 4 addresses.
    pub fn new(cluster_cidr: Ipv4Net, mask: u8) -> Result<Self, String> {
        if mask < cluster_cidr.prefix_len() || mask > 30 {
            return Err(format!(
                "--node-cidr-mask-size {mask} must lie between the cluster CIDR's prefix length ({}) and 30",
                cluster_cidr.prefix_len()
            ));
        }
        Ok(NodeIpamController {
            cluster_cidr: cluster_cidr.trunc(),
            mask,
        })
    }

    /// The lowest block of the cluster CIDR that no held range overlaps.
    fn free_block(&self, held: &[Ipv4Net]) -> Option<Ipv4Net> {
        self.cluster_cidr
            .subnets(self.mask)
            .ok()?
            .find(|b| !held.iter().any(|h| h.contains(b) || b.contains(h)))
    }
}

fn pod_cidr(node: &Value) -> Option<&str> {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
}

impl Controller for NodeIpamController {
    fn name(&self) -> &'static str {
        "node-ipam"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("", "nodes")
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        if change.resource() != ("", "nodes") {
            return Vec::new();
        }
        match &change.new {
            Some(node) if pod_cidr(node).is_none() => vec![o::name(node).to_string()],
            Some(_) => Vec::new(),
            // A block came free: Nodes still waiting may take it.
            None => snap
                .list("", "nodes", None)
                .filter(|n| pod_cidr(n).is_none())
                .map(|n| o::name(n).to_string())
                .collect(),
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, _now: jiff::Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let Some(node) = snap.get("", "nodes", "", key) else {
            return out;
        };
        if pod_cidr(node).is_some() {
            return out;
        }
        let held: Vec<Ipv4Net> = snap
            .list("", "nodes", None)
            .filter_map(|n| pod_cidr(n)?.parse().ok())
            .collect();
        match self.free_block(&held) {
            Some(block) => out.push(Action::Patch {
                res: res("nodes"),
                ns: String::new(),
                name: key.to_string(),
                status: false,
                patch: json!({"spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]}}),
            }),
            None => out.push(Action::Event {
                regarding: node.clone(),
                warning: true,
                reason: "CIDRNotAvailable".into(),
                message: format!(
                    "Node {key} status is now: CIDRNotAvailable (no /{} block of {} is free)",
                    self.mask, self.cluster_cidr
                ),
            }),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use weft_cluster::{Cache, keys};

    fn node(name: &str, cidr: Option<&str>) -> Value {
        let mut n =
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        n
    }

    fn cache_of(nodes: &[Value]) -> Cache {
        let cache = Cache::default();
        for (i, n) in nodes.iter().enumerate() {
            let key = keys::key("", "nodes", "", o::name(n));
            cache.apply(&key, i as u64 + 1, Some(Arc::new(n.clone())));
        }
        cache
    }

    fn assigned(out: &Outcome) -> Option<String> {
        match out.actions.first()? {
            Action::Patch { patch, .. } => Some(patch["spec"]["podCIDR"].as_str()?.to_string()),
            _ => None,
        }
    }

    fn ipam(cidr: &str, mask: u8) -> NodeIpamController {
        NodeIpamController::new(cidr.parse().unwrap(), mask).unwrap()
    }

    #[test]
    fn nodes_get_the_lowest_free_block_and_a_deleted_nodes_block_is_reused() {
        let c = ipam("10.244.0.0/16", 24);
        let cache = cache_of(&[
            node("a", Some("10.244.0.0/24")),
            node("b", Some("10.244.2.0/24")),
            node("c", None),
        ]);
        let out = c.reconcile("c", &cache.read(), jiff::Timestamp::now());
        assert_eq!(assigned(&out).as_deref(), Some("10.244.1.0/24"));

        // "a" deleted: its block is the lowest free one again.
        let cache = cache_of(&[
            node("b", Some("10.244.2.0/24")),
            node("c", Some("10.244.1.0/24")),
            node("d", None),
        ]);
        let out = c.reconcile("d", &cache.read(), jiff::Timestamp::now());
        assert_eq!(assigned(&out).as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn a_node_with_a_range_keeps_it_and_overlaps_count_as_held() {
        let c = ipam("10.244.0.0/16", 24);
        let cache = cache_of(&[node("a", Some("10.244.0.0/23")), node("b", None)]);
        let snap = cache.read();
        assert!(
            c.reconcile("a", &snap, jiff::Timestamp::now())
                .actions
                .is_empty()
        );
        let out = c.reconcile("b", &snap, jiff::Timestamp::now());
        assert_eq!(assigned(&out).as_deref(), Some("10.244.2.0/24"));
    }

    #[test]
    fn an_exhausted_range_is_a_warning_event_and_bad_masks_are_refused() {
        let c = ipam("10.244.0.0/23", 24);
        let cache = cache_of(&[
            node("a", Some("10.244.0.0/24")),
            node("b", Some("10.244.1.0/24")),
            node("c", None),
        ]);
        let out = c.reconcile("c", &cache.read(), jiff::Timestamp::now());
        assert!(matches!(
            &out.actions[..],
            [Action::Event { warning: true, reason, .. }] if reason == "CIDRNotAvailable"
        ));
        assert!(NodeIpamController::new("10.244.0.0/16".parse().unwrap(), 8).is_err());
        assert!(NodeIpamController::new("10.244.0.0/16".parse().unwrap(), 31).is_err());
    }
}
