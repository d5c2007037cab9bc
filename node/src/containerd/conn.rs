//! containerd as the runtime sees it: one narrow trait ([`Containerd`]),
//! so that the paths of a pod (create, fail and clean up, adopt, stop) are
//! unit-tested with a fake; and its implementation over the real gRPC
//! connection ([`Conn`]), with requests in Weft's namespace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container as CtrContainer, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetContainerRequest,
    GetImageRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::{self, Request};
use containerd_client::types::v1::Status as TaskStatus;
use oci_client::secrets::RegistryAuth;
use prost_types::Any;

use super::pull::{Outcome, Progress, Unpacked};
use super::{ContainerdError, NAMESPACE, SNAPSHOTTER};
use crate::artifacts::{PullError, PullPolicy};
use crate::workload::WorkloadError;

const RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// A container to create and start.
pub struct NewContainer {
    pub id: String,
    /// Pod, node and container: how an agent finds its own after a restart.
    pub labels: HashMap<String, String>,
    /// The normalized image reference the record names.
    pub image: String,
    pub spec: oci_spec::runtime::Spec,
    /// The snapshot its root filesystem is prepared from (the image's top layer).
    pub parent: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// What the container runtime asks of containerd.
pub trait Containerd: Clone + Send + Sync + 'static {
    /// Whether containerd has `image` (so no registry is asked).
    fn has_image(&self, image: &str) -> impl Future<Output = bool> + Send;

    /// Pulls and unpacks `image` by `policy`.
    fn pull(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &RegistryAuth,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> impl Future<Output = Result<(Unpacked, Outcome), PullError>> + Send;

    /// Prepares the container's snapshot, creates its record and task, and
    /// starts the task. What it made stays on failure: [`remove`] undoes it.
    fn create(&self, c: NewContainer) -> impl Future<Output = Result<(), WorkloadError>> + Send;

    /// Whether container `id`'s task is running.
    fn running(&self, id: &str) -> impl Future<Output = bool> + Send;

    fn kill(&self, id: &str, signal: u32) -> impl Future<Output = ()> + Send;

    /// Waits for a task (or one of its exec processes) to exit; its status.
    fn wait(
        &self,
        id: &str,
        exec_id: &str,
    ) -> impl Future<Output = Result<u32, tonic::Status>> + Send;

    /// Deletes container `id`'s task, record and snapshot; whatever is
    /// already gone is skipped.
    fn delete(&self, id: &str) -> impl Future<Output = ()> + Send;

    /// Container records carrying `label=value`: (id, labels).
    fn list(
        &self,
        label: &str,
        value: &str,
    ) -> impl Future<Output = Vec<(String, HashMap<String, String>)>> + Send;

    /// Container `id`'s runtime spec, if it is recorded.
    fn spec(&self, id: &str) -> impl Future<Output = Option<oci_spec::runtime::Spec>> + Send;

    /// Runs `process` in container `id` (an exec probe): its exit code.
    fn exec(
        &self,
        id: &str,
        process: oci_spec::runtime::Process,
    ) -> impl Future<Output = Result<i32, String>> + Send;
}

/// Stops container `id` (SIGTERM, then SIGKILL after `grace`) and deletes
/// its task, record and snapshot.
pub async fn remove(c: &impl Containerd, id: &str, grace: Duration) {
    if c.running(id).await {
        c.kill(id, libc_signal::SIGTERM).await;
        if tokio::time::timeout(grace, c.wait(id, "")).await.is_err() {
            c.kill(id, libc_signal::SIGKILL).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait(id, "")).await;
        }
    }
    c.delete(id).await;
}

/// A connection to containerd, scoped to Weft's namespace. It derefs to
/// containerd-client's `Client` for the service clients.
#[derive(Clone)]
pub struct Conn {
    pub(super) client: Arc<containerd_client::Client>,
    /// One pull per image at a time: concurrent pulls of one image would
    /// collide on its content refs and snapshots.
    pub(super) pulls: Arc<crate::keyed_lock::KeyedLock>,
}

impl std::ops::Deref for Conn {
    type Target = containerd_client::Client;

    fn deref(&self) -> &containerd_client::Client {
        &self.client
    }
}

impl Conn {
    /// Connects and checks that containerd answers.
    pub async fn connect(socket: &Path) -> Result<(Conn, String), ContainerdError> {
        let err = |message: String| ContainerdError::Connect {
            path: socket.to_path_buf(),
            message,
        };
        if !socket.exists() {
            return Err(err("no such socket".into()));
        }
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| err(e.to_string()))?;
        let conn = Conn {
            client: Arc::new(channel.into()),
            pulls: Default::default(),
        };
        let version = conn
            .version()
            .version(())
            .await
            .map_err(|e| err(e.message().to_string()))?
            .into_inner()
            .version;
        Ok((conn, version))
    }

    /// A request in Weft's namespace.
    pub(super) fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        r.metadata_mut().insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static(NAMESPACE),
        );
        r
    }

    /// A request whose resources belong to `lease` until it is deleted.
    pub(super) fn leased<T>(&self, m: T, lease: &str) -> Request<T> {
        let mut r = self.req(m);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }
}

