//! The workload boundary: one trait for running a pod's workload. Wasm
//! (in-process wasmtime) implements it now; containerd joins later. Every
//! other part of the agent is the same for both.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use oci_client::secrets::RegistryAuth;
use tokio::sync::mpsc;
use weft_api::k8s_openapi::api::core::v1::{Container, Pod};
use weft_wasm_host::{Command, Exit, Host, HttpHandler, Limits, RequestError};

use crate::artifacts::{ArtifactStore, PullError, PullPolicy};

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
}

/// A running pod's workload; dropping it (or `stop`) ends it.
pub struct RunningPod {
    pub containers: Vec<Started>,
    tasks: tokio::task::JoinSet<()>,
}

impl RunningPod {
    /// Stops accepting and ends every task of the pod.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Each container's resolved environment, by container name.
pub type PodEnv = BTreeMap<String, Vec<(String, String)>>;

pub trait Workload: Send + Sync + 'static {
    /// Starts every container of `pod`, reachable at `ip`, with its resolved env.
    fn start(
        &self,
        pod: &Pod,
        ip: Ipv4Addr,
        env: &PodEnv,
    ) -> impl Future<Output = Result<RunningPod, WorkloadError>> + Send;
}

/// Wasm pods: wasi:http components served in process, a fresh instance per request.
/// A command container finished.
#[derive(Debug)]
pub struct Exited {
    pub pod_uid: String,
    pub container: String,
    pub exit: Exit,
}

pub struct WasmRuntime {
    host: Arc<Host>,
    artifacts: Arc<ArtifactStore>,
    logs: PathBuf,
    exits: mpsc::UnboundedSender<Exited>,
}

/// What a container runs: a server (wasi:http) or a command (wasi:cli).
enum Prepared {
    Http(HttpHandler),
    Command(Command),
}

impl WasmRuntime {
    /// `logs` holds each container's output; `exits` hears when commands finish.
    pub fn new(
        host: Arc<Host>,
        artifacts: Arc<ArtifactStore>,
        logs: PathBuf,
        exits: mpsc::UnboundedSender<Exited>,
    ) -> Self {
        WasmRuntime {
            host,
            artifacts,
            logs,
            exits,
        }
    }

    /// Where a container's output goes: `logs/{namespace}_{pod}_{uid}/{container}.log`.
    pub fn log_path(&self, pod: &Pod, container: &str) -> PathBuf {
        let m = &pod.metadata;
        self.logs
            .join(format!(
                "{}_{}_{}",
                m.namespace.as_deref().unwrap_or(""),
                m.name.as_deref().unwrap_or(""),
                m.uid.as_deref().unwrap_or("")
            ))
            .join(format!("{container}.log"))
    }

    async fn prepare(
        &self,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<(Prepared, Started), WorkloadError> {
        let image = c.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_container(c.image_pull_policy.as_deref(), &image);
        let pulled = self
            .artifacts
            .pull(&image, policy, &RegistryAuth::Anonymous)
            .await?;
        let bytes = std::fs::read(&pulled.path).map_err(|e| {
            WorkloadError::Create(format!("reading {}: {e}", pulled.path.display()))
        })?;
        let artifact = self
            .host
            .load(&pulled.digest, &bytes)
            .map_err(|e| WorkloadError::Create(e.to_string()))?;
        let env = env.to_vec();
        let limits = limits_for(c);
        let create = |e: weft_wasm_host::HostError| WorkloadError::Create(e.to_string());
        let prepared = if self.host.is_http(&artifact) {
            Prepared::Http(
                self.host
                    .http_handler(&artifact, env, limits)
                    .map_err(create)?,
            )
        } else {
            // argv: the command (or the container's name as argv[0]), then args.
            let mut argv = c.command.clone().unwrap_or_else(|| vec![c.name.clone()]);
            argv.extend(c.args.clone().unwrap_or_default());
            Prepared::Command(
                self.host
                    .command(&artifact, argv, env, limits)
                    .map_err(create)?,
            )
        };
        let command = matches!(prepared, Prepared::Command(_));
        Ok((
            prepared,
            Started {
                name: c.name.clone(),
                image,
                image_id: pulled.digest,
                command,
            },
        ))
    }
}

/// `resources.limits.memory` caps each instance's memory.
fn limits_for(c: &Container) -> Limits {
    let mut limits = Limits::default();
    if let Some(mem) = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| weft_api::quantity::parse_units(&q.0))
        .and_then(|b| usize::try_from(b).ok())
    {
        limits.memory_bytes = mem;
    }
    limits
}

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn text(code: u16, msg: String) -> hyper::Response<Body> {
    let body = Full::new(Bytes::from(msg))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    hyper::Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(body)
        .expect("static response")
}

/// Serves one pod port: every connection, every request, into the handler.
async fn serve(listener: tokio::net::TcpListener, handler: HttpHandler) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        conns.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        Ok::<_, Infallible>(match handler.handle(req).await {
                            Ok(resp) => resp.map(|b| {
                                b.map_err(|e| {
                                    Box::new(std::io::Error::other(format!("{e:?}"))) as _
                                })
                                .boxed_unsync()
                            }),
                            Err(e @ RequestError::Timeout(_)) => text(504, format!("{e}\n")),
                            Err(e) => text(500, format!("{e}\n")),
                        })
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

impl Workload for WasmRuntime {
    async fn start(
        &self,
        pod: &Pod,
        ip: Ipv4Addr,
        env: &PodEnv,
    ) -> Result<RunningPod, WorkloadError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut containers = Vec::new();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for c in &spec.containers {
            let container_env = env.get(&c.name).map(Vec::as_slice).unwrap_or_default();
            let (prepared, started) = self.prepare(c, container_env).await?;
            match prepared {
                Prepared::Http(handler) => {
                    for p in c.ports.iter().flatten() {
                        let addr = SocketAddr::from((ip, p.container_port as u16));
                        let listener = tokio::net::TcpListener::bind(addr)
                            .await
                            .map_err(|source| WorkloadError::Listen { addr, source })?;
                        tasks.spawn(serve(listener, handler.clone()));
                    }
                }
                Prepared::Command(cmd) => {
                    let path = self.log_path(pod, &c.name);
                    let open = || -> std::io::Result<(std::fs::File, std::fs::File)> {
                        std::fs::create_dir_all(path.parent().unwrap_or(&self.logs))?;
                        let out = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)?;
                        Ok((out.try_clone()?, out))
                    };
                    let (stdout, stderr) = open().map_err(|e| {
                        WorkloadError::Create(format!("log file {}: {e}", path.display()))
                    })?;
                    let exits = self.exits.clone();
                    let (pod_uid, container) = (uid.clone(), c.name.clone());
                    tasks.spawn(async move {
                        let exit = cmd.run(stdout, stderr).await;
                        let _ = exits.send(Exited {
                            pod_uid,
                            container,
                            exit,
                        });
                    });
                }
            }
            containers.push(started);
        }
        Ok(RunningPod { containers, tasks })
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
        assert_eq!(limits_for(&container("64Mi")).memory_bytes, 64 << 20);
        assert_eq!(limits_for(&container("1G")).memory_bytes, 1_000_000_000);
        assert_eq!(limits_for(&container("1048576")).memory_bytes, 1 << 20);
        assert_eq!(
            limits_for(&container("lots")).memory_bytes,
            Limits::default().memory_bytes
        );
    }
}
