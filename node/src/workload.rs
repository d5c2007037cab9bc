//! The workload contract: what a runtime is given to start a pod
//! ([`StartSpec`]), what it hands back ([`RunningPod`], [`RunningContainer`])
//! and the one trait both runtimes implement ([`Workload`]). The agent, the
//! Wasm runtime, containerd and the proxy all depend on this module, and it
//! on none of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use weft_api::k8s_openapi::api::core::v1::{Container, Pod, Secret};
use weft_wasm_host::{Exit, Preopen};

use crate::artifacts::PullError;
use crate::probes::Target;
use crate::volumes::Volume;

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
    /// Whatever the runtime undoes by dropping it with the run (the Wasm
    /// runtime's port registrations for the proxy).
    _guard: Option<Box<dyn Send + Sync>>,
}

impl RunningContainer {
    pub fn new(started: Started, probe: Target, tasks: tokio::task::JoinSet<()>) -> Self {
        RunningContainer {
            started,
            probe,
            tasks,
            teardown: None,
            _guard: None,
        }
    }

    pub fn with_guard(mut self, g: impl Send + Sync + 'static) -> Self {
        self._guard = Some(Box::new(g));
        self
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

/// A command container finished.
#[derive(Debug)]
pub struct Exited {
    pub pod_uid: String,
    pub container: String,
    /// Which run of the container (its restart count).
    pub run: u32,
    pub exit: Exit,
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

/// Container `name` of `pod`.
pub(crate) fn container<'a>(pod: &'a Pod, name: &str) -> Result<&'a Container, WorkloadError> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .find(|c| c.name == name)
        .ok_or_else(|| WorkloadError::Create(format!("the pod has no container {name:?}")))
}
