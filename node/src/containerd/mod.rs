//! Container pods through a real containerd, over its gRPC API, behind the
//! same [`Workload`] trait as Wasm pods. See docs/design/containerd.md.
//!
//! Per pod: a network namespace attached by CNI (kept across container
//! restarts, like a Kubernetes sandbox, and released by [`Workload::release`]);
//! per container: a snapshot of the unpacked image, a container record
//! labelled with its pod, and a task whose stdout and stderr are FIFOs that
//! the agent copies into the CRI log files.

pub mod cni;
mod conn;
pub mod pull;
pub mod resolv;
pub mod spec;
#[cfg(test)]
mod tests;

pub use cni::PodNetwork;
pub use conn::{Conn, Containerd, NewContainer};

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::tonic;
use futures::FutureExt;
use oci_client::secrets::RegistryAuth;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use weft_api::k8s_openapi::api::core::v1::{Container, Pod};
use weft_wasm_host::{Exit, LogSink, Stream};

use crate::artifacts::{PullError, PullPolicy};
use crate::logs::{self, ContainerLog, Live};
use crate::probes::{Exec, Target};
use crate::workload::{
    Exited, Note, RunningContainer, RunningPod, StartSpec, Started, Teardown, Workload,
    WorkloadError, container, preopens,
};

/// Weft's own containerd namespace: its containers, images and leases
/// never mix with another client's.
pub const NAMESPACE: &str = "weft";
pub const SNAPSHOTTER: &str = "overlayfs";
/// Labels on every container record: how an agent finds its own after a restart.
pub const POD_UID_LABEL: &str = "weft.dev/pod-uid";
pub const NODE_LABEL: &str = "weft.dev/node";
pub const CONTAINER_LABEL: &str = "weft.dev/container";

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("connecting to containerd at {path}: {message}")]
    Connect { path: PathBuf, message: String },
}

/// How the node runs container pods.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    /// The container pod CIDR (addresses on the bridge and in pods' namespaces).
    pub pod_cidr: String,
    pub bridge: String,
    pub cni_plugin_dir: PathBuf,
    pub allow_privileged: bool,
    /// What containers' /etc/resolv.conf names (kubelet's --cluster-dns and
    /// --cluster-domain); without a server the agent looks up the kube-dns
    /// Service when it starts.
    pub dns: resolv::ClusterDns,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: "/run/containerd/containerd.sock".into(),
            pod_cidr: "10.88.0.0/16".into(),
            bridge: "weft0".into(),
            cni_plugin_dir: "/usr/lib/cni".into(),
            allow_privileged: false,
            dns: resolv::ClusterDns {
                server: None,
                domain: "cluster.local".into(),
            },
        }
    }
}

/// The container runtime over containerd (`C`) and a pod network (`N`):
/// the real ones, or fakes in unit tests.
pub struct ContainerdRuntime<C = Conn, N = cni::Cni> {
    conn: C,
    cni: N,
    node: String,
    /// Per-pod state that outlives the agent: FIFOs and the pod IP.
    pods_dir: PathBuf,
    live: Arc<Live>,
    log_max_size: u64,
    exits: mpsc::UnboundedSender<Exited>,
    allow_privileged: bool,
    dns: resolv::ClusterDns,
    pub version: String,
}

/// The containerd ID of a pod's container.
pub fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}-{name}")
}

impl ContainerdRuntime {
    /// Connects to containerd; an error means this node runs Wasm only.
    pub async fn connect(
        cfg: &ContainerdConfig,
        node: String,
        data_dir: &Path,
        live: Arc<Live>,
        log_max_size: u64,
        exits: mpsc::UnboundedSender<Exited>,
    ) -> Result<ContainerdRuntime, ContainerdError> {
        let (conn, version) = Conn::connect(&cfg.socket).await?;
        let cni = cni::Cni::new(
            cfg.cni_plugin_dir.clone(),
            &cfg.bridge,
            &cfg.pod_cidr,
            &data_dir.join("cni"),
        );
        if !cni.available() {
            return Err(ContainerdError::Connect {
                path: cfg.socket.clone(),
                message: format!(
                    "CNI plugins bridge, host-local and loopback are not all in {}",
                    cfg.cni_plugin_dir.display()
                ),
            });
        }
        Ok(ContainerdRuntime {
            conn,
            cni,
            node,
            pods_dir: data_dir.join("pods"),
            live,
            log_max_size,
            exits,
            allow_privileged: cfg.allow_privileged,
            dns: cfg.dns.clone(),
            version,
        })
    }

