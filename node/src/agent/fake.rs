//! Recording fakes of the agent's API effects and of a runtime, and a
//! harness that runs the pod loop on them, for unit tests in paused time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch as signal};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_api::k8s_openapi::api::core::v1::Pod;

use super::effects::AgentApi;
use super::pods::PodLoop;
use super::state::PodKey;
use super::{AgentConfig, IpPool};
use crate::env;
use crate::probes::{Exec, Target};
use crate::workload::{
    Exited, Report, RunningContainer, RunningPod, StartSpec, Started, Workload, WorkloadError,
    container,
};

/// Every effect, in the order it ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Call {
    Status(String, Value),
    Event(String, String),
    FinishDeletion(String),
}

#[derive(Default)]
pub(super) struct RecordingApi {
    pub calls: Mutex<Vec<Call>>,
    /// How long each status write takes.
    pub write_time: Duration,
}

impl RecordingApi {
    /// The reasons of the events about `pod`, in order.
    pub fn events(&self, pod: &str) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Event(p, reason) if p == pod => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn finished(&self, pod: &str) -> bool {
        let call = Call::FinishDeletion(pod.into());
        self.calls.lock().unwrap().contains(&call)
    }

    pub fn statuses(&self, pod: &str) -> Vec<Value> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Status(p, v) if p == pod => Some(v.clone()),
                _ => None,
            })
            .collect()
    }
}

impl AgentApi for RecordingApi {
    async fn patch_status(&self, key: &PodKey, status: &Value) {
        tokio::time::sleep(self.write_time).await;
        let call = Call::Status(key.name.clone(), status.clone());
        self.calls.lock().unwrap().push(call);
    }

    async fn event(&self, key: &PodKey, _warning: bool, reason: &str, _message: &str) {
        let call = Call::Event(key.name.clone(), reason.to_string());
        self.calls.lock().unwrap().push(call);
    }

    async fn current(&self, _key: &PodKey) -> Option<Pod> {
        None
    }

    async fn finish_deletion(&self, key: &PodKey) {
        let call = Call::FinishDeletion(key.name.clone());
        self.calls.lock().unwrap().push(call);
    }

    async fn sources(&self, _pod: &Pod) -> Result<env::Fetched, WorkloadError> {
        Ok(env::Fetched::default())
    }

    async fn runtime_handler(&self, class: &str) -> Result<String, WorkloadError> {
        Ok(class.to_string())
    }

    fn reporter(&self, _pod: &Pod) -> Report {
        Arc::new(|_| {})
    }
}

/// What the fake runtime was asked to do, and when (tokio's clock).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Op {
    Start(String),
    /// A container's run started again: (pod, container, run).
    Restart(String, String, u32),
    /// A container's run stopped, given this grace period.
    Stop(String, String, Duration),
    Release(String),
    /// Garbage collection after an agent restart kept these pods.
    Collect(Vec<String>),
}

/// A runtime that starts at once (the pods named in `slow` take a minute,
/// those in `failing` fail that many times), records every operation, and
/// answers exec probes with what the test set in `answers` (0 by default).
/// A container whose pod is in `stubborn` ignores SIGTERM: its stop takes
/// the whole grace period, as the kill after it would.
#[derive(Default)]
pub(super) struct FakeWorkload {
    pub slow: HashSet<String>,
    pub failing: Mutex<HashMap<String, u32>>,
    pub stubborn: HashSet<String>,
    /// Exit code of probe command `cmd` in pod `pod`, by "pod/cmd".
    pub answers: Arc<Mutex<HashMap<String, i32>>>,
    pub ops: Arc<Mutex<Vec<(Instant, Op)>>>,
}

