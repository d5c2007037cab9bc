//! Wasm pods: wasi:http components served in process (a fresh instance per
//! request at the pod IP) and wasi:cli commands, with limits, volumes and
//! egress from the pod spec.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use weft_api::k8s_openapi::api::core::v1::{Container, Pod};
use weft_wasm_host::{AllowList, Command, Guest, Host, HttpHandler, Limits};

use crate::artifacts::{ArtifactStore, PullPolicy};
use crate::http::{accept, respond};
use crate::logs::{self, ContainerLog, Live};
use crate::probes::Target;
use crate::proxy::egress::ClusterEgress;
use crate::proxy::{LocalHandlers, Proxy};
use crate::workload::{
    Exited, RunningContainer, RunningPod, StartSpec, Started, Workload, WorkloadError, container,
    preopens,
};

/// Pod annotations that tune Wasm pods (Kubernetes has no fields for them).
pub const EGRESS_ANNOTATION: &str = "weft.dev/egress-allow";
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "weft.dev/request-timeout";
pub const MAX_CONCURRENCY_ANNOTATION: &str = "weft.dev/max-concurrency";

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
        Ok(RunningContainer::new(started, probe, tasks).with_guard(registered))
    }
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