    /// Container pods take their IPs from `subnet` from now on, on links
    /// of `mtu` bytes if given.
    pub fn set_pod_network(&mut self, subnet: &str, mtu: Option<u32>) {
        self.cni.set_subnet(subnet, mtu);
    }
}

impl<C: Containerd, N: PodNetwork> ContainerdRuntime<C, N> {
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    fn ip_file(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("ip")
    }

    /// The pod's network: the existing one (a container restart, or an agent
    /// restart), or a new namespace attached by CNI.
    async fn network(&self, uid: &str) -> Result<Ipv4Addr, WorkloadError> {
        if self.cni.exists(uid)
            && let Some(ip) = std::fs::read_to_string(self.ip_file(uid))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        {
            return Ok(ip);
        }
        // Half-made leftovers of a crash: detach before attaching again.
        self.cni.del(uid).await;
        let ip = self
            .cni
            .add(uid)
            .await
            .map_err(|e| WorkloadError::Create(format!("pod network: {e}")))?;
        let file = self.ip_file(uid);
        let _ = std::fs::create_dir_all(self.pod_dir(uid));
        std::fs::write(&file, ip.to_string())
            .map_err(|e| WorkloadError::Create(format!("{}: {e}", file.display())))?;
        Ok(ip)
    }

    /// FIFO paths for a container's stdout and stderr, created if missing.
    fn fifos(&self, uid: &str, name: &str) -> Result<(PathBuf, PathBuf), WorkloadError> {
        let dir = self.pod_dir(uid).join("fifo");
        std::fs::create_dir_all(&dir)
            .map_err(|e| WorkloadError::Create(format!("{}: {e}", dir.display())))?;
        let make = |suffix: &str| -> Result<PathBuf, WorkloadError> {
            let p = dir.join(format!("{name}.{suffix}"));
            if !p.exists() {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(|e| WorkloadError::Create(format!("mkfifo {}: {e}", p.display())))?;
            }
            Ok(p)
        };
        Ok((make("stdout")?, make("stderr")?))
    }

    /// Pulls and unpacks the container's image, reporting as kubelet does.
    async fn image(
        &self,
        c: &Container,
        spec: &StartSpec,
    ) -> Result<pull::Unpacked, WorkloadError> {
        let image = c.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_container(c.image_pull_policy.as_deref(), &image);
        let auth = crate::artifacts::auth_for(&image, &spec.pull_secrets);
        let report = spec.report.clone();
        let last = std::sync::Mutex::new(std::time::Instant::now());
        let progress = |p: pull::Progress| {
            let mut last = last.lock().expect("progress clock");
            if last.elapsed() >= Duration::from_secs(1) || p.done == p.total {
                *last = std::time::Instant::now();
                report(Note::Waiting {
                    reason: "ContainerCreating",
                    message: format!(
                        "Pulling image {:?}: {} of {} bytes",
                        p.image, p.done, p.total
                    ),
                });
            }
        };
        // As kubelet: `Pulling` only when the registry is asked.
        if policy == PullPolicy::Always || !self.has_image(&image).await {
            report(Note::Event {
                warning: false,
                reason: "Pulling",
                message: format!("Pulling image {image:?}"),
            });
        }
        match self.conn.pull(&image, policy, &auth, &progress).await {
            Ok((u, outcome)) => {
                let message = match outcome {
                    pull::Outcome::AlreadyPresent => {
                        format!("Container image {image:?} already present on machine")
                    }
                    pull::Outcome::Pulled { bytes, took } => format!(
                        "Successfully pulled image {image:?} in {took:.3?}. Image size: {bytes} bytes."
                    ),
                };
                report(Note::Event {
                    warning: false,
                    reason: "Pulled",
                    message,
                });
                Ok(u)
            }
            Err(e) => {
                report(Note::Event {
                    warning: true,
                    reason: "Failed",
                    message: format!("Failed to pull image {image:?}: {e}"),
                });
                Err(WorkloadError::Pull(e))
            }
        }
    }

