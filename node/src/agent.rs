//! The node agent (kubelet's role): registers its Node, heartbeats with a
//! Lease, and runs the pods bound to it through the workload runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch as signal};
use weft_api::k8s_openapi::api::coordination::v1::Lease;
use weft_api::k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerStatus, Event, Node, Pod, Secret,
};
use weft_api::k8s_openapi::api::node::v1::RuntimeClass;
use weft_wasm_host::{Host, HostConfig};

use crate::artifacts::ArtifactStore;
use crate::containerd::{ContainerdConfig, ContainerdRuntime};
use crate::logs::{self, Live};
use crate::proxy::{LocalHandlers, Proxy};
use crate::runtime::{
    CONTAINERD_HANDLER, Exited, Note, PodEnv, Report, RunningContainer, Runtimes, StartSpec,
    Started, WASM_HANDLER, WasmRuntime, Workload, WorkloadError, container,
};
use crate::server::{self, ServerState};
use crate::volumes::{self, Volume};
use crate::{env, probes, static_pods};
use weft_wasm_host::Exit;

/// The label nodes carry when their agent runs Wasm pods: the scheduler's
/// runtime fit sends pods of RuntimeClass `wasm` (handler `wasmtime`) here.
pub const WASM_LABEL: &str = "runtime.weft.dev/wasmtime";
/// The label of nodes whose agent also runs container pods (RuntimeClass
/// `containerd`, and pods without a RuntimeClass).
pub const CONTAINERD_LABEL: &str = "runtime.weft.dev/containerd";
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
    #[error("the agent endpoint on {addr}: {source}")]
    Endpoint {
        addr: SocketAddr,
        source: std::io::Error,
    },
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
    /// The agent's endpoint (logs for `kubectl logs`); port 0 picks one.
    pub listen: SocketAddr,
    /// The bearer token the endpoint requires: the one the agent itself uses.
    pub token: String,
    /// Container log files rotate at this size.
    pub log_max_size: u64,
    /// Static pod manifests (kubelet's `--pod-manifest-path`), checked every few seconds.
    pub pod_manifest_path: Option<PathBuf>,
    /// Container pods through containerd; without it (or when containerd
    /// does not answer) the node runs Wasm pods only.
    pub containerd: Option<ContainerdConfig>,
}

impl AgentConfig {
    pub fn new(name: String, data_dir: PathBuf) -> Self {
        AgentConfig {
            name,
            data_dir,
            pod_cidr: "127.10.0.0/16".into(),
            heartbeat: Duration::from_secs(10),
            retry_after: Duration::from_secs(10),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            token: String::new(),
            log_max_size: logs::DEFAULT_MAX_SIZE,
            pod_manifest_path: None,
            containerd: None,
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

fn ts(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `status.startTime`: when this node first started the pod.
fn start_time(pod: &Pod) -> Option<jiff::Timestamp> {
    let t = pod.status.as_ref()?.start_time.as_ref()?;
    jiff::Timestamp::from_second(t.0.timestamp()).ok()
}

fn now() -> String {
    ts(jiff::Timestamp::now())
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

async fn register(
    client: &kube::Client,
    cfg: &AgentConfig,
    containerd: Option<&str>,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": cfg.name, "kubernetes.io/os": std::env::consts::OS,
        "kubernetes.io/arch": weft_api::go_arch(),
        WASM_LABEL: "true"});
    if containerd.is_some() {
        labels[CONTAINERD_LABEL] = json!("true");
    }
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels},
        "spec": {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]}});
    nodes
        .patch(
            &cfg.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await?;
    post_node_status(client, cfg, containerd).await?;
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    for (name, handler) in [
        ("wasm", WASM_HANDLER),
        (CONTAINERD_HANDLER, CONTAINERD_HANDLER),
    ] {
        if classes.get_opt(name).await?.is_some() {
            continue;
        }
        let rc: RuntimeClass = serde_json::from_value(json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name}, "handler": handler}))
            .expect("static RuntimeClass");
        match classes.create(&Default::default(), &rc).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn node_status(cfg: &AgentConfig, containerd: Option<&str>) -> Value {
    let runtime = match containerd {
        Some(v) => format!("wasmtime://48.0.8,containerd://{v}"),
        None => "wasmtime://48.0.8".into(),
    };
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
        "addresses": [{"type": "InternalIP", "address": cfg.listen.ip().to_string()}, {"type": "Hostname", "address": cfg.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.listen.port()}},
        "nodeInfo": {"kubeletVersion": "v1.32.0-weft", "kubeProxyVersion": "", "osImage": "weft", "kernelVersion": "",
                     "containerRuntimeVersion": runtime, "operatingSystem": std::env::consts::OS,
                     "architecture": weft_api::go_arch(),
                     "machineID": "", "systemUUID": "", "bootID": ""}}})
}

async fn heartbeat(
    client: &kube::Client,
    cfg: &AgentConfig,
    containerd: Option<&str>,
) -> Result<(), AgentError> {
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
    post_node_status(client, cfg, containerd).await
}

