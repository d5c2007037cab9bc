//! The connection to containerd: requests in Weft's namespace, and the task
//! and container calls every part of the runtime makes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    DeleteContainerRequest, DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest,
    WaitRequest,
};
use containerd_client::tonic::{self, Request};
use containerd_client::types::v1::Status as TaskStatus;

use super::{ContainerdError, NAMESPACE, SNAPSHOTTER};

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

    /// Waits for a task (or one of its exec processes) to exit; its status.
    pub(super) async fn wait(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
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

    pub(super) async fn kill(&self, id: &str, signal: u32) {
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

    /// Whether container `id`'s task is running.
    pub(super) async fn running(&self, id: &str) -> bool {
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

    /// Stops container `id` (SIGTERM, then SIGKILL after `grace`) and deletes
    /// its task, record and snapshot. Whatever is already gone is skipped.
    pub(super) async fn remove(&self, id: &str, grace: Duration) {
        if self.running(id).await {
            self.kill(id, libc_signal::SIGTERM).await;
            if tokio::time::timeout(grace, self.wait(id, ""))
                .await
                .is_err()
            {
                self.kill(id, libc_signal::SIGKILL).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id, "")).await;
            }
        }
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

    /// Container records carrying `label=value`: (id, labels).
    pub(super) async fn list(
        &self,
        label: &str,
        value: &str,
    ) -> Vec<(String, HashMap<String, String>)> {
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
}

/// Signal numbers (Linux), without a libc dependency here.
mod libc_signal {
    pub const SIGTERM: u32 = 15;
    pub const SIGKILL: u32 = 9;
}