/// Signal numbers (Linux), without a libc dependency here.
mod libc_signal {
    pub const SIGTERM: u32 = 15;
    pub const SIGKILL: u32 = 9;
}

impl Containerd for Conn {
    async fn has_image(&self, image: &str) -> bool {
        let Ok(name) = crate::artifacts::normalize(image) else {
            return false;
        };
        self.images()
            .get(self.req(GetImageRequest { name }))
            .await
            .is_ok()
    }

    async fn pull(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &RegistryAuth,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(Unpacked, Outcome), PullError> {
        self.pull_image(image, policy, auth, progress).await
    }

    async fn create(&self, c: NewContainer) -> Result<(), WorkloadError> {
        let id = c.id.clone();
        let create = |what: &str, e: tonic::Status| {
            WorkloadError::Create(format!("{what} {id}: {}", e.message()))
        };
        let mounts = self
            .snapshots()
            .prepare(self.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: c.id.clone(),
                parent: c.parent,
                labels: HashMap::new(),
            }))
            .await
            .map_err(|e| create("snapshot", e))?
            .into_inner()
            .mounts;
        let record = CtrContainer {
            id: c.id.clone(),
            labels: c.labels,
            image: c.image,
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.into(),
                value: serde_json::to_vec(&c.spec).expect("spec serializes"),
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.clone(),
            ..Default::default()
        };
        self.containers()
            .create(self.req(CreateContainerRequest {
                container: Some(record),
            }))
            .await
            .map_err(|e| create("container", e))?;
        let task = CreateTaskRequest {
            container_id: c.id.clone(),
            rootfs: mounts,
            stdout: c.stdout.display().to_string(),
            stderr: c.stderr.display().to_string(),
            ..Default::default()
        };
        self.tasks()
            .create(self.req(task))
            .await
            .map_err(|e| create("task", e))?;
        self.tasks()
            .start(self.req(StartRequest {
                container_id: c.id,
                exec_id: String::new(),
            }))
            .await
            .map_err(|e| create("start", e))?;
        Ok(())
    }

    async fn running(&self, id: &str) -> bool {
        match self
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .process
                .is_some_and(|p| p.status == TaskStatus::Running as i32),
            Err(_) => false,
        }
    }

    async fn kill(&self, id: &str, signal: u32) {
        let _ = self
            .tasks()
            .kill(self.req(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all: true,
            }))
            .await;
    }

    async fn wait(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
        Ok(self
            .tasks()
            .wait(self.req(WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await?
            .into_inner()
            .exit_status)
    }

    async fn delete(&self, id: &str) {
        let _ = self
            .tasks()
            .delete(self.req(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await;
        let _ = self
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.into() }))
            .await;
        let _ = self
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            }))
            .await;
    }

    async fn list(&self, label: &str, value: &str) -> Vec<(String, HashMap<String, String>)> {
        let filter = format!("labels.\"{label}\"=={value}");
        match self
            .containers()
            .list(self.req(ListContainersRequest {
                filters: vec![filter],
            }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .containers
                .into_iter()
                .map(|c| (c.id, c.labels))
                .collect(),
            Err(e) => {
                tracing::warn!("listing containers: {}", e.message());
                Vec::new()
            }
        }
    }

    async fn spec(&self, id: &str) -> Option<oci_spec::runtime::Spec> {
        let c = self
            .containers()
            .get(self.req(GetContainerRequest { id: id.into() }))
            .await
            .ok()?
            .into_inner()
            .container?;
        serde_json::from_slice(&c.spec?.value).ok()
    }

    async fn exec(&self, id: &str, mut process: oci_spec::runtime::Process) -> Result<i32, String> {
        process.set_terminal(Some(false));
        let exec_id = format!("probe-{:08x}", rand::random::<u32>());
        let spec = Any {
            type_url: PROCESS_TYPE.into(),
            value: serde_json::to_vec(&process).map_err(|e| e.to_string())?,
        };
        let msg = |e: tonic::Status| e.message().to_string();
        self.tasks()
            .exec(self.req(ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
                spec: Some(spec),
                ..Default::default()
            }))
            .await
            .map_err(msg)?;
        let delete = || async {
            let _ = self
                .tasks()
                .delete_process(self.req(DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.clone(),
                }))
                .await;
        };
        if let Err(e) = self
            .tasks()
            .start(self.req(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            }))
            .await
        {
            delete().await;
            return Err(msg(e));
        }
        let waited = self.wait(id, &exec_id).await;
        delete().await;
        waited.map(|s| s as i32).map_err(msg)
    }
}
