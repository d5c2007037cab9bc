//! What the pod loop asks of the API server, behind one narrow trait
//! ([`AgentApi`]): status writes, events, the pod's sources (ConfigMaps,
//! Secrets, its RuntimeClass) and finishing deletions. [`KubeApi`] is the
//! real one; the pod loop's tests record these calls instead.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_api::k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use weft_api::k8s_openapi::api::node::v1::RuntimeClass;

use super::now;
use super::state::PodKey;
use crate::env;
use crate::volumes;
use crate::workload::{Note, Report, WorkloadError};

pub(super) trait AgentApi: Send + Sync + 'static {
    /// A merge patch of the pod's status. Failures are logged: the next
    /// write carries the whole state again.
    fn patch_status(&self, key: &PodKey, status: &Value) -> impl Future<Output = ()> + Send;

    /// A core/v1 Event about the pod, as kubelet records them.
    fn event(
        &self,
        key: &PodKey,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> impl Future<Output = ()> + Send;

    /// The pod as the API has it now, if it is still the same pod (uid).
    fn current(&self, key: &PodKey) -> impl Future<Output = Option<Pod>> + Send;

    /// Graceful deletion is done on this node: the API server may remove the object.
    fn finish_deletion(&self, key: &PodKey) -> impl Future<Output = ()> + Send;

    /// The ConfigMaps and Secrets (pull secrets too) the pod's env and volumes name.
    fn sources(
        &self,
        pod: &Pod,
    ) -> impl Future<Output = Result<env::Fetched, WorkloadError>> + Send;

    /// The handler of RuntimeClass `class`.
    fn runtime_handler(
        &self,
        class: &str,
    ) -> impl Future<Output = Result<String, WorkloadError>> + Send;

    /// What a runtime reports while it starts `pod`: events, and the
    /// containers' waiting state (image pull progress) in the pod's status.
    fn reporter(&self, pod: &Pod) -> Report;
}

/// The API server, through kube-rs.
#[derive(Clone)]
pub(super) struct KubeApi {
    client: kube::Client,
    node: String,
}

impl KubeApi {
    pub(super) fn new(client: kube::Client, node: String) -> Self {
        KubeApi { client, node }
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

impl AgentApi for KubeApi {
    async fn patch_status(&self, key: &PodKey, status: &Value) {
        if let Err(e) = self
            .pods(&key.namespace)
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            tracing::warn!(pod = %key.name, "status update: {e}");
        }
    }

    async fn event(&self, key: &PodKey, warning: bool, reason: &str, message: &str) {
        let node = &self.node;
        let ts = now();
        let ev: Event = match serde_json::from_value(json!({
            "metadata": {"generateName": format!("{}.", key.name), "namespace": key.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": key.name, "namespace": key.namespace, "uid": key.uid},
            "reason": reason, "message": message, "type": if warning { "Warning" } else { "Normal" },
            "source": {"component": "kubelet", "host": node}, "reportingComponent": "kubelet",
            "reportingInstance": node, "firstTimestamp": ts, "lastTimestamp": ts, "count": 1}))
        {
            Ok(ev) => ev,
            Err(_) => return,
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &key.namespace);
        if let Err(e) = events.create(&Default::default(), &ev).await {
            tracing::debug!("event {reason}: {e}");
        }
    }

    async fn current(&self, key: &PodKey) -> Option<Pod> {
        let pod = self.pods(&key.namespace).get_opt(&key.name).await.ok()??;
        (pod.metadata.uid.as_deref() == Some(key.uid.as_str())).then_some(pod)
    }

    async fn finish_deletion(&self, k: &PodKey) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(k.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.pods(&k.namespace).delete(&k.name, &dp).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => tracing::warn!(pod = %k.name, "finishing deletion: {e}"),
        }
    }

    async fn sources(&self, pod: &Pod) -> Result<env::Fetched, WorkloadError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api_err = |e: kube::Error| WorkloadError::Config(e.to_string());
        let (mut cms, mut secrets) = volumes::references(pod);
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let (c_cms, c_secrets) = env::references(c);
            cms.extend(c_cms);
            secrets.extend(c_secrets);
        }
        let mut fetched = env::Fetched::default();
        let pull_secrets: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .collect();
        let secret_api = Api::<Secret>::namespaced(self.client.clone(), &ns);
        for name in pull_secrets {
            // A missing pull secret is not fatal (kubelet pulls anonymously).
            if let Ok(Some(s)) = secret_api.get_opt(&name).await {
                fetched.pull_secrets.push(s);
            }
        }
        let cm_api = Api::<ConfigMap>::namespaced(self.client.clone(), &ns);
        for name in cms {
            if !fetched.config_maps.contains_key(&name)
                && let Some(cm) = cm_api.get_opt(&name).await.map_err(api_err)?
            {
                fetched.config_maps.insert(name, cm);
            }
        }
        for name in secrets {
            if !fetched.secrets.contains_key(&name)
                && let Some(s) = secret_api.get_opt(&name).await.map_err(api_err)?
            {
                fetched.secrets.insert(name, s);
            }
        }
        Ok(fetched)
    }

    async fn runtime_handler(&self, class: &str) -> Result<String, WorkloadError> {
        let rc = Api::<RuntimeClass>::all(self.client.clone())
            .get_opt(class)
            .await
            .map_err(|e| WorkloadError::Config(e.to_string()))?
            .ok_or_else(|| WorkloadError::Create(format!("RuntimeClass {class:?} not found")))?;
        Ok(rc.handler)
    }

    fn reporter(&self, pod: &Pod) -> Report {
        let api = self.clone();
        let key = PodKey::of(pod);
        let containers: Arc<Vec<(String, String)>> = Arc::new(
            pod.spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect(),
        );
        Arc::new(move |note| {
            let (api, key, containers) = (api.clone(), key.clone(), containers.clone());
            tokio::spawn(async move {
                match note {
                    Note::Event {
                        warning,
                        reason,
                        message,
                    } => api.event(&key, warning, reason, &message).await,
                    Note::Waiting { reason, message } => {
                        let statuses: Vec<Value> = containers.iter().map(|(name, image)| json!({
                            "name": name, "ready": false, "started": false, "restartCount": 0, "image": image, "imageID": "",
                            "state": {"waiting": {"reason": reason, "message": message}}})).collect();
                        let patch = json!({"status": {"containerStatuses": statuses}});
                        api.patch_status(&key, &patch).await;
                    }
                }
            });
        })
    }
}

