//! The workload boundary: one trait for running a pod's workload. Wasm
//! (in-process wasmtime) and containerd implement it; [`Runtimes`] picks
//! one per pod. Every other part of the agent is the same for both.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use weft_api::k8s_openapi::api::core::v1::{Container, Pod, Secret};
use weft_wasm_host::{
    AllowList, Command, Exit, Guest, Host, HttpHandler, Limits, Preopen, RequestError,
};

use crate::artifacts::{ArtifactStore, PullError, PullPolicy};
use crate::containerd::ContainerdRuntime;
use crate::logs::{self, ContainerLog, Live};
use crate::probes::Target;
use crate::proxy::egress::ClusterEgress;
use crate::proxy::{LocalHandlers, Proxy};
use crate::volumes::Volume;

/// Pod annotations that tune Wasm pods (Kubernetes has no fields for them).
pub const EGRESS_ANNOTATION: &str = "weft.dev/egress-allow";
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "weft.dev/request-timeout";
pub const MAX_CONCURRENCY_ANNOTATION: &str = "weft.dev/max-concurrency";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The artifact is not something this runtime can run (`CreateContainerError`).
    #[error("{0}")]
    Create(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A ConfigMap or Secret the container needs is missing (`CreateContainerConfigError`).
    #[error("{0}")]
    Config(String),
}

impl WorkloadError {
    /// The container waiting reason shown in the pod status.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkloadError::Pull(p) => p.reason(),
            WorkloadError::Create(_) => "CreateContainerError",
            WorkloadError::Listen { .. } => "CreateContainerError",
            WorkloadError::Config(_) => "CreateContainerConfigError",
        }
    }
}

/// A started container, for its status.
#[derive(Debug, Clone)]
pub struct Started {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// A wasi:cli command that runs to completion (else a wasi:http server).
    pub command: bool,
    /// `containerID` in the status: `wasm://...` or `containerd://...`.
    pub id: String,
}

