//! Static pods (kubelet's `--pod-manifest-path`): one mirror pod in the API
//! per manifest, kept on a task of its own. The pod loop then runs the
//! mirror pods like any other pod bound to the node.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use tokio::sync::watch as signal;
use weft_api::k8s_openapi::api::core::v1::Pod;

use crate::static_pods;

/// How often the static pod manifests are read (kubelet: 20 s).
const STATIC_POD_CHECK: Duration = Duration::from_secs(2);

/// Keeps the mirror pods in step with the manifests in `dir` until `stop`.
pub(super) async fn sync_loop(
    client: kube::Client,
    node: String,
    dir: PathBuf,
    mut stop: signal::Receiver<bool>,
) {
    let mut check = tokio::time::interval(STATIC_POD_CHECK);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = check.tick() => sync(&client, &node, &dir).await,
        }
    }
}

/// One mirror pod per static pod manifest (see `static_pods`).
async fn sync(client: &kube::Client, node: &str, dir: &std::path::Path) {
    let mut desired = Vec::new();
    for (file, manifest) in static_pods::read_dir(dir) {
        match manifest.and_then(|m| static_pods::mirror(&m, node)) {
            Ok(p) => desired.push(p),
            Err(e) => tracing::warn!(file, "static pod manifest: {e}"),
        }
    }
    let all: Api<Pod> = Api::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
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
    let api = |ns: &str| Api::<Pod>::namespaced(client.clone(), ns);
    let plan = static_pods::plan(&desired, &existing);
    for (ns, name) in plan.delete {
        if let Err(e) = api(&ns).delete(&name, &DeleteParams::default()).await {
            tracing::warn!(pod = %name, "deleting a stale mirror pod: {e}");
        }
    }
    for pod in plan.create {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        match api(&ns).create(&Default::default(), &pod).await {
            Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
            Err(e) => tracing::warn!(pod = ?pod.metadata.name, "creating a mirror pod: {e}"),
        }
    }
}
