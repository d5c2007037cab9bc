//! The scheduler: watches pending pods through the cache, runs the plugin
//! profile one pod at a time, assumes the placement at once and binds
//! through `pods/binding` concurrently, as kube-scheduler's binding cycle.

pub mod framework;
pub mod plugins;
pub mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch as signal};
use weft_api::Status;

use framework::{Cluster, NodeInfo, PodInfo, Profile};
use queue::SchedulingQueue;
use weft_cluster::{Action, Cache, Change, NodeFit, Snapshot, Writer, execute, objects as o, res};

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Binds in flight at once; the store group-commits them.
const MAX_BINDS: usize = 256;

struct Bound {
    key: String,
    result: Result<(), Status>,
}

pub struct Scheduler {
    profile: Profile,
    cluster: Cluster,
    /// Unassigned pods we are responsible for.
    pending: HashMap<String, Arc<PodInfo>>,
    /// Placed in `cluster` but not yet seen bound in the cache.
    assumed: HashSet<String>,
    queue: SchedulingQueue,
    next_start: usize,
    writer: Arc<dyn Writer>,
    binds: Arc<Semaphore>,
    bound_tx: mpsc::UnboundedSender<Bound>,
}

fn ours(pod: &Value) -> bool {
    pod.pointer("/spec/schedulerName")
        .and_then(Value::as_str)
        .is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME)
}

