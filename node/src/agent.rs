//! The node agent (kubelet's role): registers its Node, heartbeats with a
//! Lease, and runs the pods bound to it through the workload runtime.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch as signal};
use weft_api::k8s_openapi::api::coordination::v1::Lease;
use weft_api::k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use weft_api::k8s_openapi::api::node::v1::RuntimeClass;
use weft_wasm_host::{Host, HostConfig};

use crate::artifacts::ArtifactStore;
use crate::env;
use crate::runtime::{Exited, PodEnv, RunningPod, Started, WasmRuntime, Workload, WorkloadError};
use weft_wasm_host::Exit;

/// The label nodes carry when their agent runs Wasm pods: the scheduler's
/// runtime fit sends pods of RuntimeClass `wasm` (handler `wasmtime`) here.
pub const WASM_LABEL: &str = "runtime.weft.dev/wasmtime";
const FIELD_MANAGER: &str = "weft-node";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("api: {0}")]
    Kube(#[from] kube::Error),
    #[error("wasm host: {0}")]
    Host(#[from] weft_wasm_host::HostError),
    #[error("artifacts: {0}")]
    Artifacts(#[from] crate::artifacts::PullError),
    #[error("invalid pod CIDR {0:?}: want an IPv4 a.b.c.d/len")]
    PodCidr(String),
    #[error("API client configuration: {0}")]
    Client(String),
}

/// A kube client for an API server, a bearer token and (for HTTPS) the cluster CA in PEM.
pub fn client(
    server: &str,
    token: &str,
    ca_pem: Option<&[u8]>,
) -> Result<kube::Client, AgentError> {
    use rustls_pki_types::pem::PemObject;
    let url = server
        .parse()
        .map_err(|e| AgentError::Client(format!("server URL {server:?}: {e}")))?;
    let mut config = kube::Config::new(url);
    config.auth_info.token = Some(token.to_string().into());
    if let Some(pem) = ca_pem {
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AgentError::Client(format!("cluster CA: {e}")))?;
        config.root_cert = Some(certs);
    }
    Ok(kube::Client::try_from(config)?)
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Pod IPs come from here. Loopback by default, so pods need no privileges.
    pub pod_cidr: String,
    pub heartbeat: Duration,
    /// Wait before retrying a pod that failed to start (ImagePullBackOff).
    pub retry_after: Duration,
}

impl AgentConfig {
    pub fn new(name: String, data_dir: PathBuf) -> Self {
        AgentConfig {
            name,
            data_dir,
            pod_cidr: "127.10.0.0/16".into(),
            heartbeat: Duration::from_secs(10),
            retry_after: Duration::from_secs(10),
        }
    }
}

/// Hands out pod IPs from the node's range.
pub struct IpPool {
    base: u32,
    size: u32,
    used: HashSet<u32>,
}

impl IpPool {
    pub fn parse(cidr: &str) -> Option<IpPool> {
        let (ip, len) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|l| (8..=30).contains(l))?;
        let mask = u32::MAX << (32 - len);
        Some(IpPool {
            base: u32::from(ip) & mask,
            size: 1 << (32 - len),
            used: HashSet::new(),
        })
    }

    /// `want` if it is free and in range (a pod keeping its IP across agent restarts), else the next free one.
    pub fn take(&mut self, want: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(w) = want.map(u32::from)
            && w > self.base + 1
            && w < self.base + self.size - 1
            && self.used.insert(w)
        {
            return Some(Ipv4Addr::from(w));
        }
        // .0 is the network and .1 the node itself.
        let free = (2..self.size - 1)
            .map(|o| self.base + o)
            .find(|a| !self.used.contains(a))?;
        self.used.insert(free);
        Some(Ipv4Addr::from(free))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

async fn register(client: &kube::Client, cfg: &AgentConfig) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.name, "labels": {
            "kubernetes.io/hostname": cfg.name, "kubernetes.io/os": std::env::consts::OS,
            "kubernetes.io/arch": weft_api::go_arch(),
            WASM_LABEL: "true"}},
        "spec": {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]}});
    nodes
        .patch(
            &cfg.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await?;
    post_node_status(client, cfg).await?;
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    if classes.get_opt("wasm").await?.is_none() {
        let rc: RuntimeClass = serde_json::from_value(json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "wasm"}, "handler": "wasmtime"}))
            .expect("static RuntimeClass");
        match classes.create(&Default::default(), &rc).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn node_status(cfg: &AgentConfig) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ts = now();
    let cond = |ty: &str, status: &str, reason: &str, msg: &str| json!({"type": ty, "status": status, "reason": reason, "message": msg, "lastHeartbeatTime": ts, "lastTransitionTime": ts});
    json!({"status": {
        "capacity": {"cpu": cpus.to_string(), "memory": "24Gi", "pods": "10000"},
        "allocatable": {"cpu": cpus.to_string(), "memory": "24Gi", "pods": "10000"},
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "weft node agent has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "weft node agent has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "weft node agent has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "weft node agent is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": cfg.name}],
        "nodeInfo": {"kubeletVersion": "v1.32.0-weft", "kubeProxyVersion": "", "osImage": "weft", "kernelVersion": "",
                     "containerRuntimeVersion": "wasmtime://48.0.8", "operatingSystem": std::env::consts::OS,
                     "architecture": weft_api::go_arch(),
                     "machineID": "", "systemUUID": "", "bootID": ""}}})
}

