//! What controllers and the scheduler ask for, and the one seam through
//! which it is carried out: reconciles return [`Action`]s, [`execute`]
//! turns each into a call on a [`Writer`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weft_api::{Resource, Status, resources};

use super::cache::{Snapshot, object_rev as written_rev};
use super::objects;

/// The served resource with this plural (plurals are unique in Weft's table).
pub fn res(plural: &str) -> &'static Resource {
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .expect("served resource")
}

/// One write a reconcile asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create {
        res: &'static Resource,
        ns: String,
        object: Value,
    },
    /// A JSON merge patch, of the object or its status.
    Patch {
        res: &'static Resource,
        ns: String,
        name: String,
        status: bool,
        patch: Value,
    },
    Delete {
        res: &'static Resource,
        ns: String,
        name: String,
        /// DeleteOptions (propagation, preconditions, grace period).
        options: Value,
    },
    DeleteCollection {
        res: &'static Resource,
        ns: String,
    },
    /// `PUT {ns}/finalize` with the namespace's finalizers emptied.
    FinalizeNamespace {
        object: Value,
    },
    /// A core/v1 Event about `regarding`.
    Event {
        regarding: Arc<Value>,
        warning: bool,
        reason: String,
        message: String,
    },
}

impl Action {
    /// A merge patch of an object's status: `{"status": status}`.
    pub fn patch_status(
        res: &'static Resource,
        ns: impl Into<String>,
        name: impl Into<String>,
        status: Value,
    ) -> Action {
        Action::Patch {
            res,
            ns: ns.into(),
            name: name.into(),
            status: true,
            patch: serde_json::json!({ "status": status }),
        }
    }
}

/// What a reconcile decided.
#[derive(Debug, Default)]
pub struct Outcome {
    pub actions: Vec<Action>,
    /// Look again after this long even if nothing changes (deadlines, schedules).
    pub requeue_after: Option<Duration>,
}

impl Outcome {
    pub fn push(&mut self, a: Action) {
        self.actions.push(a);
    }

    pub fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// The API verbs controllers and the scheduler write with. In the control
/// plane it calls the API server's registry in process (admission,
/// defaults, validation, graceful deletion: the same path as kubectl's);
/// unit tests record the calls. `ns` is empty for cluster-scoped objects.
#[async_trait::async_trait]
pub trait Writer: Send + Sync {
    /// Creates the object; the stored object.
    async fn create(
        &self,
        res: &'static Resource,
        ns: &str,
        object: Value,
    ) -> Result<Value, Status>;
    /// A JSON merge patch of the object or (with `status`) its status.
    async fn patch(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        status: bool,
        patch: Value,
    ) -> Result<Value, Status>;
    /// Deletes with DeleteOptions: the object as marked or removed, or a Status.
    async fn delete(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        options: Value,
    ) -> Result<Value, Status>;
    /// Deletes every object of a resource in `ns`; the store revision after.
    async fn delete_collection(&self, res: &'static Resource, ns: &str) -> Result<u64, Status>;
    /// `PUT namespaces/{name}/finalize` with the namespace as given.
    async fn finalize(&self, namespace: Value) -> Result<Value, Status>;
    /// `pods/{name}/binding`, as kube-scheduler binds.
    async fn bind(&self, ns: &str, name: &str, node: &str) -> Result<(), Status>;
}

/// Whether a pod fits a node by node-level checks only (node selector,
/// affinity, taints, runtime): the scheduler's filters, for controllers
/// that place one pod per node (DaemonSet), as Kubernetes' DaemonSet
/// controller borrows kube-scheduler's predicates.
pub trait NodeFit: Send + Sync {
    fn fits(&self, pod: &Value, node: &Arc<Value>, snap: &Snapshot) -> bool;
}

/// Carries out one action; the resourceVersion it produced (0 if none).
pub async fn execute(writer: &dyn Writer, action: Action) -> Result<u64, Status> {
    match action {
        Action::Create { res, ns, object } => writer
            .create(res, &ns, object)
            .await
            .map(|v| written_rev(&v)),
        Action::Patch {
            res,
            ns,
            name,
            status,
            patch,
        } => writer
            .patch(res, &ns, &name, status, patch)
            .await
            .map(|v| written_rev(&v)),
        Action::Delete {
            res,
            ns,
            name,
            options,
        } => writer
            .delete(res, &ns, &name, options)
            .await
            .map(|v| written_rev(&v)),
        Action::DeleteCollection { res, ns } => writer.delete_collection(res, &ns).await,
        Action::FinalizeNamespace { object } => {
            let mut next = object;
            next["spec"]["finalizers"] = json!([]);
            writer.finalize(next).await.map(|v| written_rev(&v))
        }
        Action::Event {
            regarding,
            warning,
            reason,
            message,
        } => {
            let ev = objects::event(&regarding, warning, &reason, &message);
            let ns = ev["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            // Events are best effort and never waited for.
            writer.create(res("events"), &ns, ev).await.map(|_| 0)
        }
    }
}