fn assigned_to(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

/// Node changes that can make a pod fit (not heartbeats).
fn node_changed_for_scheduling(old: Option<&Value>, new: &Value) -> bool {
    let Some(old) = old else {
        return true;
    };
    [
        "/metadata/labels",
        "/spec/taints",
        "/spec/unschedulable",
        "/status/allocatable",
    ]
    .iter()
    .any(|p| old.pointer(p) != new.pointer(p))
}

impl Scheduler {
    fn new(writer: Arc<dyn Writer>, bound_tx: mpsc::UnboundedSender<Bound>) -> Self {
        Scheduler {
            profile: plugins::default_profile(),
            cluster: Cluster::default(),
            pending: HashMap::new(),
            assumed: HashSet::new(),
            queue: SchedulingQueue::default(),
            next_start: 0,
            writer,
            binds: Arc::new(Semaphore::new(MAX_BINDS)),
            bound_tx,
        }
    }

    fn on_change(&mut self, c: &Change) {
        match c.resource() {
            ("", "pods") => self.on_pod(c.old.as_deref(), c.new.clone()),
            ("", "nodes") => match &c.new {
                Some(n) => {
                    let relevant = node_changed_for_scheduling(c.old.as_deref(), n);
                    self.cluster.upsert_node(n.clone());
                    if relevant {
                        self.queue.move_all();
                    }
                }
                None => self.cluster.remove_node(o::name(c.object())),
            },
            ("", "namespaces") => {
                let name = o::name(c.object()).to_string();
                match c.new.as_ref().and_then(|n| o::labels(n)) {
                    Some(l) => {
                        self.cluster.namespace_labels.insert(name, l.clone());
                    }
                    None => {
                        self.cluster.namespace_labels.remove(&name);
                    }
                }
            }
            ("node.k8s.io", "runtimeclasses") => {
                let name = o::name(c.object()).to_string();
                match &c.new {
                    Some(rc) => self.cluster.runtime_classes.insert(name, rc.clone()),
                    None => self.cluster.runtime_classes.remove(&name),
                };
                self.queue.move_all();
            }
            _ => {}
        }
    }

    fn on_pod(&mut self, old: Option<&Value>, new: Option<Arc<Value>>) {
        let Some(pod) = new else {
            let key = old.map(o::key_of).unwrap_or_default();
            self.pending.remove(&key);
            self.queue.remove(&key);
            self.assumed.remove(&key);
            if self.cluster.unplace(&key).is_some() {
                self.queue.move_all();
            }
            return;
        };
        let key = o::key_of(&pod);
        if let Some(node) = assigned_to(&pod) {
            self.pending.remove(&key);
            self.queue.remove(&key);
            self.assumed.remove(&key);
            if o::is_active(&pod) {
                let node = node.to_string();
                self.cluster.place(Arc::new(PodInfo::new(pod)), &node);
            } else if self.cluster.unplace(&key).is_some() {
                // A finished or terminating pod frees its share.
                self.queue.move_all();
            }
            return;
        }
        if !ours(&pod) || !o::is_active(&pod) {
            self.pending.remove(&key);
            self.queue.remove(&key);
            return;
        }
        if self.assumed.contains(&key) {
            return;
        }
        // Our own status updates (PodScheduled=False) must not retrigger a cycle.
        let spec_changed = old.is_none_or(|o| {
            o.get("spec") != pod.get("spec")
                || o.pointer("/metadata/labels") != pod.pointer("/metadata/labels")
        });
        let info = Arc::new(PodInfo::new(pod));
        let priority = info.priority;
        self.pending.insert(key.clone(), info);
        if spec_changed || !self.queue.contains(&key) {
            self.queue.add(&key, priority);
        }
    }

    fn schedule_next(&mut self) -> bool {
        let Some(key) = self.queue.pop() else {
            return false;
        };
        let Some(pod) = self.pending.get(&key).cloned() else {
            self.queue.remove(&key);
            return true;
        };
        match self
            .profile
            .schedule(&pod, &self.cluster, &mut self.next_start)
        {
            Ok(node) => {
                self.cluster.place(pod.clone(), &node);
                self.assumed.insert(key.clone());
                self.bind(pod, node);
            }
            Err(fit) => {
                self.queue.unschedulable(&key);
                self.report_unschedulable(&pod, fit.to_string());
            }
        }
        true
    }

    fn bind(&self, pod: Arc<PodInfo>, node: String) {
        let writer = self.writer.clone();
        let tx = self.bound_tx.clone();
        let permits = self.binds.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let (ns, name) = (o::namespace(&pod.obj), o::name(&pod.obj));
            let result = writer.bind(ns, name, &node).await;
            if result.is_ok() {
                let ev = Action::Event {
                    regarding: pod.obj.clone(),
                    warning: false,
                    reason: "Scheduled".into(),
                    message: format!("Successfully assigned {ns}/{name} to {node}"),
                };
                let _ = execute(writer.as_ref(), ev).await;
            }
            let _ = tx.send(Bound {
                key: pod.key.clone(),
                result,
            });
        });
    }

    /// A FailedScheduling event and PodScheduled=False, when the reason changes.
    fn report_unschedulable(&self, pod: &Arc<PodInfo>, message: String) {
        if o::condition_field(&pod.obj, "PodScheduled", "message").and_then(Value::as_str)
            == Some(message.as_str())
        {
            return;
        }
        let writer = self.writer.clone();
        let obj = pod.obj.clone();
        tokio::spawn(async move {
            let now = o::ts(jiff::Timestamp::now());
            let patch = Action::Patch {
                res: res("pods"),
                ns: o::namespace(&obj).into(),
                name: o::name(&obj).into(),
                status: true,
                patch: json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": null, "lastTransitionTime": now}]}}),
            };
            let _ = execute(writer.as_ref(), patch).await;
            let ev = Action::Event {
                regarding: obj,
                warning: true,
                reason: "FailedScheduling".into(),
                message,
            };
            let _ = execute(writer.as_ref(), ev).await;
        });
    }

    fn on_bound(&mut self, b: Bound) {
        if let Err(s) = b.result {
            tracing::debug!(pod = %b.key, "bind failed: {}", s.message);
            self.cluster.unplace(&b.key);
            self.assumed.remove(&b.key);
            if self.pending.contains_key(&b.key) {
                self.queue.backoff(&b.key);
            }
        }
    }

    fn load(&mut self, cache: &Cache) {
        let snap = cache.read();
        for ns in snap.list("", "namespaces", None) {
            self.cluster.namespace_labels.insert(
                o::name(ns).into(),
                o::labels(ns).cloned().unwrap_or_default(),
            );
        }
        for rc in snap.list("node.k8s.io", "runtimeclasses", None) {
            self.cluster
                .runtime_classes
                .insert(o::name(rc).into(), rc.clone());
        }
        for n in snap.list("", "nodes", None) {
            self.cluster.upsert_node(n.clone());
        }
        let pods: Vec<Arc<Value>> = snap.list("", "pods", None).cloned().collect();
        drop(snap);
        for p in pods {
            self.on_pod(None, Some(p));
        }
    }
}

