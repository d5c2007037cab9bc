//! The runtime selector: both runtimes of a node behind the one
//! [`Workload`] trait, and which of them runs a pod.

use std::collections::HashSet;

use weft_api::k8s_openapi::api::core::v1::Pod;

use crate::containerd::ContainerdRuntime;
use crate::wasm::WasmRuntime;
use crate::workload::{
    CONTAINERD_HANDLER, Note, RunningContainer, RunningPod, StartSpec, WASM_HANDLER, Workload,
    WorkloadError,
};

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