impl FakeWorkload {
    /// Probe command `cmd` of `pod` answers `code` from now on.
    pub fn answer(&self, pod: &str, cmd: &str, code: i32) {
        self.answers
            .lock()
            .unwrap()
            .insert(format!("{pod}/{cmd}"), code);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops
            .lock()
            .unwrap()
            .iter()
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// How many stops `pod`'s containers had.
    pub fn stops(&self, pod: &str) -> usize {
        self.times(|o| matches!(o, Op::Stop(p, ..) if p == pod))
            .len()
    }

    /// When each operation matching `f` happened.
    pub fn times(&self, f: impl Fn(&Op) -> bool) -> Vec<Instant> {
        let ops = self.ops.lock().unwrap();
        ops.iter().filter(|(_, o)| f(o)).map(|(t, _)| *t).collect()
    }

    fn record(&self, op: Op) {
        self.ops.lock().unwrap().push((Instant::now(), op));
    }

    fn run(&self, pod: &Pod, name: &str, run: u32) -> RunningContainer {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let started = Started {
            name: name.into(),
            image: "reg/app:1".into(),
            image_id: "sha256:ab".into(),
            command: false,
            id: format!("fake://{uid}/{name}/{run}"),
        };
        let answers = self.answers.clone();
        let key = pod_name.clone();
        let exec: Exec = Arc::new(move |cmd: Vec<String>| {
            let cmd = cmd.join(" ");
            let code = answers
                .lock()
                .unwrap()
                .get(&format!("{key}/{cmd}"))
                .copied()
                .unwrap_or(0);
            async move { Ok(code) }.boxed()
        });
        let probe = Target {
            handler: None,
            exec: Some(exec),
        };
        let ops = self.ops.clone();
        let stubborn = self.stubborn.contains(&pod_name);
        let name = name.to_string();
        RunningContainer::new(started, probe, tokio::task::JoinSet::new()).with_teardown(Box::new(
            move |grace| {
                async move {
                    if stubborn {
                        tokio::time::sleep(grace).await;
                    }
                    let op = Op::Stop(pod_name, name, grace);
                    ops.lock().unwrap().push((Instant::now(), op));
                }
                .boxed()
            },
        ))
    }
}

impl Workload for FakeWorkload {
    async fn start(&self, pod: &Pod, spec: &StartSpec) -> Result<RunningPod, WorkloadError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if self.slow.contains(&name) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        if let Some(left) = self.failing.lock().unwrap().get_mut(&name)
            && *left > 0
        {
            *left -= 1;
            return Err(WorkloadError::Create("the fake fails this start".into()));
        }
        self.record(Op::Start(name));
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        Ok(RunningPod {
            ip: spec.ip,
            containers: containers
                .map(|c| self.run(pod, &c.name, spec.restarts_of(&c.name)))
                .collect(),
        })
    }

    async fn restart(
        &self,
        pod: &Pod,
        name: &str,
        spec: &StartSpec,
    ) -> Result<RunningContainer, WorkloadError> {
        let name = &container(pod, name)?.name;
        let run = spec.restarts_of(name);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        self.record(Op::Restart(pod_name, name.clone(), run));
        Ok(self.run(pod, name, run))
    }

    async fn release(&self, uid: &str) {
        self.record(Op::Release(uid.to_string()));
    }

    async fn collect_garbage(&self, keep: &HashSet<String>) {
        let mut keep: Vec<String> = keep.iter().cloned().collect();
        keep.sort();
        self.record(Op::Collect(keep));
    }
}

/// A pod of one container `app` on node `n1`, with `spec` merged into its spec.
pub(super) fn pod(name: &str, spec: Value) -> Pod {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "reg/app:1"}]}});
    if let (Some(to), Some(from)) = (v["spec"].as_object_mut(), spec.as_object()) {
        to.extend(from.clone());
    }
    serde_json::from_value(v).unwrap()
}

/// `pod` deleted with `grace` seconds.
pub(super) fn deleted(pod: &Pod, grace: i64) -> Pod {
    let mut v = serde_json::to_value(pod).unwrap();
    v["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
    v["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    serde_json::from_value(v).unwrap()
}

/// The pod loop on a fake runtime and a recording API.
pub(super) struct Harness {
    pub api: Arc<RecordingApi>,
    pub workload: Arc<FakeWorkload>,
    pub events: mpsc::UnboundedSender<Result<watcher::Event<Pod>, watcher::Error>>,
    pub exits: mpsc::UnboundedSender<Exited>,
    stop: signal::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn start(workload: FakeWorkload) -> Harness {
        Harness::on(Arc::new(workload))
    }

    /// A pod loop on `workload` (which an earlier loop may have run).
    pub fn on(workload: Arc<FakeWorkload>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig::new("n1".into(), dir.path().into());
        let api = Arc::new(RecordingApi::default());
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let pool = IpPool::parse("127.10.0.0/24").unwrap();
        let (pods, inbox) = PodLoop::new(cfg, workload.clone(), api.clone(), pool, exits);
        let (events, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = signal::channel(false);
        let task = tokio::spawn(pods.run(stopped, UnboundedReceiverStream::new(rx), inbox));
        Harness {
            api,
            workload,
            events,
            exits: exits_tx,
            stop,
            task,
            _dir: dir,
        }
    }

    pub fn apply(&self, pod: Pod) {
        self.events.send(Ok(watcher::Event::Apply(pod))).unwrap();
    }

    /// Run `run` of container `app` of `pod` exits with `code`.
    pub fn exit(&self, pod: &str, run: u32, code: i32) {
        self.exit_of(pod, "app", run, code);
    }

    /// Run `run` of `container` of `pod` exits with `code`.
    pub fn exit_of(&self, pod: &str, container: &str, run: u32, code: i32) {
        let exit = Exited {
            pod_uid: format!("uid-{pod}"),
            container: container.into(),
            run,
            exit: weft_wasm_host::Exit::Code(code),
        };
        self.exits.send(exit).unwrap();
    }

    /// The agent stops (SIGTERM): the loop returns.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }

    /// The latest status written for `pod`.
    pub fn last(&self, pod: &str) -> Value {
        self.api.statuses(pod).last().cloned().unwrap_or_default()
    }

    /// Each status write's phase and its first container's waiting reason, for `pod`.
    pub fn phases(&self, pod: &str) -> Vec<String> {
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