/// Schedules until `stop`.
pub async fn run(cache: Cache, writer: Arc<dyn Writer>, mut stop: signal::Receiver<bool>) {
    let mut feed = cache.subscribe();
    cache.synced().await;
    let (bound_tx, mut bound_rx) = mpsc::unbounded_channel();
    let mut s = Scheduler::new(writer, bound_tx);
    s.load(&cache);
    loop {
        // Take in every change and bind result already waiting, then schedule one pod.
        while let Ok(c) = feed.try_recv() {
            s.on_change(&c);
        }
        while let Ok(b) = bound_rx.try_recv() {
            s.on_bound(b);
        }
        s.queue.flush();
        if *stop.borrow() {
            return;
        }
        if s.schedule_next() {
            // Let bind tasks and the cache make progress between cycles.
            tokio::task::yield_now().await;
            continue;
        }
        let wake = s
            .queue
            .next_wakeup()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = stop.changed() => return,
            Some(c) = feed.recv() => s.on_change(&c),
            Some(b) = bound_rx.recv() => s.on_bound(b),
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The DaemonSet controller's question: does a pod fit a node by its
/// node-level filters alone (taints, node selector, affinity, runtime)?
pub struct DaemonFit {
    profile: Profile,
}

impl Default for DaemonFit {
    fn default() -> Self {
        DaemonFit {
            profile: plugins::daemon_profile(),
        }
    }
}

impl NodeFit for DaemonFit {
    fn fits(&self, pod: &Value, node: &Arc<Value>, snap: &Snapshot) -> bool {
        let mut cluster = Cluster::default();
        for rc in snap.list("node.k8s.io", "runtimeclasses", None) {
            cluster
                .runtime_classes
                .insert(o::name(rc).into(), rc.clone());
        }
        self.profile.node_fits(
            &PodInfo::new(Arc::new(pod.clone())),
            &NodeInfo::new(node.clone()),
            &cluster,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugins::testing::*;

    #[test]
    fn daemon_pods_fit_by_runtime_and_taints_not_by_resources() {
        let mut snap = Snapshot::default();
        snap.insert(
            "node.k8s.io",
            "runtimeclasses",
            json!({"metadata": {"name": "wasm"}, "handler": "wasmtime"}),
        );
        let wasm = json!({"runtime.weft.dev/wasmtime": "true"});
        let full = Arc::new(json!({"metadata": {"name": "full", "labels": wasm},
            "status": {"allocatable": {"cpu": "0", "pods": "0"}}}));
        let tainted = Arc::new(json!({"metadata": {"name": "t", "labels": wasm},
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}));
        let plain = Arc::new(json!({"metadata": {"name": "plain"}}));
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"runtimeClassName": "wasm", "containers": [{"name": "c"}]}});
        let fit = DaemonFit::default();
        assert!(
            fit.fits(&pod, &full, &snap),
            "resources are not a daemon's filter"
        );
        assert!(!fit.fits(&pod, &tainted, &snap));
        assert!(!fit.fits(&pod, &plain, &snap), "no wasmtime on that node");
    }

    #[test]
    fn whole_profile_places_and_explains() {
        let mut cl = cluster(vec![
            node(
                "a",
                json!({"runtime.weft.dev/wasmtime": "true", "kubernetes.io/hostname": "a"}),
            ),
            node(
                "b",
                json!({"runtime.weft.dev/wasmtime": "true", "kubernetes.io/hostname": "b"}),
            ),
            node("c", json!({"kubernetes.io/hostname": "c"})),
        ]);
        let mut tainted = (*cl.nodes[1].obj).clone();
        tainted["spec"] =
            json!({"taints": [{"key": "dedicated", "value": "database", "effect": "NoSchedule"}]});
        cl.upsert_node(Arc::new(tainted));
        cl.runtime_classes
            .insert("wasm".into(), Arc::new(json!({"handler": "wasmtime"})));
        let profile = plugins::default_profile();
        let mut start = 0;
        let p = pod(
            "p",
            json!({"runtimeClassName": "wasm", "containers": [{"name": "c"}]}),
        );
        assert_eq!(profile.schedule(&p, &cl, &mut start).unwrap(), "a");
        let huge = pod(
            "h",
            json!({"runtimeClassName": "wasm", "containers": [{"name": "c", "resources": {"requests": {"cpu": "100"}}}]}),
        );
        let err = profile.schedule(&huge, &cl, &mut start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't support runtime class \"wasm\", 1 node(s) had untolerated taint {dedicated: database}."
        );
    }
}