/// Capacity, conditions (Ready with a fresh heartbeat time), addresses, node info.
async fn post_node_status(
    client: &kube::Client,
    cfg: &AgentConfig,
    containerd: Option<&str>,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(&node_status(cfg, containerd)),
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
    let endpoint_err = |source| AgentError::Endpoint {
        addr: cfg.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(endpoint_err)?;
    let endpoint = listener.local_addr().map_err(endpoint_err)?;
    let mut cfg = cfg;
    // Port 0 picked one: the Node advertises the real port.
    cfg.listen = endpoint;
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let live = Arc::new(Live::default());
    let containerd = match &cfg.containerd {
        Some(c) => match ContainerdRuntime::connect(
            c,
            cfg.name.clone(),
            &cfg.data_dir,
            live.clone(),
            cfg.log_max_size,
            exits_tx.clone(),
        )
        .await
        {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("{e}: this node runs Wasm pods only");
                None
            }
        },
        None => None,
    };
    let containerd_version = containerd.as_ref().map(|c| c.version.clone());
    register(&client, &cfg, containerd_version.as_deref()).await?;
    let (stop, stopped) = signal::channel(false);
    let logs = cfg.data_dir.join("logs");
    let local = Arc::new(LocalHandlers::default());
    let proxy = Proxy::new(local.clone());
    tokio::spawn(
        proxy
            .clone()
            .run(client.clone(), cfg.listen.ip(), stopped.clone()),
    );
    tokio::spawn(server::serve(
        listener,
        ServerState {
            logs: logs.clone(),
            live: live.clone(),
            token: cfg.token.clone(),
            proxy: proxy.clone(),
        },
        stopped.clone(),
    ));
    let (msgs_tx, msgs) = mpsc::unbounded_channel();
    let (probe_tx, probes) = mpsc::unbounded_channel();
    let agent = PodLoop {
        client,
        runtime: Runtimes {
            wasm: WasmRuntime::new(
                host,
                artifacts,
                live,
                cfg.log_max_size,
                exits_tx,
                local,
                proxy,
            ),
            containerd,
        },
        containerd_version,
        cfg,
        logs,
        pool,
        running: HashMap::new(),
        backoff: HashMap::new(),
        finished: HashSet::new(),
        terminating: HashSet::new(),
        msgs: msgs_tx,
        probe_tx,
    };
    let task = tokio::spawn(agent.run(stopped, exits, msgs, probes));
    Ok(AgentHandle { stop, task })
}

/// Identifies a pod for messages the loop sends itself.
#[derive(Debug, Clone)]
struct PodKey {
    namespace: String,
    name: String,
    uid: String,
}

impl PodKey {
    fn of(pod: &Pod) -> PodKey {
        PodKey {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

/// What the pod loop tells itself, later.
enum Msg {
    /// A pod is due for another start attempt.
    Retry(PodKey),
    /// A container of a running pod is due to start again.
    Restart(PodKey, String),
    /// A deleted pod's workload has stopped: release it and finish deletion.
    Terminated(PodKey, Ipv4Addr),
    /// `spec.activeDeadlineSeconds` passed.
    Deadline(PodKey),
}

/// How a container run ended.
#[derive(Debug, Clone)]
enum Ending {
    Exit(Exit),
    /// Killed by the agent (failed liveness or startup probe).
    Killed(String),
}

impl Ending {
    fn succeeded(&self) -> bool {
        matches!(self, Ending::Exit(Exit::Code(0)))
    }

    /// exitCode, reason and message, as kubelet reports them.
    fn terminated(&self) -> (i32, &'static str, String) {
        match self {
            Ending::Exit(Exit::Code(0)) => (0, "Completed", String::new()),
            Ending::Exit(Exit::Code(n)) => (*n, "Error", String::new()),
            Ending::Exit(Exit::OutOfMemory(m)) => (137, "OOMKilled", m.clone()),
            Ending::Exit(Exit::Trap(m)) => (1, "Error", m.clone()),
            Ending::Killed(m) => (137, "Error", m.clone()),
        }
    }
}

/// Where a container of a running pod is.
enum State {
    Running,
    /// Waiting to start again (`{"reason", "message"}`).
    Waiting(Value),
    /// Ended for good, by the restart policy (`state.terminated`).
    Terminated(Value),
}

/// One container of a running pod: each runs, ends and restarts on its own.
struct Slot {
    name: String,
    image: String,
    /// The current run; `None` while waiting or terminated.
    run: Option<RunningContainer>,
    /// What the latest run started as (imageID, containerID), kept for the status.
    started: Option<Started>,
    state: State,
    started_at: String,
    /// When the current run started: a long run resets the backoff.
    since: Instant,
    restarts: u32,
    /// Failures since the last long run: the backoff's exponent.
    crashes: u32,
    /// The previous run's termination (`lastState.terminated`).
    last: Option<Value>,
    /// Readiness of the current run (true without a readiness or startup probe).
    ready: bool,
    /// The current run's probe loop; dropped with it.
    _probes: tokio::task::JoinSet<()>,
}

impl Slot {
    fn done(&self) -> bool {
        matches!(self.state, State::Terminated(_))
    }
}

struct Active {
    key: PodKey,
    ip: Ipv4Addr,
    pod: Pod,
    started_at: String,
    /// The pod's volumes, set up once at its start: a container's restart
    /// must not rewrite what its running neighbours have mounted.
    volumes: BTreeMap<String, Volume>,
    /// In the order of `spec.containers`.
    slots: Vec<Slot>,
}

impl Active {
    fn slot(&mut self, name: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.name == name)
    }

    /// Takes every container's current run, to stop or detach them.
    fn take_runs(&mut self) -> Vec<RunningContainer> {
        self.slots.iter_mut().filter_map(|s| s.run.take()).collect()
    }
}

/// Stops containers together, each given `grace`.
async fn stop_all(runs: Vec<RunningContainer>, grace: Duration) {
    futures::future::join_all(runs.into_iter().map(|r| r.stop(grace))).await;
}

/// A container that ran this long has its backoff reset (kubelet: 2 × the cap).
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// Whether a container that ended this way starts again, by the pod's restartPolicy.
fn restarts(pod: &Pod, ending: &Ending) -> bool {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => false,
        Some("OnFailure") => !ending.succeeded(),
        _ => true,
    }
}

/// Readiness before any probe answers: gated by a readiness or startup probe.
fn ready_at_start(c: &Container) -> bool {
    c.readiness_probe.is_none() && c.startup_probe.is_none()
}

struct PodLoop<W: Workload> {
    client: kube::Client,
    cfg: AgentConfig,
    runtime: W,
    containerd_version: Option<String>,
    logs: PathBuf,
    pool: IpPool,
    /// By pod uid.
    running: HashMap<String, Active>,
    /// Pods that failed to start, by uid: how many times. They wait for their
    /// retry rather than restarting on every watch event (their own status
    /// updates included).
    backoff: HashMap<String, u32>,
    /// Pods that ran to completion; stale events must not start them again.
    finished: HashSet<String>,
    /// Deleted pods still draining.
    terminating: HashSet<String>,
    msgs: mpsc::UnboundedSender<Msg>,
    probe_tx: mpsc::UnboundedSender<probes::Transition>,
}

/// Sends `msg` back to the pod loop after `delay`.
fn later(tx: &mpsc::UnboundedSender<Msg>, msg: Msg, delay: Duration) {
    let tx = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = tx.send(msg);
    });
}