/// Ends a container outside the process: given the grace period between
/// SIGTERM and SIGKILL.
pub type Teardown = Box<dyn FnOnce(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// One run of one container; `stop` ends it. Each container of a pod runs,
/// ends and restarts on its own, as under kubelet.
pub struct RunningContainer {
    pub started: Started,
    /// How its probes reach it (in-process handler, exec).
    pub probe: Target,
    tasks: tokio::task::JoinSet<()>,
    teardown: Option<Teardown>,
    _registered: Option<Registered>,
}

impl RunningContainer {
    pub fn new(started: Started, probe: Target, tasks: tokio::task::JoinSet<()>) -> Self {
        RunningContainer {
            started,
            probe,
            tasks,
            teardown: None,
            _registered: None,
        }
    }

    pub fn with_teardown(mut self, t: Teardown) -> Self {
        self.teardown = Some(t);
        self
    }

    /// Stops accepting, ends the container's tasks, then its process
    /// (SIGTERM, SIGKILL after `grace`).
    pub async fn stop(mut self, grace: Duration) {
        self.tasks.shutdown().await;
        if let Some(t) = self.teardown.take() {
            t(grace).await;
        }
    }

    /// The agent is exiting: in-process work ends with it, while a
    /// container keeps running for the next agent to adopt.
    pub async fn detach(mut self) {
        self.tasks.shutdown().await;
    }
}

/// A started pod: its IP and every container's first run.
pub struct RunningPod {
    /// The pod's IP: the one the agent offered, or the one the runtime's
    /// network gave it (containers).
    pub ip: Ipv4Addr,
    pub containers: Vec<RunningContainer>,
}

/// What a runtime tells the agent while it starts a pod.
#[derive(Debug, Clone)]
pub enum Note {
    /// A core/v1 Event about the pod.
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// The containers' waiting state (image pull progress).
    Waiting {
        reason: &'static str,
        message: String,
    },
}

pub type Report = Arc<dyn Fn(Note) + Send + Sync>;

/// Each container's resolved environment, by container name.
pub type PodEnv = BTreeMap<String, Vec<(String, String)>>;

/// What the agent prepared for a pod's start.
pub struct StartSpec {
    pub ip: Ipv4Addr,
    pub env: PodEnv,
    pub volumes: BTreeMap<String, Volume>,
    /// The pod's log directory; each container run gets its own file in it.
    pub log_dir: PathBuf,
    /// How many times each container has restarted (names its log file).
    pub restarts: HashMap<String, u32>,
    /// The handler of the pod's RuntimeClass (`wasmtime`, `containerd`), if it names one.
    pub handler: Option<String>,
    /// The pod's `imagePullSecrets`.
    pub pull_secrets: Vec<Secret>,
    pub report: Report,
}

impl StartSpec {
    pub fn restarts_of(&self, container: &str) -> u32 {
        self.restarts.get(container).copied().unwrap_or(0)
    }
}

pub trait Workload: Send + Sync + 'static {
    /// Starts every container of `pod`, whole or not at all.
    fn start(
        &self,
        pod: &Pod,
        spec: &StartSpec,
    ) -> impl Future<Output = Result<RunningPod, WorkloadError>> + Send;

    /// Starts container `name` of a pod that `start` started, again, while
    /// its other containers keep running.
    fn restart(
        &self,
        pod: &Pod,
        name: &str,
        spec: &StartSpec,
    ) -> impl Future<Output = Result<RunningContainer, WorkloadError>> + Send;

    /// The pod is gone or finished: release what outlives its containers
    /// (a container pod's network).
    fn release(&self, _uid: &str) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After an agent restart: remove what belongs to pods not in `keep`.
    fn collect_garbage(&self, _keep: &HashSet<String>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The handler names of the two runtimes (RuntimeClass `handler`, node label suffix).
pub const WASM_HANDLER: &str = "wasmtime";
pub const CONTAINERD_HANDLER: &str = "containerd";

/// Both runtimes of a node. Which one runs a pod: its RuntimeClass's
/// handler when it has one; else its image: a Wasm artifact runs in Wasm,
/// any other image in containerd. A pod's containers all run in the
/// runtime its first container's image picks.
pub struct Runtimes {
    pub wasm: WasmRuntime,
    pub containerd: Option<ContainerdRuntime>,
}

impl Runtimes {
    async fn use_containerd(&self, pod: &Pod, spec: &StartSpec) -> Result<bool, WorkloadError> {
        let Some(ctr) = &self.containerd else {
            return match spec.handler.as_deref() {
                Some(CONTAINERD_HANDLER) => Err(WorkloadError::Create(
                    "this node has no container runtime (containerd)".into(),
                )),
                _ => Ok(false),
            };
        };
        match spec.handler.as_deref() {
            Some(WASM_HANDLER) => return Ok(false),
            Some(CONTAINERD_HANDLER) => return Ok(true),
            Some(other) => {
                return Err(WorkloadError::Create(format!(
                    "no runtime handler {other:?} on this node"
                )));
            }
            None => {}
        }
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        if self.wasm.artifacts.cached(&image).is_some() {
            return Ok(false);
        }
        if ctr.has_image(&image).await {
            return Ok(true);
        }
        let auth = crate::artifacts::auth_for(&image, &spec.pull_secrets);
        match crate::containerd::is_wasm_image(&image, &auth).await {
            Ok(wasm) => Ok(!wasm),
            Err(e) => {
                (spec.report)(Note::Event {
                    warning: true,
                    reason: "Failed",
                    message: format!("Failed to pull image {image:?}: {e}"),
                });
                Err(e.into())
            }
        }
    }
}

impl Workload for Runtimes {
    async fn start(&self, pod: &Pod, spec: &StartSpec) -> Result<RunningPod, WorkloadError> {
        match (&self.containerd, self.use_containerd(pod, spec).await?) {
            (Some(ctr), true) => ctr.start(pod, spec).await,
            _ => self.wasm.start(pod, spec).await,
        }
    }

    async fn restart(
        &self,
        pod: &Pod,
        name: &str,
        spec: &StartSpec,
    ) -> Result<RunningContainer, WorkloadError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        match &self.containerd {
            // The runtime that started the pod: only container pods have a network.
            Some(ctr) if ctr.has_pod(uid) => ctr.restart(pod, name, spec).await,
            _ => self.wasm.restart(pod, name, spec).await,
        }
    }

    async fn release(&self, uid: &str) {
        if let Some(ctr) = &self.containerd {
            ctr.release(uid).await;
        }
    }

    async fn collect_garbage(&self, keep: &HashSet<String>) {
        if let Some(ctr) = &self.containerd {
            ctr.collect_garbage(keep).await;
        }
    }
}

/// Wasm pods: wasi:http components served in process, a fresh instance per request.
/// A command container finished.
#[derive(Debug)]
pub struct Exited {
    pub pod_uid: String,
    pub container: String,
    /// Which run of the container (its restart count).
    pub run: u32,
    pub exit: Exit,
}

pub struct WasmRuntime {
    host: Arc<Host>,
    pub(crate) artifacts: Arc<ArtifactStore>,
    live: Arc<Live>,
    log_max_size: u64,
    exits: mpsc::UnboundedSender<Exited>,
    /// Where pod ports register for the proxy's fast path, and where
    /// guests' calls to Services go.
    local: Arc<LocalHandlers>,
    proxy: Arc<Proxy>,
}

/// What a container runs: a server (wasi:http) or a command (wasi:cli).
enum Prepared {
    Http(HttpHandler),
    Command(Command),
}

impl WasmRuntime {
    /// `live` tracks the log files being written; `exits` hears when commands finish.
    pub fn new(
        host: Arc<Host>,
        artifacts: Arc<ArtifactStore>,
        live: Arc<Live>,
        log_max_size: u64,
        exits: mpsc::UnboundedSender<Exited>,
        local: Arc<LocalHandlers>,
        proxy: Arc<Proxy>,
    ) -> Self {
        WasmRuntime {
            host,
            artifacts,
            live,
            log_max_size,
            exits,
            local,
            proxy,
        }
    }

    async fn prepare(
        &self,
        pod: &Pod,
        c: &Container,
        spec: &StartSpec,
    ) -> Result<(Prepared, Started), WorkloadError> {
        let image = c.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_container(c.image_pull_policy.as_deref(), &image);
        let auth = crate::artifacts::auth_for(&image, &spec.pull_secrets);
        let pulled = self.artifacts.pull(&image, policy, &auth).await?;
        let artifact = self
            .host
            .load_with(&pulled.digest, || std::fs::read(&pulled.path))
            .map_err(|e| WorkloadError::Create(e.to_string()))?;
        let limits = limits_for(pod, c);
        let create = |e: weft_wasm_host::HostError| WorkloadError::Create(e.to_string());
        let restarts = spec.restarts_of(&c.name);
        let log_path = logs::run_path(&spec.log_dir, &c.name, restarts);
        logs::prune(&spec.log_dir, &c.name, restarts);
        let output = ContainerLog::create(log_path.clone(), self.log_max_size, self.live.clone())
            .map_err(|e| {
            WorkloadError::Create(format!("log file {}: {e}", log_path.display()))
        })?;
        let mut guest = Guest {
            env: spec.env.get(&c.name).cloned().unwrap_or_default(),
            output: Some(output),
            dirs: preopens(c, &spec.volumes)?,
            egress: Some(Arc::new(ClusterEgress::new(
                self.proxy.clone(),
                pod.metadata.namespace.clone().unwrap_or_default(),
                spec.ip.into(),
                egress_for(pod),
            ))),
            ..Guest::default()
        };
        let prepared = if self.host.is_http(&artifact) {
            Prepared::Http(
                self.host
                    .http_handler(&artifact, guest, limits)
                    .map_err(create)?,
            )
        } else {
            // argv: the command (or the container's name as argv[0]), then args.
            guest.args = c.command.clone().unwrap_or_else(|| vec![c.name.clone()]);
            guest.args.extend(c.args.clone().unwrap_or_default());
            Prepared::Command(
                self.host
                    .command(&artifact, guest, limits)
                    .map_err(create)?,
            )
        };
        let command = matches!(prepared, Prepared::Command(_));
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        Ok((
            prepared,
            Started {
                name: c.name.clone(),
                image,
                image_id: pulled.digest,
                command,
                id: format!("wasm://{uid}/{}", c.name),
            },
        ))
    }
}

/// The container's volumeMounts, resolved to host directories (WASI
/// preopens, or bind mounts for containers).
pub(crate) fn preopens(
    c: &Container,
    volumes: &BTreeMap<String, Volume>,
) -> Result<Vec<Preopen>, WorkloadError> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let v = volumes.get(&m.name).ok_or_else(|| {
                WorkloadError::Config(format!("volumeMount {:?}: no volume of that name", m.name))
            })?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) if !sub.split('/').any(|p| p == "..") => v.path.join(sub),
                Some(sub) => {
                    return Err(WorkloadError::Config(format!("subPath {sub:?} is invalid")));
                }
                None => v.path.clone(),
            };
            Ok(Preopen {
                host,
                guest: m.mount_path.clone(),
                read_only: v.read_only || m.read_only == Some(true),
            })
        })
        .collect()
}

