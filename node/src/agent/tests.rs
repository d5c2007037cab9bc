//! The pod loop on a fake workload and a recording API, in paused time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_api::k8s_openapi::api::core::v1::Pod;

use super::fake::{Call, RecordingApi};
use super::pods::PodLoop;
use super::{AgentConfig, IpPool};
use crate::probes::Target;
use crate::workload::{
    RunningContainer, RunningPod, StartSpec, Started, Workload, WorkloadError, container,
};

/// Starts pods at once, but those named in `slow` take a minute; counts stops.
#[derive(Default)]
struct FakeWorkload {
    slow: HashSet<String>,
    started: Mutex<Vec<String>>,
    stopped: Arc<AtomicUsize>,
}

impl FakeWorkload {
    fn run(&self, pod: &Pod, name: &str) -> RunningContainer {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let started = Started {
            name: name.into(),
            image: "reg/app:1".into(),
            image_id: "sha256:ab".into(),
            command: false,
            id: format!("fake://{uid}/{name}"),
        };
        let stopped = self.stopped.clone();
        RunningContainer::new(started, Target::default(), tokio::task::JoinSet::new())
            .with_teardown(Box::new(move |_grace| {
                Box::pin(async move {
                    stopped.fetch_add(1, Ordering::SeqCst);
                })
            }))
    }
}

impl Workload for FakeWorkload {
    async fn start(&self, pod: &Pod, spec: &StartSpec) -> Result<RunningPod, WorkloadError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if self.slow.contains(&name) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        self.started.lock().unwrap().push(name);
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        Ok(RunningPod {
            ip: spec.ip,
            containers: containers.map(|c| self.run(pod, &c.name)).collect(),
        })
    }

    async fn restart(
        &self,
        pod: &Pod,
        name: &str,
        _spec: &StartSpec,
    ) -> Result<RunningContainer, WorkloadError> {
        Ok(self.run(pod, &container(pod, name)?.name))
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "reg/app:1"}]}}))
    .unwrap()
}

struct Harness {
    api: Arc<RecordingApi>,
    workload: Arc<FakeWorkload>,
    events: mpsc::UnboundedSender<Result<watcher::Event<Pod>, watcher::Error>>,
    exits: mpsc::UnboundedSender<crate::workload::Exited>,
    _stop: signal::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(workload: FakeWorkload) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig::new("n1".into(), dir.path().into());
        let (api, workload) = (Arc::new(RecordingApi::default()), Arc::new(workload));
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let pool = IpPool::parse("127.10.0.0/24").unwrap();
        let (pods, inbox) = PodLoop::new(cfg, workload.clone(), api.clone(), pool, exits);
        let (events, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = signal::channel(false);
        tokio::spawn(pods.run(stopped, UnboundedReceiverStream::new(rx), inbox));
        Harness {
            api,
            workload,
            events,
            exits: exits_tx,
            _stop: stop,
            _dir: dir,
        }
    }

    fn apply(&self, pod: Pod) {
        self.events.send(Ok(watcher::Event::Apply(pod))).unwrap();
    }

    /// Each status write's phase and its first container's waiting reason, for `pod`.
    fn phases(&self, pod: &str) -> Vec<String> {
        self.api
            .statuses(pod)
            .iter()
            .map(|s| {
                let waiting = &s["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
                format!(
                    "{}{}",
                    s["status"]["phase"].as_str().unwrap_or(""),
                    waiting
                        .as_str()
                        .map(|w| format!(" {w}"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_start_holds_up_no_other_pod() {
    let h = Harness::start(FakeWorkload {
        slow: ["slow".to_string()].into(),
        ..Default::default()
    });
    h.apply(pod("slow"));
    for i in 0..5 {
        h.apply(pod(&format!("fast-{i}")));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        assert_eq!(h.phases(&format!("fast-{i}")), ["Running"], "fast-{i}");
    }
    assert_eq!(h.phases("slow"), ["Pending ContainerCreating"]);
    assert!(!h.workload.started.lock().unwrap().contains(&"slow".into()));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.phases("slow"), ["Pending ContainerCreating", "Running"]);
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_while_it_starts_is_stopped_once_its_start_returns() {
    let h = Harness::start(FakeWorkload {
        slow: ["slow".to_string()].into(),
        ..Default::default()
    });
    h.apply(pod("slow"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut deleted = serde_json::to_value(pod("slow")).unwrap();
    deleted["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
    let deleted: Pod = serde_json::from_value(deleted).unwrap();
    h.apply(deleted.clone());
    // A second event for the same deletion changes nothing.
    h.apply(deleted);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.workload.stopped.load(Ordering::SeqCst),
        0,
        "still starting"
    );
    assert!(
        !h.api
            .calls
            .lock()
            .unwrap()
            .contains(&Call::FinishDeletion("slow".into()))
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        h.workload.stopped.load(Ordering::SeqCst),
        1,
        "stopped once started"
    );
    let calls = h.api.calls.lock().unwrap().clone();
    let finished = calls
        .iter()
        .filter(|c| **c == Call::FinishDeletion("slow".into()))
        .count();
    assert_eq!(finished, 1, "{calls:?}");
}

/// A command that exits before its start has reported back still counts:
/// the pod's restartPolicy sees every run's exit.
#[tokio::test(start_paused = true)]
async fn exits_that_beat_their_start_back_are_not_lost() {
    let h = Harness::start(FakeWorkload {
        slow: ["job".to_string()].into(),
        ..Default::default()
    });
    let mut job = serde_json::to_value(pod("job")).unwrap();
    job["spec"]["restartPolicy"] = json!("OnFailure");
    h.apply(serde_json::from_value(job).unwrap());
    let exit = |run, code| crate::workload::Exited {
        pod_uid: "uid-job".into(),
        container: "app".into(),
        run,
        exit: weft_wasm_host::Exit::Code(code),
    };
    // Run 0 exits while its start is still in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.exits.send(exit(0, 3)).unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let last = h.api.statuses("job").last().cloned().unwrap();
    let app = &last["status"]["containerStatuses"][0];
    assert_eq!(app["lastState"]["terminated"]["exitCode"], 3, "{last}");
    assert_eq!(app["restartCount"], 1);
    assert_eq!(app["state"]["waiting"]["reason"], "CrashLoopBackOff");
    // After the 10 s backoff run 1 starts; its exit 0 completes the pod.
    tokio::time::sleep(Duration::from_secs(12)).await;
    h.exits.send(exit(1, 0)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = h.api.statuses("job").last().cloned().unwrap();
    assert_eq!(last["status"]["phase"], "Succeeded", "{last}");
}
