//! The scheduling framework: parsed pods and nodes, the plugin interface
//! (pre-filter, filter, score), and one scheduling cycle that runs them the
//! way kube-scheduler does: filter a sample of nodes round-robin, score the
//! feasible ones, pick the best, or explain why none fits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use weft_api::quantity;

use weft_cluster::objects as o;

/// Requests or capacity. CPU in millicores, memory and storage in bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub storage: i64,
    pub pods: i64,
    pub extended: BTreeMap<String, i64>,
}

impl Resources {
    /// From a `{cpu: "2", memory: "1Gi", ...}` map.
    pub fn from_map(m: Option<&Value>) -> Resources {
        let mut r = Resources::default();
        let Some(m) = m.and_then(Value::as_object) else {
            return r;
        };
        for (k, v) in m {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let clamp = |x: i128| x.clamp(0, i64::MAX as i128) as i64;
            match k.as_str() {
                "cpu" => r.cpu = clamp(quantity::parse_milli(&text).unwrap_or(0)),
                "memory" => r.memory = clamp(quantity::parse_units(&text).unwrap_or(0)),
                "ephemeral-storage" => r.storage = clamp(quantity::parse_units(&text).unwrap_or(0)),
                "pods" => r.pods = clamp(quantity::parse_units(&text).unwrap_or(0)),
                name if name.contains('/') || name.starts_with("hugepages-") => {
                    r.extended.insert(
                        name.into(),
                        clamp(quantity::parse_units(&text).unwrap_or(0)),
                    );
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.storage += o.storage;
        self.pods += o.pods;
        for (k, v) in &o.extended {
            *self.extended.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.storage -= o.storage;
        self.pods -= o.pods;
        for (k, v) in &o.extended {
            *self.extended.entry(k.clone()).or_default() -= v;
        }
    }
}

/// Scoring treats a container without requests as asking for this much
/// (kube-scheduler's non-zero defaults), so empty pods still spread.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// One pod (anti-)affinity term, with its namespaces resolved.
#[derive(Debug, Clone)]
pub struct Term {
    pub selector: Value,
    /// Empty with `all_namespaces` false means the pod's own namespace.
    pub namespaces: Vec<String>,
    pub namespace_selector: Option<Value>,
    pub topology_key: String,
    pub weight: i64,
}

impl Term {
    fn parse(v: &Value, own_ns: &str, weight: i64) -> Term {
        let mut namespaces: Vec<String> = v
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let namespace_selector = v
            .get("namespaceSelector")
            .filter(|s| s.is_object())
            .cloned();
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(own_ns.to_string());
        }
        Term {
            selector: v.get("labelSelector").cloned().unwrap_or(Value::Null),
            namespaces,
            namespace_selector,
            topology_key: v
                .get("topologyKey")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            weight,
        }
    }

    /// Whether `pod` is one of the pods this term selects.
    pub fn matches(&self, pod: &PodInfo, cluster: &Cluster) -> bool {
        self.matches_labels(&pod.namespace, pod.labels(), cluster)
    }

    /// The same, for any pod in `namespace` with `labels` (a whole [`Group`]).
    pub fn matches_labels(
        &self,
        namespace: &str,
        labels: Option<&Map<String, Value>>,
        cluster: &Cluster,
    ) -> bool {
        let ns_ok = self.namespaces.iter().any(|n| n == namespace)
            || self.namespace_selector.as_ref().is_some_and(|sel| {
                o::selector_matches(Some(sel), cluster.namespace_labels.get(namespace))
            });
        ns_ok && o::selector_matches(Some(&self.selector), labels)
    }
}

/// A topology spread constraint.
#[derive(Debug, Clone)]
pub struct Spread {
    pub max_skew: i64,
    pub topology_key: String,
    pub hard: bool,
    pub selector: Value,
    pub min_domains: i64,
    /// Count only nodes the pod's node affinity/selector allows (the default, Honor).
    pub honor_affinity: bool,
}

/// A pod, parsed once for scheduling.
#[derive(Debug)]
pub struct PodInfo {
    pub obj: Arc<Value>,
    pub key: String,
    pub namespace: String,
    pub requests: Resources,
    /// cpu and memory with the non-zero defaults, for scoring.
    pub nonzero: (i64, i64),
    pub priority: i64,
    pub required_affinity: Vec<Term>,
    pub required_anti: Vec<Term>,
    pub preferred: Vec<Term>,
    pub preferred_anti: Vec<Term>,
    pub spread: Vec<Spread>,
    pub tolerations: Vec<Value>,
    pub node_selector: Vec<(String, String)>,
    /// Required node affinity terms (None: no requirement).
    pub node_terms: Option<Vec<Value>>,
    /// Preferred node affinity: (weight, term).
    pub node_preferences: Vec<(i64, Value)>,
    pub runtime_class: Option<String>,
    /// Namespace, labels and required anti-affinity: pods alike in all three
    /// share a [`Group`].
    pub group: String,
}

/// What a pod asks of a node: its requests (the larger of its containers'
/// sum and any init container, plus overhead), and the non-zero requests
/// scoring uses (defaults stand in for requests left out).
fn pod_requests(obj: &Value) -> (Resources, (i64, i64)) {
    let mut requests = Resources {
        pods: 1,
        ..Default::default()
    };
    let (mut cpu_nz, mut mem_nz) = (0, 0);
    for c in obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let r = Resources::from_map(c.pointer("/resources/requests"));
        cpu_nz += if r.cpu == 0 { DEFAULT_MILLI_CPU } else { r.cpu };
        mem_nz += if r.memory == 0 {
            DEFAULT_MEMORY
        } else {
            r.memory
        };
        requests.add(&r);
    }
    requests.pods = 1;
    // An init container runs alone: the pod needs the larger of the two.
    for c in obj
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let r = Resources::from_map(c.pointer("/resources/requests"));
        requests.cpu = requests.cpu.max(r.cpu);
        requests.memory = requests.memory.max(r.memory);
    }
    let overhead = Resources::from_map(obj.pointer("/spec/overhead"));
    requests.cpu += overhead.cpu;
    requests.memory += overhead.memory;
    (requests, (cpu_nz, mem_nz))
}

fn spread_constraints(obj: &Value) -> Vec<Spread> {
    obj.pointer("/spec/topologySpreadConstraints")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| Spread {
                    max_skew: c.get("maxSkew").and_then(Value::as_i64).unwrap_or(1).max(1),
                    topology_key: c
                        .get("topologyKey")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    hard: c.get("whenUnsatisfiable").and_then(Value::as_str)
                        != Some("ScheduleAnyway"),
                    selector: c.get("labelSelector").cloned().unwrap_or(Value::Null),
                    min_domains: c
                        .get("minDomains")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                        .max(1),
                    honor_affinity: c.get("nodeAffinityPolicy").and_then(Value::as_str)
                        != Some("Ignore"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Preferred node affinity: (weight, preference).
fn node_preferences(obj: &Value) -> Vec<(i64, Value)> {
    obj.pointer("/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p.get("weight").and_then(Value::as_i64).unwrap_or(0),
                        p.get("preference").cloned().unwrap_or(Value::Null),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

impl PodInfo {
    pub fn new(obj: Arc<Value>) -> PodInfo {
        let ns = o::namespace(&obj).to_string();
        let key = o::key_of(&obj);
        let (requests, nonzero) = pod_requests(&obj);
        let terms = |ptr: &str| -> Vec<Term> {
            obj.pointer(ptr)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|t| Term::parse(t, &ns, 1)).collect())
                .unwrap_or_default()
        };
        let weighted = |ptr: &str| -> Vec<Term> {
            obj.pointer(ptr)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|w| {
                            let weight = w.get("weight").and_then(Value::as_i64).unwrap_or(1);
                            Term::parse(
                                w.get("podAffinityTerm").unwrap_or(&Value::Null),
                                &ns,
                                weight,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let node_terms = obj
            .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            .and_then(Value::as_array)
            .cloned();
        let node_selector = obj
            .pointer("/spec/nodeSelector")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let sorted_labels: BTreeMap<&String, &Value> = o::labels(&obj)
            .map(|l| l.iter().collect())
            .unwrap_or_default();
        let anti = obj
            .pointer(
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            )
            .map(Value::to_string)
            .unwrap_or_default();
        let group = format!(
            "{ns}\0{}\0{anti}",
            serde_json::to_string(&sorted_labels).unwrap_or_default()
        );
        PodInfo {
            group,
            tolerations: o::tolerations(&obj).to_vec(),
            node_selector,
            node_terms,
            node_preferences: node_preferences(&obj),
            runtime_class: obj
                .pointer("/spec/runtimeClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(String::from),
            required_affinity: terms(
                "/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            ),
            required_anti: terms(
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            ),
            preferred: weighted(
                "/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution",
            ),
            preferred_anti: weighted(
                "/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution",
            ),
            spread: spread_constraints(&obj),
            priority: obj
                .pointer("/spec/priority")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            nonzero,
            requests,
            namespace: ns,
            key,
            obj,
        }
    }

    pub fn labels(&self) -> Option<&Map<String, Value>> {
        o::labels(&self.obj)
    }

    pub fn spec(&self, field: &str) -> Option<&Value> {
        self.obj.get("spec").and_then(|s| s.get(field))
    }
}

/// A node and what is placed on it.
#[derive(Debug)]
pub struct NodeInfo {
    pub obj: Arc<Value>,
    pub name: String,
    /// Parsed once: plugins look these up for every pod.
    /// A handful per node: a linear scan beats hashing here.
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Value>,
    pub unschedulable: bool,
    /// The runtime handlers the node runs, as bits of `Cluster::handlers`
    /// (None until the node joins a `Cluster`). Checked for every node on
    /// every cycle, so kept inline: no pointer chasing into label strings.
    pub runtime_bits: Option<u64>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub nonzero_requested: (i64, i64),
    pub pods: Vec<Arc<PodInfo>>,
}

impl NodeInfo {
    pub fn new(obj: Arc<Value>) -> NodeInfo {
        let mut allocatable = Resources::from_map(obj.pointer("/status/allocatable"));
        if obj.pointer("/status/allocatable/pods").is_none() {
            allocatable.pods = 110;
        }
        NodeInfo {
            name: o::name(&obj).to_string(),
            labels: o::labels(&obj)
                .map(|l| {
                    l.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            taints: o::taints(&obj).to_vec(),
            runtime_bits: None,
            unschedulable: obj.pointer("/spec/unschedulable").and_then(Value::as_bool)
                == Some(true),
            allocatable,
            requested: Resources::default(),
            nonzero_requested: (0, 0),
            pods: Vec::new(),
            obj,
        }
    }

    pub fn label(&self, k: &str) -> Option<&str> {
        o::labels(&self.obj)
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.nonzero_requested.0 += p.nonzero.0;
        self.nonzero_requested.1 += p.nonzero.1;
        self.pods.push(p);
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.key == key)?;
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.nonzero_requested.0 -= p.nonzero.0;
        self.nonzero_requested.1 -= p.nonzero.1;
        Some(p)
    }
}

/// Placed pods alike in namespace, labels and required anti-affinity. Terms
/// and spread selectors are evaluated once per group rather than per pod,
/// which keeps pre-filter proportional to workloads, not pods.
#[derive(Debug)]
pub struct Group {
    pub namespace: String,
    pub labels: Option<Map<String, Value>>,
    /// One member, for the required anti-affinity terms they all carry.
    pub member: Arc<PodInfo>,
    /// How many members on each node.
    pub per_node: HashMap<String, usize>,
}

/// What the scheduler knows: nodes with their pods, and the cluster-scoped
/// objects plugins consult.
#[derive(Debug, Default)]
pub struct Cluster {
    pub nodes: Vec<NodeInfo>,
    pub index: HashMap<String, usize>,
    /// Assigned pods by key, and where.
    pub placed: HashMap<String, String>,
    /// Placed pods grouped by namespace, labels and anti-affinity, counted per node.
    pub groups: HashMap<String, Group>,
    pub namespace_labels: HashMap<String, Map<String, Value>>,
    pub runtime_classes: HashMap<String, Arc<Value>>,
    /// Runtime handler names seen on nodes; a node's `runtime_bits` index this.
    pub handlers: Vec<String>,
}

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// The bit for a runtime handler (interned on first sight; at most 64).
    pub fn handler_bit(&mut self, handler: &str) -> u64 {
        let i = match self.handlers.iter().position(|h| h == handler) {
            Some(i) => i,
            None => {
                self.handlers.push(handler.to_string());
                self.handlers.len() - 1
            }
        };
        if i < 64 { 1 << i } else { 0 }
    }

    pub fn upsert_node(&mut self, obj: Arc<Value>) {
        let name = o::name(&obj).to_string();
        let mut info = NodeInfo::new(obj);
        let handlers: Vec<String> = info
            .labels
            .iter()
            .filter(|(_, v)| v == "true")
            .filter_map(|(k, _)| k.strip_prefix(super::plugins::basic::RUNTIME_LABEL_PREFIX))
            .map(String::from)
            .collect();
        info.runtime_bits = Some(
            handlers
                .iter()
                .fold(0, |bits, h| bits | self.handler_bit(h)),
        );
        match self.index.get(&name) {
            Some(i) => {
                let n = &mut self.nodes[*i];
                let pods = std::mem::take(&mut n.pods);
                *n = info;
                for p in pods {
                    n.add_pod(p);
                }
            }
            None => {
                self.index.insert(name, self.nodes.len());
                self.nodes.push(info);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let gone = self.nodes.swap_remove(i);
        for p in &gone.pods {
            self.placed.remove(&p.key);
            self.ungroup(p, name);
        }
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
        }
    }

    /// Records `pod` on `node` (replacing any earlier placement of the same key).
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.unplace(&pod.key);
        let Some(i) = self.index.get(node).copied() else {
            return;
        };
        let g = self
            .groups
            .entry(pod.group.clone())
            .or_insert_with(|| Group {
                namespace: pod.namespace.clone(),
                labels: pod.labels().cloned(),
                member: pod.clone(),
                per_node: HashMap::new(),
            });
        *g.per_node.entry(node.to_string()).or_default() += 1;
        self.placed.insert(pod.key.clone(), node.to_string());
        self.nodes[i].add_pod(pod);
    }

    pub fn unplace(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let node = self.placed.remove(key)?;
        let i = *self.index.get(&node)?;
        let p = self.nodes[i].remove_pod(key)?;
        self.ungroup(&p, &node);
        Some(p)
    }

    fn ungroup(&mut self, p: &PodInfo, node: &str) {
        let Some(g) = self.groups.get_mut(&p.group) else {
            return;
        };
        if let Some(n) = g.per_node.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                g.per_node.remove(node);
            }
        }
        if g.per_node.is_empty() {
            self.groups.remove(&p.group);
        }
    }
}

/// Why one node was rejected: the plugin's reasons (usually one).
pub type Reasons = Vec<String>;

/// Per-cycle data computed once per pod by pre-filter, read by filter and score.
#[derive(Debug, Default)]
pub struct CycleState {
    pub inter_pod: super::plugins::affinity::InterPodState,
    pub spread: super::plugins::spread::SpreadState,
    pub runtime: super::plugins::basic::RuntimeState,
}

/// A scheduling plugin. Each extension point is optional.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_filter(&self, _pod: &PodInfo, _cluster: &Cluster, _state: &mut CycleState) {}
    fn filter(
        &self,
        _pod: &PodInfo,
        _node: &NodeInfo,
        _cluster: &Cluster,
        _state: &CycleState,
    ) -> Result<(), Reasons> {
        Ok(())
    }
    /// Relative weight in the final score; 0 means the plugin does not score.
    fn weight(&self) -> i64 {
        0
    }
    /// A raw score per feasible node; normalised to 0..=100 by `normalize`.
    fn score(
        &self,
        _pod: &PodInfo,
        _node: &NodeInfo,
        _cluster: &Cluster,
        _state: &CycleState,
    ) -> i64 {
        0
    }
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Scales scores to 0..=100 by the maximum (reverse: fewer is better).
pub fn normalize_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        let v = if max == 0 { 0 } else { *s * 100 / max };
        *s = if reverse { 100 - v } else { v };
    }
    if max == 0 && reverse {
        scores.iter_mut().for_each(|s| *s = 100);
    }
}

/// Scales scores to 0..=100 between the minimum and maximum.
pub fn normalize_min_max(scores: &mut [i64], reverse: bool) {
    let (min, max) = (
        scores.iter().copied().min().unwrap_or(0),
        scores.iter().copied().max().unwrap_or(0),
    );
    for s in scores.iter_mut() {
        let v = if max == min {
            0
        } else {
            (*s - min) * 100 / (max - min)
        };
        *s = if reverse { 100 - v } else { v };
    }
}

/// No node fits: how many nodes said what.
#[derive(Debug, Clone, PartialEq)]
pub struct FitError {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        // kube-scheduler sorts the "N reason" strings themselves.
        parts.sort();
        if parts.is_empty() {
            write!(f, "0/{} nodes are available.", self.nodes)
        } else {
            write!(
                f,
                "0/{} nodes are available: {}.",
                self.nodes,
                parts.join(", ")
            )
        }
    }
}

/// How many feasible nodes to find before scoring (kube-scheduler's
/// adaptive percentageOfNodesToScore).
pub fn nodes_to_find(total: usize) -> usize {
    if total < 100 {
        return total;
    }
    let pct = (50 - (total as i64) / 125).max(5) as usize;
    (total * pct / 100).max(100)
}

/// A profile: the plugins, in filter order.
pub struct Profile {
    pub plugins: Vec<Box<dyn Plugin>>,
}

impl Profile {
    /// Filters nodes starting at `start` (round-robin across cycles), then
    /// scores the feasible ones. Returns the chosen node, or why none fits.
    pub fn schedule(
        &self,
        pod: &PodInfo,
        cluster: &Cluster,
        start: &mut usize,
    ) -> Result<String, FitError> {
        let total = cluster.nodes.len();
        let mut state = CycleState::default();
        for p in &self.plugins {
            p.pre_filter(pod, cluster, &mut state);
        }
        let want = nodes_to_find(total);
        let mut feasible: Vec<usize> = Vec::with_capacity(want.min(total));
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut examined = 0;
        for i in 0..total {
            if feasible.len() >= want {
                break;
            }
            let idx = (*start + i) % total;
            examined += 1;
            let node = &cluster.nodes[idx];
            match self
                .plugins
                .iter()
                .try_for_each(|p| p.filter(pod, node, cluster, &state))
            {
                Ok(()) => feasible.push(idx),
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        if total > 0 {
            *start = (*start + examined) % total;
        }
        match feasible.len() {
            0 => Err(FitError {
                nodes: total,
                reasons,
            }),
            1 => Ok(cluster.nodes[feasible[0]].name.clone()),
            _ => {
                let mut totals = vec![0i64; feasible.len()];
                let mut scores = vec![0i64; feasible.len()];
                for p in self.plugins.iter().filter(|p| p.weight() > 0) {
                    for (s, idx) in scores.iter_mut().zip(&feasible) {
                        *s = p.score(pod, &cluster.nodes[*idx], cluster, &state);
                    }
                    p.normalize(&mut scores);
                    for (t, s) in totals.iter_mut().zip(&scores) {
                        *t += s * p.weight();
                    }
                }
                let best = totals
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, t)| (**t, std::cmp::Reverse(*i)))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                Ok(cluster.nodes[feasible[best]].name.clone())
            }
        }
    }

    /// Whether `pod` could run on `node` by the node-level plugins alone
    /// (what the DaemonSet controller asks).
    pub fn node_fits(&self, pod: &PodInfo, node: &NodeInfo, cluster: &Cluster) -> bool {
        let mut state = CycleState::default();
        for p in &self.plugins {
            p.pre_filter(pod, cluster, &mut state);
        }
        self.plugins
            .iter()
            .all(|p| p.filter(pod, node, cluster, &state).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_error_reads_like_kube_scheduler() {
        let e = FitError {
            nodes: 3,
            reasons: BTreeMap::from([
                ("Insufficient cpu".to_string(), 1),
                (
                    "node(s) had untolerated taint {dedicated: database}".to_string(),
                    2,
                ),
            ]),
        };
        assert_eq!(
            e.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: database}."
        );
    }

    #[test]
    fn sampling_matches_kube_scheduler() {
        assert_eq!(nodes_to_find(3), 3);
        assert_eq!(nodes_to_find(150), 100);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(100_000), 5000);
    }
}
