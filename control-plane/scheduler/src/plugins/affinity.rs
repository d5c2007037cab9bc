//! InterPodAffinity: required and preferred pod affinity and anti-affinity,
//! including existing pods' anti-affinity against the incoming pod.

use std::collections::{HashMap, HashSet};

use super::super::framework::{
    Cluster, CycleState, Group, NodeInfo, Plugin, PodInfo, Reasons, normalize_min_max,
};

/// Computed once per pod in pre-filter.
#[derive(Debug, Default)]
pub struct InterPodState {
    /// Domains (values by topologyKey) where an existing pod's required anti-affinity forbids the pod.
    existing_anti: HashMap<String, HashSet<String>>,
    /// Per required anti-affinity term: domains already holding a matching pod.
    anti: Vec<HashSet<String>>,
    /// Per required affinity term: domains holding a matching pod.
    affinity: Vec<HashSet<String>>,
    /// Nothing matches the affinity terms yet, but the pod matches them
    /// itself: the first pod of a group may go anywhere with the key.
    first_of_group: bool,
    /// Preferred (anti-)affinity weight per domain.
    preferred: HashMap<(String, String), i64>,
    preferred_keys: Vec<String>,
}

pub struct InterPodAffinity;

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Cluster, state: &mut CycleState) {
        let s = &mut state.inter_pod;
        s.anti = vec![HashSet::new(); pod.required_anti.len()];
        s.affinity = vec![HashSet::new(); pod.required_affinity.len()];
        let own_terms = !(pod.required_anti.is_empty()
            && pod.required_affinity.is_empty()
            && pod.preferred.is_empty()
            && pod.preferred_anti.is_empty());
        // The domains (for one topology key) a group has members in, with how many.
        let domains = |g: &Group, key: &str| -> Vec<(String, i64)> {
            g.per_node
                .iter()
                .filter_map(|(n, count)| {
                    Some((cluster.node(n)?.label(key)?.to_string(), *count as i64))
                })
                .collect()
        };
        for g in cluster.groups.values() {
            // Existing pods' anti-affinity against this pod.
            for t in &g.member.required_anti {
                if t.matches(pod, cluster) {
                    for (v, _) in domains(g, &t.topology_key) {
                        s.existing_anti
                            .entry(t.topology_key.clone())
                            .or_default()
                            .insert(v);
                    }
                }
            }
            if !own_terms {
                continue;
            }
            let labels = g.labels.as_ref();
            for (i, t) in pod.required_anti.iter().enumerate() {
                if t.matches_labels(&g.namespace, labels, cluster) {
                    s.anti[i].extend(domains(g, &t.topology_key).into_iter().map(|(v, _)| v));
                }
            }
            for (i, t) in pod.required_affinity.iter().enumerate() {
                if t.matches_labels(&g.namespace, labels, cluster) {
                    s.affinity[i].extend(domains(g, &t.topology_key).into_iter().map(|(v, _)| v));
                }
            }
            // Preferred terms weigh every matching pod, as kube-scheduler's do.
            let weighted = pod
                .preferred
                .iter()
                .map(|t| (t, 1))
                .chain(pod.preferred_anti.iter().map(|t| (t, -1)));
            for (t, sign) in weighted {
                if t.matches_labels(&g.namespace, labels, cluster) {
                    for (v, count) in domains(g, &t.topology_key) {
                        *s.preferred.entry((t.topology_key.clone(), v)).or_default() +=
                            sign * t.weight * count;
                    }
                }
            }
        }
        s.first_of_group = !pod.required_affinity.is_empty()
            && s.affinity.iter().all(HashSet::is_empty)
            && pod
                .required_affinity
                .iter()
                .all(|t| t.matches(pod, cluster));
        let mut keys: Vec<String> = pod
            .preferred
            .iter()
            .chain(&pod.preferred_anti)
            .map(|t| t.topology_key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        s.preferred_keys = keys;
    }

    fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cluster,
        state: &CycleState,
    ) -> Result<(), Reasons> {
        // kube-scheduler's order: affinity, anti-affinity, then existing pods' anti-affinity.
        let s = &state.inter_pod;
        for (i, t) in pod.required_affinity.iter().enumerate() {
            let ok = match node.label(&t.topology_key) {
                None => false,
                Some(v) => s.first_of_group || s.affinity.get(i).is_some_and(|d| d.contains(v)),
            };
            if !ok {
                return Err(vec!["node(s) didn't match pod affinity rules".into()]);
            }
        }
        for (i, t) in pod.required_anti.iter().enumerate() {
            if node
                .label(&t.topology_key)
                .is_some_and(|v| s.anti.get(i).is_some_and(|d| d.contains(v)))
            {
                return Err(vec!["node(s) didn't match pod anti-affinity rules".into()]);
            }
        }
        if s.existing_anti
            .iter()
            .any(|(k, values)| node.label(k).is_some_and(|v| values.contains(v)))
        {
            return Err(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".into(),
            ]);
        }
        Ok(())
    }

    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, _: &Cluster, state: &CycleState) -> i64 {
        let s = &state.inter_pod;
        s.preferred_keys
            .iter()
            .filter_map(|k| {
                let v = node.label(k)?;
                s.preferred.get(&(k.clone(), v.to_string()))
            })
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize_min_max(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use super::*;

    fn anti_pod(name: &str) -> std::sync::Arc<PodInfo> {
        pod_with_labels(
            name,
            json!({"app": "web"}),
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        )
    }

    fn three_nodes() -> Cluster {
        cluster((1..=3).map(|i| node(&format!("n{i}"), json!({"kubernetes.io/hostname": format!("n{i}"), "zone": if i < 3 {"a"} else {"b"}}))).collect())
    }

    fn feasible(p: &PodInfo, cl: &Cluster) -> Vec<String> {
        let mut st = CycleState::default();
        InterPodAffinity.pre_filter(p, cl, &mut st);
        cl.nodes
            .iter()
            .filter(|n| InterPodAffinity.filter(p, n, cl, &st).is_ok())
            .map(|n| n.name.clone())
            .collect()
    }

    #[test]
    fn required_anti_affinity_spreads_one_per_host() {
        let mut cl = three_nodes();
        cl.place(anti_pod("a"), "n1");
        let p = anti_pod("b");
        assert_eq!(feasible(&p, &cl), vec!["n2", "n3"]);
        cl.place(anti_pod("c"), "n2");
        cl.place(anti_pod("d"), "n3");
        let mut st = CycleState::default();
        InterPodAffinity.pre_filter(&p, &cl, &mut st);
        assert_eq!(
            InterPodAffinity
                .filter(&p, &cl.nodes[0], &cl, &st)
                .unwrap_err()[0],
            "node(s) didn't match pod anti-affinity rules"
        );
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut cl = three_nodes();
        cl.place(anti_pod("a"), "n1");
        // This pod has no rules of its own, but carries the label the placed pod avoids.
        let plain = pod_with_labels("p", json!({"app": "web"}), json!({}));
        let mut st = CycleState::default();
        InterPodAffinity.pre_filter(&plain, &cl, &mut st);
        assert_eq!(
            InterPodAffinity
                .filter(&plain, &cl.nodes[0], &cl, &st)
                .unwrap_err()[0],
            "node(s) didn't satisfy existing pods anti-affinity rules"
        );
        assert!(
            InterPodAffinity
                .filter(&plain, &cl.nodes[1], &cl, &st)
                .is_ok()
        );
    }

    #[test]
    fn required_affinity_follows_its_group_by_zone() {
        let mut cl = three_nodes();
        let follower = pod_with_labels(
            "f",
            json!({"app": "cache"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}}),
        );
        assert!(
            feasible(&follower, &cl).is_empty(),
            "no db pod anywhere, and the pod is not one itself"
        );
        cl.place(pod_with_labels("db", json!({"app": "db"}), json!({})), "n3");
        assert_eq!(feasible(&follower, &cl), vec!["n3"]);
        let first = pod_with_labels(
            "g",
            json!({"app": "grp"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "grp"}}, "topologyKey": "zone"}]}}}),
        );
        assert_eq!(
            feasible(&first, &cl).len(),
            3,
            "the first of a self-affine group goes anywhere"
        );
    }

    #[test]
    fn preferred_terms_score_domains() {
        let mut cl = three_nodes();
        cl.place(pod_with_labels("db", json!({"app": "db"}), json!({})), "n3");
        let p = pod(
            "p",
            json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]}}}),
        );
        let mut st = CycleState::default();
        InterPodAffinity.pre_filter(&p, &cl, &mut st);
        let scores: Vec<i64> = cl
            .nodes
            .iter()
            .map(|n| InterPodAffinity.score(&p, n, &cl, &st))
            .collect();
        assert_eq!(scores, vec![0, 0, 50]);
    }
}
