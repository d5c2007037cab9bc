//! Pod starts and container restarts, each on a task of its own: sources,
//! env, volumes, then the runtime (pull, compile, create). At most
//! `max_parallel_starts` run at once; each reports back to the pod loop by
//! message, so the loop never waits for one.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;
use weft_api::k8s_openapi::api::core::v1::Pod;

use super::effects::AgentApi;
use super::pods::Msg;
use super::state::{PodKey, restart_counts, waiting};
use crate::env;
use crate::volumes::{self, Volume};
use crate::workload::{PodEnv, RunningContainer, RunningPod, StartSpec, Workload, WorkloadError};

/// A start still running after this shows the pod as `ContainerCreating`
/// (a fast start writes its status once, Running).
const CREATING_AFTER: Duration = Duration::from_secs(1);

/// A start task's result: the pod as it was started, and what came of it.
pub(super) struct Start {
    pub pod: Pod,
    pub ip: Ipv4Addr,
    pub result: Result<(RunningPod, BTreeMap<String, Volume>), WorkloadError>,
}

/// A container's restart: run `run` of container `name` of a running pod.
pub(super) struct Restart {
    pub key: PodKey,
    pub name: String,
    pub run: u32,
    pub pod: Pod,
    pub ip: Ipv4Addr,
    /// Every container's restart count (names log files).
    pub restarts: HashMap<String, u32>,
    /// The pod's volumes: a restart reuses them.
    pub volumes: BTreeMap<String, Volume>,
}

/// A restart task's result.
pub(super) struct Restarted {
    pub key: PodKey,
    pub name: String,
    pub run: u32,
    pub result: Result<RunningContainer, WorkloadError>,
}

/// Where a pod's logs and volumes live on the node.
pub(super) struct PodDirs {
    pub logs: PathBuf,
    pub volumes: PathBuf,
}

/// Spawns the start and restart tasks.
pub(super) struct Starter<W, A> {
    pub runtime: Arc<W>,
    pub api: Arc<A>,
    pub tx: mpsc::UnboundedSender<Msg>,
    /// Starts and restarts in flight at once.
    pub slots: Arc<Semaphore>,
}

impl<W: Workload, A: AgentApi> Starter<W, A> {
    /// Starts `pod` at `ip`; reports back with [`Msg::Started`].
    pub(super) fn start(&self, pod: Pod, ip: Ipv4Addr, dirs: PodDirs) {
        let key = PodKey::of(&pod);
        let (runtime, api, tx, slots) = (
            self.runtime.clone(),
            self.api.clone(),
            self.tx.clone(),
            self.slots.clone(),
        );
        let span = tracing::info_span!("start", pod = %key.name, namespace = %key.namespace);
        let task = async move {
            let result = {
                let start = async {
                    let _slot = slots.acquire_owned().await;
                    let counts = restart_counts(&pod);
                    let spec = start_spec(&*api, &pod, ip, counts, &dirs, None).await?;
                    let run = runtime.start(&pod, &spec).await?;
                    Ok::<_, WorkloadError>((run, spec.volumes))
                };
                let mut start = std::pin::pin!(start);
                tokio::select! {
                    r = &mut start => r,
                    _ = tokio::time::sleep(CREATING_AFTER) => {
                        // Written before the result is sent, so it cannot
                        // land after the loop's status for the result.
                        let status = waiting(&pod, "ContainerCreating", "");
                        api.patch_status(&key, &status).await;
                        start.await
                    }
                }
            };
            let _ = tx.send(Msg::Started(Box::new(Start { pod, ip, result })));
        };
        tokio::spawn(task.instrument(span));
    }

    /// Starts a container again; reports back with [`Msg::Restarted`].
    pub(super) fn restart(&self, r: Restart, dirs: PodDirs) {
        let (runtime, api, tx, slots) = (
            self.runtime.clone(),
            self.api.clone(),
            self.tx.clone(),
            self.slots.clone(),
        );
        let span = tracing::info_span!("restart", pod = %r.key.name, namespace = %r.key.namespace, container = %r.name);
        let task = async move {
            let Restart {
                key,
                name,
                run,
                pod,
                ip,
                restarts,
                volumes,
            } = r;
            let result = async {
                let _slot = slots.acquire_owned().await;
                let spec = start_spec(&*api, &pod, ip, restarts, &dirs, Some(volumes)).await?;
                runtime.restart(&pod, &name, &spec).await
            }
            .await;
            let r = Restarted {
                key,
                name,
                run,
                result,
            };
            let _ = tx.send(Msg::Restarted(Box::new(r)));
        };
        tokio::spawn(task.instrument(span));
    }
}

/// Env and volumes for a start. A pod's first start sets up its volumes
/// (`volumes` is `None`); a container's restart passes the pod's.
async fn start_spec<A: AgentApi>(
    api: &A,
    pod: &Pod,
    ip: Ipv4Addr,
    restarts: HashMap<String, u32>,
    dirs: &PodDirs,
    volumes: Option<BTreeMap<String, Volume>>,
) -> Result<StartSpec, WorkloadError> {
    let fetched = api.sources(pod).await?;
    let env = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            Ok((
                c.name.clone(),
                env::resolve(pod, c, &fetched).map_err(|e| WorkloadError::Config(e.0))?,
            ))
        })
        .collect::<Result<PodEnv, WorkloadError>>()?;
    let volumes = match volumes {
        Some(v) => v,
        None => volumes::prepare(pod, &fetched, &dirs.volumes)
            .map_err(|e| WorkloadError::Config(e.0))?,
    };
    let handler = match pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
    {
        Some(name) => Some(api.runtime_handler(name).await?),
        None => None,
    };
    Ok(StartSpec {
        ip,
        env,
        volumes,
        log_dir: dirs.logs.clone(),
        restarts,
        handler,
        pull_secrets: fetched.pull_secrets,
        report: api.reporter(pod),
    })
}