/// Outgoing HTTP outside the cluster is denied unless the pod lists hosts in
/// `weft.dev/egress-allow` (comma-separated; `*` allows all). Services are always reachable.
fn egress_for(pod: &Pod) -> AllowList {
    AllowList(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EGRESS_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Limits from the container's resources and the pod's annotations:
/// `limits.memory` caps each instance's memory; `limits.cpu` throttles
/// commands to that many cores and gives each HTTP request `cpu × 1 s` of
/// guest execution (10 s without a limit).
fn limits_for(pod: &Pod, c: &Container) -> Limits {
    let mut limits = Limits::default();
    let resource = |name: &str| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
            .map(|q| q.0.clone())
    };
    if let Some(mem) = resource("memory")
        .and_then(|q| weft_api::quantity::parse_units(&q))
        .and_then(|b| usize::try_from(b).ok())
    {
        limits.memory_bytes = mem;
    }
    if let Some(milli) = resource("cpu").and_then(|q| weft_api::quantity::parse_milli(&q))
        && milli > 0
    {
        limits.cpu_cores = Some(milli as f64 / 1000.0);
        limits.cpu_budget = std::time::Duration::from_millis(milli as u64);
    }
    let annotation = |k: &str| pod.metadata.annotations.as_ref().and_then(|a| a.get(k));
    if let Some(d) = annotation(REQUEST_TIMEOUT_ANNOTATION).and_then(|v| parse_seconds(v)) {
        limits.request_timeout = d;
    }
    if let Some(n) = annotation(MAX_CONCURRENCY_ANNOTATION).and_then(|v| v.parse().ok()) {
        limits.max_concurrency = n;
    }
    limits
}

/// `30s`, `500ms` or a plain number of seconds.
fn parse_seconds(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(std::time::Duration::from_millis);
    }
    v.strip_suffix('s')
        .unwrap_or(v)
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .map(std::time::Duration::from_secs_f64)
}

pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn text(code: u16, msg: String) -> hyper::Response<Body> {
    let body = Full::new(Bytes::from(msg))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    hyper::Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(body)
        .expect("static response")
}

/// One request into a Wasm handler; the node's failures become 5xx answers.
pub async fn respond<B>(handler: &HttpHandler, req: hyper::Request<B>) -> hyper::Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match handler.handle(req).await {
        Ok(resp) => resp.map(|b| {
            b.map_err(|e| Box::new(std::io::Error::other(format!("{e:?}"))) as _)
                .boxed_unsync()
        }),
        Err(e @ RequestError::Timeout(_)) => text(504, format!("{e}\n")),
        Err(e @ RequestError::CpuBudget(_)) => text(503, format!("{e}\n")),
        Err(e) => text(500, format!("{e}\n")),
    }
}

/// The next connection, with TCP_NODELAY set. Accept errors (out of
/// descriptors, most likely) pause the loop rather than spin it.
pub async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one pod port (HTTP/1.1 and h2c): every connection, every request, into the handler.
async fn serve(listener: tokio::net::TcpListener, handler: HttpHandler) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = accept(&listener).await;
        let handler = handler.clone();
        conns.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(respond(&handler, req).await) }
                });
            // HTTP/1.1, or HTTP/2 with prior knowledge (h2c), on the same port.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