async fn heartbeat(client: &kube::Client, cfg: &AgentConfig) -> Result<(), AgentError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": cfg.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": 40, "renewTime": now_micro()}});
    leases
        .patch(
            &cfg.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await?;
    post_node_status(client, cfg).await
}

/// Capacity, conditions (Ready with a fresh heartbeat time), addresses, node info.
async fn post_node_status(client: &kube::Client, cfg: &AgentConfig) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(&node_status(cfg)),
        )
        .await?;
    Ok(())
}

/// A running agent; `shutdown` stops its pods (leaving them in the API, to be
/// resumed by the next start) and its loops.
pub struct AgentHandle {
    stop: signal::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AgentHandle {
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            tracing::warn!("node agent did not stop within {deadline:?}");
        }
    }
}

pub async fn start(client: kube::Client, cfg: AgentConfig) -> Result<AgentHandle, AgentError> {
    let pool =
        IpPool::parse(&cfg.pod_cidr).ok_or_else(|| AgentError::PodCidr(cfg.pod_cidr.clone()))?;
    let host = Arc::new(Host::new(HostConfig::new(cfg.data_dir.join("cwasm")))?);
    let artifacts = Arc::new(ArtifactStore::new(cfg.data_dir.join("artifacts"))?);
    register(&client, &cfg).await?;
    let (stop, stopped) = signal::channel(false);
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let logs = cfg.data_dir.join("logs");
    let agent = PodLoop {
        client,
        cfg,
        runtime: WasmRuntime::new(host, artifacts, logs, exits_tx),
        pool,
        running: HashMap::new(),
        backoff: HashMap::new(),
        restarts: HashMap::new(),
        finished: HashSet::new(),
    };
    let task = tokio::spawn(agent.run(stopped, exits));
    Ok(AgentHandle { stop, task })
}

/// A pod due for another start attempt.
struct Retry {
    namespace: String,
    name: String,
    uid: String,
}

struct Active {
    ip: Ipv4Addr,
    run: RunningPod,
    pod: Pod,
    started_at: String,
    /// Command containers that have finished, with how.
    exited: HashMap<String, Exit>,
}

struct PodLoop<W: Workload> {
    client: kube::Client,
    cfg: AgentConfig,
    runtime: W,
    pool: IpPool,
    /// By pod uid.
    running: HashMap<String, Active>,
    /// Pods that failed to start, by uid: how many times. They wait for their
    /// retry rather than restarting on every watch event (their own status
    /// updates included).
    backoff: HashMap<String, u32>,
    /// Restarts per pod uid (containers that exited under restartPolicy OnFailure/Always).
    restarts: HashMap<String, u32>,
    /// Pods that ran to completion; stale events must not start them again.
    finished: HashSet<String>,
}

/// Sends `key` back to the pod loop after `delay`.
fn retry_later(retry: &mpsc::UnboundedSender<Retry>, key: Retry, delay: Duration) {
    let tx = retry.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = tx.send(key);
    });
}

/// The longest wait between start attempts, as kubelet's image pull backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `base` doubled per earlier failure, capped at [`MAX_BACKOFF`].
fn backoff_delay(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.min(16)).min(MAX_BACKOFF)
}