/// How often the static pod manifests are read (kubelet: 20 s).
const STATIC_POD_CHECK: Duration = Duration::from_secs(2);

/// The longest wait between start attempts, as kubelet's image pull backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `base` doubled per earlier failure, capped at [`MAX_BACKOFF`].
fn backoff_delay(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.min(16)).min(MAX_BACKOFF)
}

/// The pod's termination grace period (the deletion's, if it set one).
fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0) as u64;
    Duration::from_secs(secs)
}

/// How long a deleted pod keeps serving: its preStop `sleep`, within the grace period.
fn drain_time(pod: &Pod) -> Duration {
    let spec = pod.spec.as_ref();
    let grace = grace_period(pod).as_secs();
    let sleep = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.lifecycle.as_ref()?.pre_stop.as_ref()?.sleep.as_ref())
        .map(|s| s.seconds.max(0) as u64)
        .max()
        .unwrap_or(0);
    Duration::from_secs(sleep.min(grace))
}

/// Records a core/v1 Event about a pod, as kubelet does.
async fn post_event(
    client: &kube::Client,
    node: &str,
    key: &PodKey,
    warning: bool,
    reason: &str,
    message: &str,
) {
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
    let events: Api<Event> = Api::namespaced(client.clone(), &key.namespace);
    if let Err(e) = events.create(&Default::default(), &ev).await {
        tracing::debug!("event {reason}: {e}");
    }
}

/// The probe loop of run `run` of container `c`.
fn spawn_probes(
    uid: &str,
    run: u32,
    c: &Container,
    ip: Ipv4Addr,
    container: &RunningContainer,
    tx: mpsc::UnboundedSender<probes::Transition>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(probes::run(
        uid.to_string(),
        run,
        c.clone(),
        ip,
        container.probe.clone(),
        tx,
    ));
    set
}

/// A container's entry in `status.containerStatuses`.
fn container_status(s: &Slot) -> Value {
    let running = matches!(s.state, State::Running);
    let state = match &s.state {
        State::Running => json!({"running": {"startedAt": s.started_at}}),
        State::Waiting(w) => json!({"waiting": w}),
        State::Terminated(t) => json!({"terminated": t}),
    };
    let mut v = json!({"name": s.name, "ready": running && s.ready, "started": running,
        "restartCount": s.restarts, "image": s.image, "state": state,
        "imageID": s.started.as_ref().map(|st| st.image_id.as_str()).unwrap_or_default()});
    if let Some(st) = &s.started {
        v["containerID"] = json!(st.id);
    }
    if let Some(t) = &s.last {
        v["lastState"] = json!({"terminated": t});
    }
    v
}