    /// Creates and starts one container; returns its spec's process (for exec).
    async fn create(
        &self,
        pod: &Pod,
        c: &Container,
        spec: &StartSpec,
        id: &str,
        unpacked: &pull::Unpacked,
    ) -> Result<oci_spec::runtime::Process, WorkloadError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let volumes = preopens(c, &spec.volumes)?;
        let env = spec.env.get(&c.name).cloned().unwrap_or_default();
        let resolv_conf = self.pod_dir(&uid).join("resolv.conf");
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        std::fs::write(&resolv_conf, resolv::resolv_conf(pod, &self.dns, &host))
            .map_err(|e| WorkloadError::Config(format!("writing resolv.conf: {e}")))?;
        let oci = spec::build(
            pod,
            c,
            &spec::Inputs {
                image: unpacked.config.config().as_ref(),
                env: &env,
                volumes: &volumes,
                netns: cni::netns_path(&uid),
                cgroups_path: format!("/weft/{id}"),
                allow_privileged: self.allow_privileged,
                resolv_conf: Some(resolv_conf.clone()),
            },
        )
        .map_err(|e| WorkloadError::Config(e.0))?;
        // Leftovers of an earlier run of this container go first.
        conn::remove(&self.conn, id, Duration::ZERO).await;
        let (stdout, stderr) = self.fifos(&uid, &c.name)?;
        let labels = HashMap::from([
            (POD_UID_LABEL.to_string(), uid.clone()),
            (NODE_LABEL.to_string(), self.node.clone()),
            (CONTAINER_LABEL.to_string(), c.name.clone()),
        ]);
        let process = oci.process().clone().unwrap_or_default();
        let new = NewContainer {
            id: id.into(),
            labels,
            image: crate::artifacts::normalize(c.image.as_deref().unwrap_or_default())
                .unwrap_or_default(),
            spec: oci,
            parent: unpacked.top.clone(),
            stdout,
            stderr,
        };
        if let Err(e) = self.conn.create(new).await {
            conn::remove(&self.conn, id, Duration::ZERO).await;
            return Err(e);
        }
        Ok(process)
    }

    /// Copies a container's output into its log file. The FIFOs are open
    /// before the task is created: the shim waits for a reader.
    fn copy_output(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        uid: &str,
        name: &str,
        log: Arc<ContainerLog>,
    ) -> Result<(), WorkloadError> {
        let (stdout, stderr) = self.fifos(uid, name)?;
        for (path, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            // Read-write, so that it never sees end-of-file between writers
            // (an agent restart reopens it while the container keeps writing).
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&path)
                .map_err(|e| WorkloadError::Create(format!("{}: {e}", path.display())))?;
            tasks.spawn(copy_fifo(rx, stream, log.clone()));
        }
        Ok(())
    }

    /// Reports a running container's exit (OOMKilled from its memory cgroup).
    fn watch_exit(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        uid: &str,
        name: &str,
        run: u32,
        id: &str,
    ) {
        let conn = self.conn.clone();
        let exits = self.exits.clone();
        let (pod_uid, container, id) = (uid.to_string(), name.to_string(), id.to_string());
        tasks.spawn(async move {
            let status = loop {
                match conn.wait(&id, "").await {
                    Ok(s) => break s,
                    Err(e) if e.code() == tonic::Code::NotFound => break 255,
                    Err(e) => {
                        tracing::warn!(container = %id, "wait: {}", e.message());
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            let exit = if oom_killed(&id) {
                Exit::OutOfMemory("the container exceeded its memory limit".into())
            } else {
                Exit::Code(status as i32)
            };
            // Let the FIFO readers drain what the process wrote last.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = exits.send(Exited {
                pod_uid,
                container,
                run,
                exit,
            });
        });
    }

    /// An exec probe's command in container `id`: its exit code.
    fn exec(&self, id: &str, process: oci_spec::runtime::Process) -> Exec {
        let conn = self.conn.clone();
        let id = id.to_string();
        Arc::new(move |cmd: Vec<String>| {
            let (conn, id, mut process) = (conn.clone(), id.clone(), process.clone());
            process.set_args(Some(cmd));
            async move { conn.exec(&id, process).await }.boxed()
        })
    }
}