impl<W: Workload> PodLoop<W> {
    async fn run(
        mut self,
        mut stop: signal::Receiver<bool>,
        mut exits: mpsc::UnboundedReceiver<Exited>,
    ) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.name));
        let mut events = watcher::watcher(pods, wc).boxed();
        let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Retry>();
        let mut beat = tokio::time::interval(self.cfg.heartbeat);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = beat.tick() => {
                    if let Err(e) = heartbeat(&self.client, &self.cfg).await {
                        tracing::warn!("heartbeat: {e}");
                    }
                }
                Some(e) = exits.recv() => self.exited(e, &retry_tx).await,
                Some(r) = retry_rx.recv() => {
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &r.namespace);
                    if let Ok(Some(pod)) = api.get_opt(&r.name).await
                        && pod.metadata.uid.as_deref() == Some(r.uid.as_str())
                    {
                        self.sync(pod, &retry_tx, true).await;
                    }
                }
                ev = events.next() => match ev {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => self.sync(pod, &retry_tx, false).await,
                    Some(Ok(watcher::Event::Delete(pod))) => self.stop_pod(&pod).await,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("pod watch: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    None => break,
                }
            }
        }
        for (_, a) in self.running.drain() {
            a.run.stop().await;
        }
    }

    async fn stop_pod(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.backoff.remove(&uid);
        self.restarts.remove(&uid);
        self.finished.remove(&uid);
        if let Some(a) = self.running.remove(&uid) {
            a.run.stop().await;
            self.pool.release(a.ip);
        }
    }

    /// A command container finished. When all of a pod's commands have,
    /// the pod completes (Succeeded/Failed) or restarts after a backoff, by
    /// its restartPolicy, as kubelet does.
    async fn exited(&mut self, e: Exited, retry: &mpsc::UnboundedSender<Retry>) {
        let Some(active) = self.running.get_mut(&e.pod_uid) else {
            return;
        };
        active.exited.insert(e.container, e.exit);
        let commands: Vec<&Started> = active.run.containers.iter().filter(|c| c.command).collect();
        if active.exited.len() < commands.len() || commands.len() < active.run.containers.len() {
            // Servers keep the pod running; only all-command pods complete.
            return;
        }
        let Some(active) = self.running.remove(&e.pod_uid) else {
            return;
        };
        let containers = active.run.containers.clone();
        active.run.stop().await;
        self.pool.release(active.ip);
        let pod = active.pod;
        let uid = e.pod_uid;
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let all_ok = active.exited.values().all(|x| *x == Exit::Code(0));
        let restarts = self.restarts.get(&uid).copied().unwrap_or(0);
        let finished = now();
        let terminated = |c: &Started| {
            let (code, reason, message) = match active.exited.get(&c.name) {
                Some(Exit::Code(0)) => (0, "Completed", String::new()),
                Some(Exit::Code(n)) => (*n, "Error", String::new()),
                Some(Exit::OutOfMemory(m)) => (137, "OOMKilled", m.clone()),
                Some(Exit::Trap(m)) => (1, "Error", m.clone()),
                None => (0, "Completed", String::new()),
            };
            json!({"exitCode": code, "reason": reason, "message": message, "startedAt": active.started_at,
                   "finishedAt": finished, "containerID": format!("wasm://{uid}/{}", c.name)})
        };
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => !all_ok,
            _ => true,
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let status = if restart {
            let delay = backoff_delay(self.cfg.retry_after, restarts);
            self.restarts.insert(uid.clone(), restarts + 1);
            self.backoff.insert(uid.clone(), restarts + 1);
            retry_later(
                retry,
                Retry {
                    namespace: ns.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                },
                delay,
            );
            let statuses: Vec<Value> = containers.iter().map(|c| json!({
                "name": c.name, "ready": false, "started": false, "restartCount": restarts + 1, "image": c.image, "imageID": c.image_id,
                "lastState": {"terminated": terminated(c)},
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {delay:?} restarting failed container={} pod={name}", c.name)}}})).collect();
            json!({"status": {"phase": "Running", "containerStatuses": statuses}})
        } else {
            self.restarts.remove(&uid);
            self.finished.insert(uid.clone());
            let statuses: Vec<Value> = containers.iter().map(|c| json!({
                "name": c.name, "ready": false, "started": false, "restartCount": restarts, "image": c.image, "imageID": c.image_id,
                "state": {"terminated": terminated(c)}})).collect();
            let cond = |ty: &str, st: &str| json!({"type": ty, "status": st, "reason": "PodCompleted", "lastTransitionTime": finished});
            json!({"status": {"phase": if all_ok { "Succeeded" } else { "Failed" }, "containerStatuses": statuses,
                "conditions": [cond("PodScheduled", "True"), cond("Initialized", "True"), cond("ContainersReady", "False"), cond("Ready", "False")]}})
        };
        if let Err(err) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            tracing::warn!(pod = %name, "status update: {err}");
        }
    }

    /// Each container's environment, with the ConfigMaps and Secrets it names.
    async fn pod_env(&self, pod: &Pod) -> Result<PodEnv, WorkloadError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let api_err = |e: kube::Error| WorkloadError::Config(e.to_string());
        let mut fetched = env::Fetched::default();
        for c in &containers {
            let (cms, secrets) = env::references(c);
            for name in cms {
                if !fetched.config_maps.contains_key(&name)
                    && let Some(cm) = Api::<ConfigMap>::namespaced(self.client.clone(), &ns)
                        .get_opt(&name)
                        .await
                        .map_err(api_err)?
                {
                    fetched.config_maps.insert(name, cm);
                }
            }
            for name in secrets {
                if !fetched.secrets.contains_key(&name)
                    && let Some(s) = Api::<Secret>::namespaced(self.client.clone(), &ns)
                        .get_opt(&name)
                        .await
                        .map_err(api_err)?
                {
                    fetched.secrets.insert(name, s);
                }
            }
        }
        containers
            .iter()
            .map(|c| {
                Ok((
                    c.name.clone(),
                    env::resolve(pod, c, &fetched).map_err(|e| WorkloadError::Config(e.0))?,
                ))
            })
            .collect()
    }

    /// Brings the pod's workload to what its object says. A pod in backoff
    /// starts again only when its retry comes (`retrying`).
    async fn sync(&mut self, pod: Pod, retry: &mpsc::UnboundedSender<Retry>, retrying: bool) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            // Graceful termination: stop serving, then let the API server remove it.
            self.stop_pod(&pod).await;
            match api
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => tracing::warn!(pod = %name, "finishing deletion: {e}"),
            }
            return;
        }
        if self.running.contains_key(&uid)
            || self.finished.contains(&uid)
            || (!retrying && self.backoff.contains_key(&uid))
        {
            return;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if matches!(phase.as_str(), "Succeeded" | "Failed") {
            return;
        }
        let want = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let Some(ip) = self.pool.take(want) else {
            tracing::error!(pod = %name, "pod IP range {} is exhausted", self.cfg.pod_cidr);
            return;
        };
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let started = match self.pod_env(&pod).await {
            Ok(env) => self.runtime.start(&pod, ip, &env).await,
            Err(e) => Err(e),
        };
        let restarts = self.restarts.get(&uid).copied().unwrap_or(0);
        let status = match started {
            Ok(run) => {
                let statuses: Vec<Value> = run.containers.iter().map(|c| json!({
                    "name": c.name, "ready": true, "started": true, "restartCount": restarts, "image": c.image, "imageID": c.image_id,
                    "containerID": format!("wasm://{uid}/{}", c.name), "state": {"running": {"startedAt": now()}}})).collect();
                self.running.insert(
                    uid.clone(),
                    Active {
                        ip,
                        run,
                        pod: pod.clone(),
                        started_at: now(),
                        exited: HashMap::new(),
                    },
                );
                self.backoff.remove(&uid);
                let ts = now();
                let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": ts});
                json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}], "hostIP": "127.0.0.1",
                    "hostIPs": [{"ip": "127.0.0.1"}], "startTime": ts,
                    "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
                    "containerStatuses": statuses}})
            }
            Err(e) => {
                self.pool.release(ip);
                tracing::warn!(pod = %name, "start failed: {e}");
                let statuses: Vec<Value> = containers.iter().map(|c| json!({
                    "name": c.name, "ready": false, "started": false, "restartCount": 0, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                    "state": {"waiting": {"reason": e.reason(), "message": e.to_string()}}})).collect();
                let failures = self.backoff.entry(uid.clone()).or_insert(0);
                let delay = backoff_delay(self.cfg.retry_after, *failures);
                *failures += 1;
                retry_later(
                    retry,
                    Retry {
                        namespace: ns.clone(),
                        name: name.clone(),
                        uid: uid.clone(),
                    },
                    delay,
                );
                json!({"status": {"phase": "Pending", "containerStatuses": statuses}})
            }
        };
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            tracing::warn!(pod = %name, "status update: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff_delay(base, 0), base);
        assert_eq!(backoff_delay(base, 1), Duration::from_secs(20));
        assert_eq!(backoff_delay(base, 4), Duration::from_secs(160));
        assert_eq!(backoff_delay(base, 5), MAX_BACKOFF);
        assert_eq!(backoff_delay(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn ip_pool_allocates_reuses_and_releases() {
        let mut p = IpPool::parse("127.10.0.0/29").unwrap();
        let a = p.take(None).unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 10, 0, 2));
        assert_eq!(
            p.take(Some(Ipv4Addr::new(127, 10, 0, 5))).unwrap(),
            Ipv4Addr::new(127, 10, 0, 5),
            "a restarted pod keeps its IP"
        );
        assert_eq!(
            p.take(Some(a)).unwrap(),
            Ipv4Addr::new(127, 10, 0, 3),
            "a taken IP is not handed out twice"
        );
        assert_eq!(p.take(None).unwrap(), Ipv4Addr::new(127, 10, 0, 4));
        assert_eq!(p.take(None).unwrap(), Ipv4Addr::new(127, 10, 0, 6));
        assert_eq!(p.take(None), None, "/29 holds .2 to .6");
        p.release(a);
        assert_eq!(p.take(None), Some(a));
        assert!(IpPool::parse("10.0.0.0/33").is_none());
        assert!(IpPool::parse("nonsense").is_none());
    }
}