fn cond(ty: &str, status: bool, ts: &str) -> Value {
    json!({"type": ty, "status": if status { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": ts})
}

impl<W: Workload> PodLoop<W> {
    async fn run(
        mut self,
        mut stop: signal::Receiver<bool>,
        mut exits: mpsc::UnboundedReceiver<Exited>,
        mut msgs: mpsc::UnboundedReceiver<Msg>,
        mut probes: mpsc::UnboundedReceiver<probes::Transition>,
    ) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.name));
        let mut events = watcher::watcher(pods, wc).boxed();
        let mut beat = tokio::time::interval(self.cfg.heartbeat);
        let mut static_check = tokio::time::interval(STATIC_POD_CHECK);
        // The pods of the watch's first listing: what an agent restart keeps.
        let mut listed: Option<HashSet<String>> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = static_check.tick(), if self.cfg.pod_manifest_path.is_some() => self.sync_static_pods().await,
                _ = beat.tick() => {
                    if let Err(e) = heartbeat(&self.client, &self.cfg, self.containerd_version.as_deref()).await {
                        tracing::warn!("heartbeat: {e}");
                    }
                }
                Some(e) = exits.recv() => {
                    self.ended(&e.pod_uid, &e.container, e.run, Ending::Exit(e.exit)).await;
                }
                Some(t) = probes.recv() => self.probed(t).await,
                Some(m) = msgs.recv() => self.message(m).await,
                ev = events.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitDone)) => {
                        if let Some(keep) = listed.take() {
                            self.runtime.collect_garbage(&keep).await;
                        }
                    }
                    Some(Ok(watcher::Event::InitApply(pod))) => {
                        if let (Some(l), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                            l.insert(uid);
                        }
                        self.sync(pod, false).await
                    }
                    Some(Ok(watcher::Event::Apply(pod))) => self.sync(pod, false).await,
                    Some(Ok(watcher::Event::Delete(pod))) => self.forget(&pod).await,
                    Some(Err(e)) => {
                        tracing::warn!("pod watch: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    None => break,
                }
            }
        }
        // Wasm pods end with the agent; containers keep running, to be adopted.
        for (_, mut a) in self.running.drain() {
            futures::future::join_all(a.take_runs().into_iter().map(RunningContainer::detach))
                .await;
        }
    }

    /// Keeps one mirror pod per static pod manifest (see `static_pods`).
    async fn sync_static_pods(&self) {
        let Some(dir) = &self.cfg.pod_manifest_path else {
            return;
        };
        let mut desired = Vec::new();
        for (file, manifest) in static_pods::read_dir(dir) {
            match manifest.and_then(|m| static_pods::mirror(&m, &self.cfg.name)) {
                Ok(p) => desired.push(p),
                Err(e) => tracing::warn!(file, "static pod manifest: {e}"),
            }
        }
        let all: Api<Pod> = Api::all(self.client.clone());
        let lp =
            kube::api::ListParams::default().fields(&format!("spec.nodeName={}", self.cfg.name));
        let existing: Vec<Pod> = match all.list(&lp).await {
            Ok(l) => l
                .items
                .into_iter()
                .filter(|p| {
                    p.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(static_pods::MIRROR_ANNOTATION))
                })
                .collect(),
            Err(e) => {
                tracing::warn!("listing mirror pods: {e}");
                return;
            }
        };
        let plan = static_pods::plan(&desired, &existing);
        for (ns, name) in plan.delete {
            if let Err(e) = self.api(&ns).delete(&name, &DeleteParams::default()).await {
                tracing::warn!(pod = %name, "deleting a stale mirror pod: {e}");
            }
        }
        for pod in plan.create {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            match self.api(&ns).create(&Default::default(), &pod).await {
                Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
                Err(e) => tracing::warn!(pod = ?pod.metadata.name, "creating a mirror pod: {e}"),
            }
        }
    }

    fn api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn patch_status(&self, key: &PodKey, status: &Value) {
        if let Err(e) = self
            .api(&key.namespace)
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            tracing::warn!(pod = %key.name, "status update: {e}");
        }
    }

    /// Records a core/v1 Event about a pod, as kubelet does.
    async fn event(&self, key: &PodKey, warning: bool, reason: &str, message: &str) {
        post_event(&self.client, &self.cfg.name, key, warning, reason, message).await;
    }

    /// What a runtime reports while it starts `pod`: events, and the
    /// containers' waiting state (image pull progress) in the pod's status.
    fn reporter(&self, pod: &Pod) -> Report {
        let client = self.client.clone();
        let node = self.cfg.name.clone();
        let key = PodKey::of(pod);
        let containers: Vec<(String, String)> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect();
        Arc::new(move |note| {
            let (client, node, key, containers) = (
                client.clone(),
                node.clone(),
                key.clone(),
                containers.clone(),
            );
            tokio::spawn(async move {
                match note {
                    Note::Event {
                        warning,
                        reason,
                        message,
                    } => post_event(&client, &node, &key, warning, reason, &message).await,
                    Note::Waiting { reason, message } => {
                        let statuses: Vec<Value> = containers.iter().map(|(name, image)| json!({
                            "name": name, "ready": false, "started": false, "restartCount": 0, "image": image, "imageID": "",
                            "state": {"waiting": {"reason": reason, "message": message}}})).collect();
                        let api: Api<Pod> = Api::namespaced(client, &key.namespace);
                        let patch = json!({"status": {"containerStatuses": statuses}});
                        let _ = api
                            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await;
                    }
                }
            });
        })
    }

    async fn message(&mut self, m: Msg) {
        match m {
            Msg::Retry(k) => {
                if let Ok(Some(pod)) = self.api(&k.namespace).get_opt(&k.name).await
                    && pod.metadata.uid.as_deref() == Some(k.uid.as_str())
                {
                    self.sync(pod, true).await;
                }
            }
            Msg::Restart(k, name) => self.restart(&k, &name).await,
            Msg::Terminated(k, ip) => {
                self.pool.release(ip);
                self.terminating.remove(&k.uid);
                self.runtime.release(&k.uid).await;
                self.finish_deletion(&k).await;
            }
            Msg::Deadline(k) => {
                if self.finished.contains(&k.uid) {
                    return;
                }
                let active = self.running.remove(&k.uid);
                if active.is_none() && !self.backoff.contains_key(&k.uid) {
                    return;
                }
                if let Some(mut a) = active {
                    self.pool.release(a.ip);
                    stop_all(a.take_runs(), grace_period(&a.pod)).await;
                }
                self.runtime.release(&k.uid).await;
                self.backoff.remove(&k.uid);
                self.finished.insert(k.uid.clone());
                let msg = "Pod was active on the node longer than the specified deadline";
                self.event(&k, true, "DeadlineExceeded", msg).await;
                let ts = now();
                self.patch_status(&k, &json!({"status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": msg,
                    "conditions": [cond("Ready", false, &ts), cond("ContainersReady", false, &ts)]}})).await;
            }
        }
    }

    /// The pod object is gone: stop anything left and drop its logs.
    async fn forget(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.backoff.remove(&uid);
        self.finished.remove(&uid);
        if let Some(mut a) = self.running.remove(&uid) {
            self.pool.release(a.ip);
            stop_all(a.take_runs(), Duration::ZERO).await;
        }
        self.runtime.release(&uid).await;
        let k = PodKey::of(pod);
        let _ = std::fs::remove_dir_all(logs::pod_dir(&self.logs, &k.namespace, &k.name, &k.uid));
        let _ = std::fs::remove_dir_all(self.volume_dir(&k));
    }

    fn volume_dir(&self, k: &PodKey) -> PathBuf {
        self.cfg.data_dir.join("pods").join(&k.uid).join("volumes")
    }

    /// Graceful deletion is done on this node: let the API server remove the object.
    async fn finish_deletion(&self, k: &PodKey) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(k.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api(&k.namespace).delete(&k.name, &dp).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => tracing::warn!(pod = %k.name, "finishing deletion: {e}"),
        }
    }

    /// Run `run` of a container ended. It starts again after a backoff, or
    /// stays terminated, by the pod's restartPolicy, while the pod's other
    /// containers carry on (kubelet). When every container is terminated
    /// for good, the pod completes: Succeeded if all exited 0, else Failed.
    async fn ended(&mut self, uid: &str, name: &str, run: u32, ending: Ending) {
        let Some(a) = self.running.get_mut(uid) else {
            return;
        };
        let (key, grace) = (a.key.clone(), grace_period(&a.pod));
        let restart = restarts(&a.pod, &ending);
        let Some(slot) = a.slot(name).filter(|s| s.restarts == run) else {
            return;
        };
        // A stale report about a run that has already been stopped.
        let Some(stopping) = slot.run.take() else {
            return;
        };
        slot._probes = tokio::task::JoinSet::new();
        slot.ready = false;
        let (code, reason, message) = ending.terminated();
        let terminated = json!({"exitCode": code, "reason": reason, "message": message,
            "startedAt": slot.started_at, "finishedAt": now(), "containerID": stopping.started.id});
        if restart {
            if slot.since.elapsed() >= BACKOFF_RESET {
                slot.crashes = 0;
            }
            let delay = backoff_delay(self.cfg.retry_after, slot.crashes);
            slot.crashes += 1;
            slot.restarts += 1;
            slot.last = Some(terminated);
            slot.state = State::Waiting(json!({"reason": "CrashLoopBackOff",
                "message": format!("back-off {delay:?} restarting failed container={name} pod={}", key.name)}));
            // In the background: a container given a grace period must not
            // hold up the node's other pods. It starts again once stopped.
            let (tx, k, name) = (self.msgs.clone(), key.clone(), name.to_string());
            tokio::spawn(async move {
                stopping.stop(grace).await;
                tokio::time::sleep(delay).await;
                let _ = tx.send(Msg::Restart(k, name));
            });
        } else {
            slot.state = State::Terminated(terminated);
            if a.slots.iter().all(Slot::done) {
                stopping.stop(grace).await;
                self.complete(uid).await;
                return;
            }
            tokio::spawn(stopping.stop(grace));
        }
        if let Some(status) = self.pod_status(uid) {
            self.patch_status(&key, &status).await;
        }
    }

    /// Every container of the pod has terminated for good.
    async fn complete(&mut self, uid: &str) {
        let Some(a) = self.running.remove(uid) else {
            return;
        };
        self.pool.release(a.ip);
        self.finished.insert(uid.to_string());
        self.runtime.release(uid).await;
        let all_ok = a
            .slots
            .iter()
            .all(|s| matches!(&s.state, State::Terminated(t) if t["exitCode"] == 0));
        let statuses: Vec<Value> = a.slots.iter().map(container_status).collect();
        let ts = now();
        let done = |ty: &str, st: &str| json!({"type": ty, "status": st, "reason": "PodCompleted", "lastTransitionTime": ts});
        let status = json!({"status": {"phase": if all_ok { "Succeeded" } else { "Failed" }, "containerStatuses": statuses,
            "conditions": [done("PodScheduled", "True"), done("Initialized", "True"), done("ContainersReady", "False"), done("Ready", "False")]}});
        self.patch_status(&a.key, &status).await;
    }

    /// A container's backoff is over: start it again in its pod.
    async fn restart(&mut self, key: &PodKey, name: &str) {
        let Some(a) = self.running.get(&key.uid) else {
            return;
        };
        if !a
            .slots
            .iter()
            .any(|s| s.name == name && matches!(s.state, State::Waiting(_)))
        {
            return;
        }
        let (pod, ip) = (a.pod.clone(), a.ip);
        let Ok(c) = container(&pod, name).cloned() else {
            return;
        };
        let restarts = a
            .slots
            .iter()
            .map(|s| (s.name.clone(), s.restarts))
            .collect();
        let started = match self
            .start_spec(&pod, ip, restarts, Some(a.volumes.clone()))
            .await
        {
            Ok(spec) => self.runtime.restart(&pod, name, &spec).await,
            Err(e) => Err(e),
        };
        let probe_tx = self.probe_tx.clone();
        let retry_after = self.cfg.retry_after;
        let Some(slot) = self.running.get_mut(&key.uid).and_then(|a| a.slot(name)) else {
            return;
        };
        match started {
            Ok(run) => {
                slot._probes = spawn_probes(&key.uid, slot.restarts, &c, ip, &run, probe_tx);
                slot.ready = ready_at_start(&c);
                slot.started = Some(run.started.clone());
                slot.run = Some(run);
                slot.state = State::Running;
                slot.started_at = now();
                slot.since = Instant::now();
            }
            Err(e) => {
                tracing::warn!(pod = %key.name, container = name, "restart failed: {e}");
                let delay = backoff_delay(retry_after, slot.crashes);
                slot.crashes += 1;
                slot.state =
                    State::Waiting(json!({"reason": e.reason(), "message": e.to_string()}));
                later(&self.msgs, Msg::Restart(key.clone(), name.into()), delay);
            }
        }
        if let Some(status) = self.pod_status(&key.uid) {
            self.patch_status(key, &status).await;
        }
    }

    /// A probe changed its verdict.
    async fn probed(&mut self, t: probes::Transition) {
        let Some(active) = self.running.get_mut(&t.pod_uid) else {
            return;
        };
        let key = active.key.clone();
        let Some(slot) = active
            .slot(&t.container)
            .filter(|s| s.restarts == t.run && s.run.is_some())
        else {
            return;
        };
        match (t.kind, t.healthy) {
            (probes::Kind::Readiness, ready) => {
                slot.ready = ready;
                if !ready {
                    let msg = format!("Readiness probe failed: {}", t.message);
                    self.event(&key, true, "Unhealthy", &msg).await;
                }
                if let Some(status) = self.pod_status(&t.pod_uid) {
                    self.patch_status(&key, &status).await;
                }
            }
            (kind, false) => {
                let msg = format!("{} probe failed: {}", kind.as_str(), t.message);
                self.event(&key, true, "Unhealthy", &msg).await;
                let killing = format!(
                    "Container {} failed {} probe, will be restarted",
                    t.container,
                    kind.as_str().to_lowercase()
                );
                self.event(&key, false, "Killing", &killing).await;
                self.ended(&t.pod_uid, &t.container, t.run, Ending::Killed(msg))
                    .await;
            }
            (_, true) => {}
        }
    }

    /// The status of a running pod: each container's state, readiness and restarts.
    fn pod_status(&self, uid: &str) -> Option<Value> {
        let a = self.running.get(uid)?;
        let statuses: Vec<Value> = a.slots.iter().map(container_status).collect();
        let all_ready = a.slots.iter().all(|s| s.run.is_some() && s.ready);
        let ts = now();
        Some(
            json!({"status": {"phase": "Running", "podIP": a.ip.to_string(), "podIPs": [{"ip": a.ip.to_string()}],
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "startTime": a.started_at,
            "conditions": [cond("PodScheduled", true, &ts), cond("Initialized", true, &ts),
                           cond("ContainersReady", all_ready, &ts), cond("Ready", all_ready, &ts)],
            "containerStatuses": statuses}}),
        )
    }

    /// The ConfigMaps and Secrets the pod's env and volumes name.
    async fn fetch_sources(&self, pod: &Pod) -> Result<env::Fetched, WorkloadError> {
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
        for name in pull_secrets {
            // A missing pull secret is not fatal (kubelet pulls anonymously).
            if let Ok(Some(s)) = Api::<Secret>::namespaced(self.client.clone(), &ns)
                .get_opt(&name)
                .await
            {
                fetched.pull_secrets.push(s);
            }
        }
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
        Ok(fetched)
    }

    /// Env and volumes for a start. A pod's first start sets up its
    /// volumes (`volumes` is `None`); a container's restart passes the pod's.
    async fn start_spec(
        &self,
        pod: &Pod,
        ip: Ipv4Addr,
        restarts: HashMap<String, u32>,
        volumes: Option<BTreeMap<String, Volume>>,
    ) -> Result<StartSpec, WorkloadError> {
        let key = PodKey::of(pod);
        let fetched = self.fetch_sources(pod).await?;
        let env = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                Ok((
                    c.name.clone(),
                    env::resolve(pod, c, &fetched).map_err(|e| WorkloadError::Config(e.0))?,
                ))
            })
            .collect::<Result<PodEnv, WorkloadError>>()?;
        let volumes = match volumes {
            Some(v) => v,
            None => volumes::prepare(pod, &fetched, &self.volume_dir(&key))
                .map_err(|e| WorkloadError::Config(e.0))?,
        };
        let handler = match pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
        {
            Some(name) => {
                let rc = Api::<RuntimeClass>::all(self.client.clone())
                    .get_opt(name)
                    .await
                    .map_err(|e| WorkloadError::Config(e.to_string()))?
                    .ok_or_else(|| {
                        WorkloadError::Create(format!("RuntimeClass {name:?} not found"))
                    })?;
                Some(rc.handler)
            }
            None => None,
        };
        Ok(StartSpec {
            ip,
            env,
            volumes,
            log_dir: logs::pod_dir(&self.logs, &key.namespace, &key.name, &key.uid),
            restarts,
            handler,
            pull_secrets: fetched.pull_secrets,
            report: self.reporter(pod),
        })
    }

    /// Brings the pod's workload to what its object says. A pod in backoff
    /// starts again only when its retry comes (`retrying`).
    async fn sync(&mut self, pod: Pod, retrying: bool) {
        let key = PodKey::of(&pod);
        let uid = key.uid.clone();
        if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(&pod).await;
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
        // A restarted agent carries on counting (and naming log files) where the status left off.
        let statuses: HashMap<String, &ContainerStatus> = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| (c.name.clone(), c))
            .collect();
        let restarts: HashMap<String, u32> = statuses
            .iter()
            .map(|(n, c)| (n.clone(), c.restart_count.max(0) as u32))
            .collect();
        let want = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let Some(ip) = self.pool.take(want) else {
            tracing::error!(pod = %key.name, "pod IP range {} is exhausted", self.cfg.pod_cidr);
            return;
        };
        let spec = pod.spec.clone().unwrap_or_default();
        if !retrying && let Some(secs) = spec.active_deadline_seconds {
            // Measured from the pod's first start on this node (status.startTime).
            let started = start_time(&pod).unwrap_or_else(jiff::Timestamp::now);
            let left = (started + Duration::from_secs(secs.max(0) as u64))
                .duration_since(jiff::Timestamp::now());
            let left = if left.is_negative() {
                Duration::ZERO
            } else {
                left.unsigned_abs()
            };
            later(&self.msgs, Msg::Deadline(key.clone()), left);
        }
        let started = match self.start_spec(&pod, ip, restarts.clone(), None).await {
            Ok(s) => self
                .runtime
                .start(&pod, &s)
                .await
                .map(|run| (run, s.volumes)),
            Err(e) => Err(e),
        };
        match started {
            Ok((run, volumes)) => {
                // A container pod's IP comes from its network, not the agent's range.
                if run.ip != ip {
                    self.pool.release(ip);
                }
                let ip = run.ip;
                let started_at = start_time(&pod).map(ts).unwrap_or_else(now);
                let slots = run
                    .containers
                    .into_iter()
                    .zip(&spec.containers)
                    .map(|(run, c)| {
                        let restarts = restarts.get(&c.name).copied().unwrap_or(0);
                        let last = statuses
                            .get(&c.name)
                            .and_then(|s| s.last_state.as_ref()?.terminated.as_ref())
                            .and_then(|t| serde_json::to_value(t).ok());
                        Slot {
                            name: c.name.clone(),
                            image: c.image.clone().unwrap_or_default(),
                            _probes: spawn_probes(
                                &uid,
                                restarts,
                                c,
                                ip,
                                &run,
                                self.probe_tx.clone(),
                            ),
                            started: Some(run.started.clone()),
                            run: Some(run),
                            state: State::Running,
                            started_at: started_at.clone(),
                            since: Instant::now(),
                            restarts,
                            crashes: restarts,
                            last,
                            ready: ready_at_start(c),
                        }
                    })
                    .collect();
                self.running.insert(
                    uid.clone(),
                    Active {
                        key: key.clone(),
                        ip,
                        pod: pod.clone(),
                        started_at,
                        volumes,
                        slots,
                    },
                );
                self.backoff.remove(&uid);
                if let Some(status) = self.pod_status(&uid) {
                    self.patch_status(&key, &status).await;
                }
            }
            Err(e) => {
                self.pool.release(ip);
                tracing::warn!(pod = %key.name, "start failed: {e}");
                let failures = self.backoff.entry(uid.clone()).or_insert(0);
                // As kubelet: ErrImagePull first, ImagePullBackOff while retries back off.
                let (reason, message) = match e.reason() {
                    "ErrImagePull" if *failures > 0 => {
                        ("ImagePullBackOff", format!("Back-off pulling image: {e}"))
                    }
                    r => (r, e.to_string()),
                };
                let statuses: Vec<Value> = spec.containers.iter().map(|c| json!({
                    "name": c.name, "ready": false, "started": false, "restartCount": 0, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                    "state": {"waiting": {"reason": reason, "message": message}}})).collect();
                let delay = backoff_delay(self.cfg.retry_after, *failures);
                *failures += 1;
                later(&self.msgs, Msg::Retry(key.clone()), delay);
                self.patch_status(
                    &key,
                    &json!({"status": {"phase": "Pending", "containerStatuses": statuses}}),
                )
                .await;
            }
        }
    }

    /// Graceful termination: not ready at once (so endpoints drop it), keep
    /// serving through the preStop sleep, then stop and finish the deletion.
    async fn terminate(&mut self, pod: &Pod) {
        let key = PodKey::of(pod);
        if self.terminating.contains(&key.uid) {
            return;
        }
        self.backoff.remove(&key.uid);
        let Some(mut active) = self.running.remove(&key.uid) else {
            self.finish_deletion(&key).await;
            return;
        };
        self.terminating.insert(key.uid.clone());
        let ts = now();
        self.patch_status(&key, &json!({"status": {"conditions": [cond("ContainersReady", false, &ts), cond("Ready", false, &ts)]}}))
            .await;
        let drain = drain_time(pod);
        let grace = grace_period(pod).saturating_sub(drain);
        let tx = self.msgs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            stop_all(active.take_runs(), grace).await;
            let _ = tx.send(Msg::Terminated(active.key, active.ip));
        });
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

    #[test]
    fn each_policy_restarts_what_kubelet_restarts() {
        let pod = |policy: &str| -> Pod {
            serde_json::from_value(json!({"spec": {"restartPolicy": policy, "containers": []}}))
                .unwrap()
        };
        let ok = Ending::Exit(Exit::Code(0));
        let failed = Ending::Exit(Exit::Code(2));
        let killed = Ending::Killed("Liveness probe failed".into());
        for ending in [&ok, &failed, &killed] {
            assert!(restarts(&pod("Always"), ending));
            assert!(restarts(&Pod::default(), ending), "Always by default");
            assert!(!restarts(&pod("Never"), ending));
        }
        assert!(!restarts(&pod("OnFailure"), &ok));
        assert!(restarts(&pod("OnFailure"), &failed));
        assert!(restarts(&pod("OnFailure"), &killed));
    }

    fn slot(state: State, ready: bool, last: Option<Value>) -> Slot {
        Slot {
            name: "worker".into(),
            image: "reg/job:1".into(),
            run: None,
            started: Some(Started {
                name: "worker".into(),
                image: "reg/job:1".into(),
                image_id: "sha256:ab".into(),
                command: true,
                id: "wasm://u/worker".into(),
            }),
            state,
            started_at: "2026-11-30T00:00:00Z".into(),
            since: Instant::now(),
            restarts: 2,
            crashes: 2,
            last,
            ready,
            _probes: tokio::task::JoinSet::new(),
        }
    }

    #[test]
    fn container_statuses_show_each_containers_own_state() {
        let exited = json!({"exitCode": 1, "reason": "Error"});
        let waiting = container_status(&slot(
            State::Waiting(json!({"reason": "CrashLoopBackOff"})),
            true,
            Some(exited.clone()),
        ));
        assert_eq!(waiting["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(waiting["lastState"]["terminated"], exited);
        assert_eq!(waiting["restartCount"], 2);
        assert_eq!(waiting["ready"], false, "only a running container is ready");
        assert_eq!(waiting["started"], false);
        assert_eq!(waiting["containerID"], "wasm://u/worker");
        assert_eq!(waiting["imageID"], "sha256:ab");

        let running = container_status(&slot(State::Running, true, None));
        assert_eq!(
            running["state"]["running"]["startedAt"],
            "2026-11-30T00:00:00Z"
        );
        assert_eq!(
            (&running["ready"], &running["started"]),
            (&json!(true), &json!(true))
        );
        assert!(running.get("lastState").is_none());
        let unready = container_status(&slot(State::Running, false, None));
        assert_eq!(unready["ready"], false, "its readiness probe says no");

        let done = container_status(&slot(State::Terminated(exited.clone()), false, None));
        assert_eq!(done["state"]["terminated"], exited);
    }
}