/// Status writes off the pod loop: a few writers at once, one write per pod
/// at a time, in order per pod. A write that waits behind another for the
/// same pod merges into the one still queued (a JSON merge patch over a
/// merge patch; arrays are replaced whole, as merge patches replace them),
/// so a pod's statuses piling up cost one write.
pub(super) struct StatusQueue {
    tx: mpsc::UnboundedSender<(PodKey, Value)>,
}

impl StatusQueue {
    /// The queue and its drain, which ends once the queue is dropped and empty.
    pub(super) fn new<A: AgentApi>(
        api: Arc<A>,
        writers: usize,
    ) -> (Self, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (StatusQueue { tx }, drain(api, rx, writers.max(1)))
    }

    pub(super) fn write(&self, key: &PodKey, status: Value) {
        let _ = self.tx.send((key.clone(), status));
    }
}

async fn drain<A: AgentApi>(
    api: Arc<A>,
    mut rx: mpsc::UnboundedReceiver<(PodKey, Value)>,
    writers: usize,
) {
    // Queued writes by pod uid, in the order their pods first queued.
    let mut queued: HashMap<String, (PodKey, Value)> = HashMap::new();
    let mut order: VecDeque<String> = VecDeque::new();
    // Pods with a write in flight.
    let mut busy: HashSet<String> = HashSet::new();
    let mut flights = tokio::task::JoinSet::new();
    let mut open = true;
    while open || !queued.is_empty() || !flights.is_empty() {
        while flights.len() < writers
            && let Some(i) = order.iter().position(|uid| !busy.contains(uid))
        {
            let uid = order.remove(i).expect("position in range");
            let (key, status) = queued.remove(&uid).expect("queued with its uid");
            busy.insert(uid.clone());
            let api = api.clone();
            flights.spawn(async move {
                api.patch_status(&key, &status).await;
                uid
            });
        }
        tokio::select! {
            m = rx.recv(), if open => match m {
                Some((key, status)) => match queued.entry(key.uid.clone()) {
                    Entry::Occupied(mut e) => json_patch::merge(&mut e.get_mut().1, &status),
                    Entry::Vacant(e) => {
                        order.push_back(key.uid.clone());
                        e.insert((key, status));
                    }
                },
                None => open = false,
            },
            Some(done) = flights.join_next(), if !flights.is_empty() => {
                if let Ok(uid) = done {
                    busy.remove(&uid);
                }
            }
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::agent::fake::RecordingApi;

    fn key(name: &str) -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_pile_up_for_a_pod_merge_and_pods_write_side_by_side() {
        let api = Arc::new(RecordingApi {
            write_time: Duration::from_millis(10),
            ..Default::default()
        });
        let (queue, drain) = StatusQueue::new(api.clone(), 4);
        let drained = tokio::spawn(drain);
        queue.write(&key("a"), json!({"status": {"phase": "Pending"}}));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // While a's first write is in flight, two more queue and merge.
        queue.write(
            &key("a"),
            json!({"status": {"phase": "Running", "podIP": "127.0.0.2"}}),
        );
        queue.write(
            &key("a"),
            json!({"status": {"conditions": [{"type": "Ready"}]}}),
        );
        for i in 0..8 {
            queue.write(
                &key(&format!("p{i}")),
                json!({"status": {"phase": "Running"}}),
            );
        }
        let started = tokio::time::Instant::now();
        drop(queue);
        drained.await.unwrap();
        let a = api.statuses("a");
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[0]["status"]["phase"], "Pending");
        assert_eq!(
            a[1],
            json!({"status": {"phase": "Running", "podIP": "127.0.0.2", "conditions": [{"type": "Ready"}]}})
        );
        for i in 0..8 {
            assert_eq!(api.statuses(&format!("p{i}")).len(), 1);
        }
        // Ten writes of 10 ms, four at a time: 30 ms, not 100.
        assert!(
            started.elapsed() <= Duration::from_millis(40),
            "{:?}",
            started.elapsed()
        );
    }
}