/// Takes a pod's ports out of the proxy's fast path when the pod ends.
struct Registered {
    local: Arc<LocalHandlers>,
    addrs: Vec<SocketAddr>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        for a in &self.addrs {
            self.local.remove(a);
        }
    }
}

impl WasmRuntime {
    async fn start_container(
        &self,
        pod: &Pod,
        c: &Container,
        spec: &StartSpec,
    ) -> Result<RunningContainer, WorkloadError> {
        let (prepared, started) = self.prepare(pod, c, spec).await?;
        let mut tasks = tokio::task::JoinSet::new();
        let mut probe = Target::default();
        let mut registered = Registered {
            local: self.local.clone(),
            addrs: Vec::new(),
        };
        match prepared {
            Prepared::Http(handler) => {
                probe.handler = Some(handler.clone());
                for p in c.ports.iter().flatten() {
                    let addr = SocketAddr::from((spec.ip, p.container_port as u16));
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|source| WorkloadError::Listen { addr, source })?;
                    tasks.spawn(serve(listener, handler.clone()));
                    self.local.insert(addr, handler.clone());
                    registered.addrs.push(addr);
                }
            }
            Prepared::Command(cmd) => {
                let exits = self.exits.clone();
                let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
                let container = c.name.clone();
                let run = spec.restarts_of(&c.name);
                tasks.spawn(async move {
                    let exit = cmd.run().await;
                    let _ = exits.send(Exited {
                        pod_uid,
                        container,
                        run,
                        exit,
                    });
                });
            }
        }
        let mut run = RunningContainer::new(started, probe, tasks);
        run._registered = Some(registered);
        Ok(run)
    }
}

/// Container `name` of `pod`.
pub(crate) fn container<'a>(pod: &'a Pod, name: &str) -> Result<&'a Container, WorkloadError> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .find(|c| c.name == name)
        .ok_or_else(|| WorkloadError::Create(format!("the pod has no container {name:?}")))
}

impl Workload for WasmRuntime {
    async fn start(&self, pod: &Pod, spec: &StartSpec) -> Result<RunningPod, WorkloadError> {
        let mut containers = Vec::new();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            // On an error, the containers already started stop as they drop.
            containers.push(self.start_container(pod, c, spec).await?);
        }
        Ok(RunningPod {
            ip: spec.ip,
            containers,
        })
    }

    async fn restart(
        &self,
        pod: &Pod,
        name: &str,
        spec: &StartSpec,
    ) -> Result<RunningContainer, WorkloadError> {
        self.start_container(pod, container(pod, name)?, spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        let container = |mem: &str| -> Container {
            serde_json::from_value(
                serde_json::json!({"name": "c", "resources": {"limits": {"memory": mem}}}),
            )
            .unwrap()
        };
        let pod = Pod::default();
        assert_eq!(limits_for(&pod, &container("64Mi")).memory_bytes, 64 << 20);
        assert_eq!(
            limits_for(&pod, &container("1G")).memory_bytes,
            1_000_000_000
        );
        assert_eq!(
            limits_for(&pod, &container("1048576")).memory_bytes,
            1 << 20
        );
        assert_eq!(
            limits_for(&pod, &container("lots")).memory_bytes,
            Limits::default().memory_bytes
        );
    }

    #[test]
    fn cpu_limits_and_annotations() {
        let c: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "resources": {"limits": {"cpu": "250m"}}}),
        )
        .unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"annotations": {
            REQUEST_TIMEOUT_ANNOTATION: "2s", MAX_CONCURRENCY_ANNOTATION: "7",
            EGRESS_ANNOTATION: "api.example.com, *.svc.test"}}}))
        .unwrap();
        let l = limits_for(&pod, &c);
        assert_eq!(l.cpu_cores, Some(0.25));
        assert_eq!(l.cpu_budget, std::time::Duration::from_millis(250));
        assert_eq!(l.request_timeout, std::time::Duration::from_secs(2));
        assert_eq!(l.max_concurrency, 7);
        assert_eq!(egress_for(&pod).0, ["api.example.com", "*.svc.test"]);
        assert!(egress_for(&Pod::default()).0.is_empty(), "deny by default");
        assert_eq!(
            parse_seconds("500ms"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(parse_seconds("x"), None);
    }
}