/// Whether the kernel OOM-killed something in container `id`'s memory
/// cgroup (v1 `memory.oom_control`, v2 `memory.events`).
fn oom_killed(id: &str) -> bool {
    let v1 = format!("/sys/fs/cgroup/memory/weft/{id}/memory.oom_control");
    let v2 = format!("/sys/fs/cgroup/weft/{id}/memory.events");
    [v1, v2].iter().any(|p| {
        std::fs::read_to_string(p).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

/// Copies a container's output FIFO into its log, line by line.
async fn copy_fifo(
    mut rx: tokio::net::unix::pipe::Receiver,
    stream: Stream,
    log: Arc<ContainerLog>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        // Whole lines go out as they complete; a long partial line at 16 KiB (CRI's P tag).
        if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
            log.write(stream, &pending[..=end]);
            pending.drain(..=end);
        } else if pending.len() >= 16 << 10 {
            log.write(stream, &pending);
            pending.clear();
        }
    }
}

impl<C: Containerd, N: PodNetwork> ContainerdRuntime<C, N> {
    /// Starts container `c` of pod `uid`, or adopts it when it is still
    /// running (an agent restart).
    async fn start_container(
        &self,
        pod: &Pod,
        c: &Container,
        spec: &StartSpec,
        adopt: bool,
    ) -> Result<RunningContainer, WorkloadError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let id = container_id(&uid, &c.name);
        let adopt = adopt && self.conn.running(&id).await;
        let mut tasks = tokio::task::JoinSet::new();
        let restarts = spec.restarts_of(&c.name);
        let log_path = logs::run_path(&spec.log_dir, &c.name, restarts);
        if !adopt {
            logs::prune(&spec.log_dir, &c.name, restarts);
        }
        let log = ContainerLog::create(log_path.clone(), self.log_max_size, self.live.clone())
            .map_err(|e| WorkloadError::Create(format!("log {}: {e}", log_path.display())))?;
        self.copy_output(&mut tasks, &uid, &c.name, log)?;
        let (unpacked, process) = if adopt {
            (self.image_record(c).await, self.process_of(&id).await)
        } else {
            let u = self.image(c, spec).await?;
            let process = self.create(pod, c, spec, &id, &u).await?;
            (spec.report)(Note::Event {
                warning: false,
                reason: "Started",
                message: format!("Started container {}", c.name),
            });
            (Some(u), Some(process))
        };
        self.watch_exit(&mut tasks, &uid, &c.name, restarts, &id);
        let probe = Target {
            handler: None,
            exec: process.map(|p| self.exec(&id, p)),
        };
        let started = Started {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: unpacked.map(|u| u.digest).unwrap_or_default(),
            command: false,
            id: format!("containerd://{id}"),
        };
        let conn = self.conn.clone();
        let teardown: Teardown =
            Box::new(move |grace| async move { conn::remove(&conn, &id, grace).await }.boxed());
        Ok(RunningContainer::new(started, probe, tasks).with_teardown(teardown))
    }

    async fn start_pod(&self, pod: &Pod, spec: &StartSpec) -> Result<RunningPod, WorkloadError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ip = self.network(&uid).await?;
        let mut containers = Vec::new();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            containers.push(self.start_container(pod, c, spec, true).await?);
        }
        Ok(RunningPod { ip, containers })
    }

    /// Whether pod `uid` runs here as containers (it has a network).
    pub fn has_pod(&self, uid: &str) -> bool {
        self.ip_file(uid).exists()
    }

    /// Stops and deletes every container of pod `uid`.
    async fn remove_containers(&self, uid: &str) {
        for (id, _) in self.conn.list(POD_UID_LABEL, uid).await {
            conn::remove(&self.conn, &id, Duration::ZERO).await;
        }
    }
}

impl<C: Containerd, N: PodNetwork> Workload for ContainerdRuntime<C, N> {
    async fn start(&self, pod: &Pod, spec: &StartSpec) -> Result<RunningPod, WorkloadError> {
        let started = self.start_pod(pod, spec).await;
        if started.is_err() {
            // A pod starts whole or not at all: no container of a failed start keeps running.
            self.remove_containers(pod.metadata.uid.as_deref().unwrap_or_default())
                .await;
        }
        started
    }

    async fn restart(
        &self,
        pod: &Pod,
        name: &str,
        spec: &StartSpec,
    ) -> Result<RunningContainer, WorkloadError> {
        self.start_container(pod, container(pod, name)?, spec, false)
            .await
    }

    async fn release(&self, uid: &str) {
        self.remove_containers(uid).await;
        // Only container pods have a network (Wasm pods share the pods/ directory for volumes).
        if self.has_pod(uid) {
            self.cni.del(uid).await;
            let _ = std::fs::remove_file(self.ip_file(uid));
            let _ = std::fs::remove_dir_all(self.pod_dir(uid).join("fifo"));
        }
    }

    async fn collect_garbage(&self, keep: &HashSet<String>) {
        let mut gone: HashSet<String> = self
            .conn
            .list(NODE_LABEL, &self.node)
            .await
            .into_iter()
            .filter_map(|(_, labels)| labels.get(POD_UID_LABEL).cloned())
            .filter(|uid| !keep.contains(uid))
            .collect();
        // Networks of pods that no longer exist (their containers may be gone already).
        if let Ok(dir) = std::fs::read_dir(&self.pods_dir) {
            for e in dir.flatten() {
                let uid = e.file_name().to_string_lossy().to_string();
                if !keep.contains(&uid) && e.path().join("ip").exists() {
                    gone.insert(uid);
                }
            }
        }
        for uid in gone {
            tracing::info!(pod = %uid, "removing the containers of a pod that no longer exists");
            self.release(&uid).await;
        }
    }
}

impl<C: Containerd, N: PodNetwork> ContainerdRuntime<C, N> {
    /// Whether containerd already has `image` (so no registry is asked).
    pub async fn has_image(&self, image: &str) -> bool {
        self.conn.has_image(image).await
    }

    /// The image an adopted container runs (for its status), if still recorded.
    async fn image_record(&self, c: &Container) -> Option<pull::Unpacked> {
        let image = c.image.clone().unwrap_or_default();
        self.conn
            .pull(&image, PullPolicy::Never, &RegistryAuth::Anonymous, &|_| {})
            .await
            .map(|(u, _)| u)
            .ok()
    }

    /// An adopted container's process spec, for exec probes.
    async fn process_of(&self, id: &str) -> Option<oci_spec::runtime::Process> {
        self.conn.spec(id).await?.process().clone()
    }
}

/// Decides whether `image` is a Wasm artifact (else a container image) from
/// its manifest, without fetching layers.
pub async fn is_wasm_image(image: &str, auth: &RegistryAuth) -> Result<bool, PullError> {
    let reference = crate::artifacts::parse(image)?;
    let client = crate::artifacts::client_for(&reference);
    let (manifest, _, _) = client
        .pull_manifest_and_config(&reference, auth)
        .await
        .map_err(|e| PullError::Pull {
            image: image.into(),
            message: e.to_string(),
        })?;
    Ok(pull::is_wasm(&manifest))
}
