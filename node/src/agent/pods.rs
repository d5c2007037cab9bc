//! The pod loop: one task that owns every pod's state on the node
//! ([`Phase`]). It hears the watch of pods bound to the node, command
//! exits, probe verdicts and its own timers, and brings each pod's workload
//! to what its object says. Anything slow (pulls, compiles, container
//! starts, graceful stops) runs on tasks of its own, at most
//! `max_parallel_starts` starts at once, and reports back by message: the
//! loop itself never waits for a pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch as signal};
use tokio::time::Instant;
use weft_api::k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};

use super::effects::{AgentApi, StatusQueue};
use super::starts::{self, PodDirs, Restarted, Start, Starter};
use super::state::{
    Active, BACKOFF_RESET, Cancel, Ending, Phase, PodKey, Slot, State, backoff_delay, cond,
    container_status, drain_time, grace_period, ready_at_start, restart_counts, restarts, stop_all,
    waiting,
};
use super::{AgentConfig, IpPool, now, start_time, ts};
use crate::volumes::Volume;
use crate::workload::{Exited, RunningContainer, RunningPod, Workload, container};
use crate::{logs, probes};

/// Status writes in flight at once (one per pod).
const STATUS_WRITERS: usize = 16;

/// What the pod loop tells itself, later.
pub(super) enum Msg {
    /// A pod is due for another start attempt.
    Retry(PodKey),
    /// A pod's start task has finished.
    Started(Box<Start>),
    /// A container of a running pod is due to start again.
    Restart(PodKey, String),
    /// A container's restart task has finished.
    Restarted(Box<Restarted>),
    /// A deleted pod's workload has stopped: release it and finish deletion.
    Terminated(PodKey, Ipv4Addr),
    /// Every container of a pod ended for good and has stopped.
    Complete(PodKey),
    /// A stopped pod's IP may go to another pod.
    Free(Ipv4Addr),
    /// `spec.activeDeadlineSeconds` passed.
    Deadline(PodKey),
}

pub(super) struct PodLoop<W: Workload, A: AgentApi> {
    cfg: AgentConfig,
    runtime: Arc<W>,
    api: Arc<A>,
    logs: PathBuf,
    pool: IpPool,
    /// Every pod the node knows, by uid.
    pods: HashMap<String, Phase>,
    /// Exits of runs the loop has not installed yet (a command can end
    /// before its start or restart reports back), by pod uid.
    early_exits: HashMap<String, Vec<Exited>>,
    starter: Starter<W, A>,
    status: StatusQueue,
    msgs: mpsc::UnboundedSender<Msg>,
    probe_tx: mpsc::UnboundedSender<probes::Transition>,
}

/// Sends `msg` back to the pod loop after `delay`.
fn later(tx: &mpsc::UnboundedSender<Msg>, msg: Msg, delay: Duration) {
    let tx = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = tx.send(msg);
    });
}

/// What the pod loop hears besides the watch.
pub(super) struct Inbox {
    exits: mpsc::UnboundedReceiver<Exited>,
    msgs: mpsc::UnboundedReceiver<Msg>,
    probes: mpsc::UnboundedReceiver<probes::Transition>,
}

impl<W: Workload, A: AgentApi> PodLoop<W, A> {
    /// `exits` hears the runtime's command exits.
    pub(super) fn new(
        cfg: AgentConfig,
        runtime: Arc<W>,
        api: Arc<A>,
        pool: IpPool,
        exits: mpsc::UnboundedReceiver<Exited>,
    ) -> (Self, Inbox) {
        let (msgs_tx, msgs) = mpsc::unbounded_channel();
        let (probe_tx, probes) = mpsc::unbounded_channel();
        let logs = cfg.logs_dir();
        let starter = Starter {
            runtime: runtime.clone(),
            api: api.clone(),
            tx: msgs_tx.clone(),
            slots: Arc::new(Semaphore::new(cfg.max_parallel_starts.max(1))),
        };
        let (status, drain) = StatusQueue::new(api.clone(), STATUS_WRITERS);
        tokio::spawn(drain);
        let pods = PodLoop {
            cfg,
            runtime,
            api,
            logs,
            pool,
            pods: HashMap::new(),
            early_exits: HashMap::new(),
            starter,
            status,
            msgs: msgs_tx,
            probe_tx,
        };
        (
            pods,
            Inbox {
                exits,
                msgs,
                probes,
            },
        )
    }
}

impl<W: Workload, A: AgentApi> PodLoop<W, A> {
    pub(super) async fn run(
        mut self,
        mut stop: signal::Receiver<bool>,
        events: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send,
        Inbox {
            mut exits,
            mut msgs,
            mut probes,
        }: Inbox,
    ) {
        let mut events = std::pin::pin!(events);
        // The pods of the watch's first listing: what an agent restart keeps.
        let mut listed: Option<HashSet<String>> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some(e) = exits.recv() => {
                    self.exited(e).await;
                }
                Some(t) = probes.recv() => self.probed(t).await,
                Some(m) = msgs.recv() => self.message(m).await,
                ev = events.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitDone)) => {
                        if let Some(keep) = listed.take() {
                            self.runtime.collect_garbage(&keep).await;
                        }
                    }
                    Some(Ok(watcher::Event::InitApply(pod))) => {
                        if let (Some(l), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                            l.insert(uid);
                        }
                        self.sync(pod, false).await
                    }
                    Some(Ok(watcher::Event::Apply(pod))) => self.sync(pod, false).await,
                    Some(Ok(watcher::Event::Delete(pod))) => self.forget(&pod).await,
                    Some(Err(e)) => {
                        tracing::warn!("pod watch: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    None => break,
                }
            }
        }
        // Wasm pods end with the agent; containers keep running, to be adopted.
        // Starts still in flight drop what they started (the same detach).
        for (_, phase) in self.pods.drain() {
            if let Phase::Running(mut a) = phase {
                futures::future::join_all(a.take_runs().into_iter().map(RunningContainer::detach))
                    .await;
            }
        }
    }

    async fn message(&mut self, m: Msg) {
        match m {
            Msg::Retry(k) => {
                if let Some(pod) = self.api.current(&k).await {
                    self.sync(pod, true).await;
                }
            }
            Msg::Started(s) => self.started(*s).await,
            Msg::Restart(k, name) => self.restart(&k, &name),
            Msg::Restarted(r) => self.restarted(*r).await,
            Msg::Terminated(k, ip) => {
                self.pool.release(ip);
                if matches!(self.pods.get(&k.uid), Some(Phase::Terminating)) {
                    self.pods.remove(&k.uid);
                }
                self.runtime.release(&k.uid).await;
                self.api.finish_deletion(&k).await;
            }
            Msg::Complete(k) => self.complete(&k.uid).await,
            Msg::Free(ip) => self.pool.release(ip),
            Msg::Deadline(k) => self.deadline(&k).await,
        }
    }

    /// `spec.activeDeadlineSeconds` passed: the pod fails with DeadlineExceeded.
    async fn deadline(&mut self, k: &PodKey) {
        match self.pods.remove(&k.uid) {
            Some(Phase::Running(mut a)) => {
                // Stopped in the background; its IP is free once it has stopped.
                let (runs, grace) = (a.take_runs(), grace_period(&a.pod));
                let (runtime, tx, uid, ip) =
                    (self.runtime.clone(), self.msgs.clone(), k.uid.clone(), a.ip);
                tokio::spawn(async move {
                    stop_all(runs, grace).await;
                    runtime.release(&uid).await;
                    let _ = tx.send(Msg::Free(ip));
                });
            }
            Some(Phase::Backoff { .. }) => self.runtime.release(&k.uid).await,
            Some(Phase::Starting { failures, .. }) => {
                let cancel = Some(Cancel::Deadline);
                self.pods
                    .insert(k.uid.clone(), Phase::Starting { failures, cancel });
                return;
            }
            Some(other) => {
                self.pods.insert(k.uid.clone(), other);
                return;
            }
            None => return,
        }
        self.pods.insert(k.uid.clone(), Phase::Finished);
        let msg = "Pod was active on the node longer than the specified deadline";
        self.api.event(k, true, "DeadlineExceeded", msg).await;
        let ts = now();
        self.status.write(
            k,
            json!({"status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": msg,
            "conditions": [cond("Ready", false, &ts), cond("ContainersReady", false, &ts)]}}),
        );
    }

    /// The pod object is gone: stop anything left and drop its logs.
    async fn forget(&mut self, pod: &Pod) {
        let k = PodKey::of(pod);
        match self.pods.remove(&k.uid) {
            Some(Phase::Starting { failures, .. }) => {
                // Cleaned up when its start returns.
                let cancel = Some(Cancel::Gone(pod.clone()));
                self.pods
                    .insert(k.uid, Phase::Starting { failures, cancel });
                return;
            }
            Some(Phase::Running(mut a)) => {
                self.pool.release(a.ip);
                stop_all(a.take_runs(), Duration::ZERO).await;
            }
            Some(Phase::Terminating) => {
                self.pods.insert(k.uid.clone(), Phase::Terminating);
            }
            _ => {}
        }
        self.early_exits.remove(&k.uid);
        self.runtime.release(&k.uid).await;
        let _ = std::fs::remove_dir_all(logs::pod_dir(&self.logs, &k.namespace, &k.name, &k.uid));
        let _ = std::fs::remove_dir_all(self.dirs(&k).volumes);
    }

    fn active(&mut self, uid: &str) -> Option<&mut Active> {
        match self.pods.get_mut(uid) {
            Some(Phase::Running(a)) => Some(a),
            _ => None,
        }
    }

    fn status_of(&self, uid: &str) -> Option<Value> {
        match self.pods.get(uid) {
            Some(Phase::Running(a)) => Some(a.status(&self.cfg.node_ip().to_string())),
            _ => None,
        }
    }

    fn dirs(&self, k: &PodKey) -> PodDirs {
        PodDirs {
            logs: logs::pod_dir(&self.logs, &k.namespace, &k.name, &k.uid),
            volumes: self.cfg.data_dir.join("pods").join(&k.uid).join("volumes"),
        }
    }

    /// A command container's run exited: handled now, or kept until its
    /// start or restart has reported back and the run is installed.
    async fn exited(&mut self, e: Exited) {
        let early = match self.pods.get(&e.pod_uid) {
            Some(Phase::Starting { .. }) => true,
            Some(Phase::Running(a)) => a
                .slots
                .iter()
                .any(|s| s.name == e.container && s.awaits_run(e.run)),
            _ => false,
        };
        if early {
            self.early_exits
                .entry(e.pod_uid.clone())
                .or_default()
                .push(e);
        } else {
            self.ended(&e.pod_uid, &e.container, e.run, Ending::Exit(e.exit))
                .await;
        }
    }

    /// Hands the exits kept for `uid` on, now that a run of it is installed.
    async fn replay_exits(&mut self, uid: &str) {
        for e in self.early_exits.remove(uid).unwrap_or_default() {
            self.exited(e).await;
        }
    }

    /// Run `run` of a container ended. It starts again after a backoff, or
    /// stays terminated, by the pod's restartPolicy, while the pod's other
    /// containers carry on (kubelet). When every container is terminated
    /// for good, the pod completes: Succeeded if all exited 0, else Failed.
    async fn ended(&mut self, uid: &str, name: &str, run: u32, ending: Ending) {
        let retry_after = self.cfg.retry_after;
        let tx = self.msgs.clone();
        let Some(a) = self.active(uid) else {
            return;
        };
        let (key, grace) = (a.key.clone(), grace_period(&a.pod));
        let restart = restarts(&a.pod, &ending);
        let Some(slot) = a.slot(name).filter(|s| s.restarts == run) else {
            return;
        };
        // A stale report about a run that has already been stopped.
        let Some(stopping) = slot.run.take() else {
            return;
        };
        slot._probes = tokio::task::JoinSet::new();
        slot.ready = false;
        let (code, reason, message) = ending.terminated();
        let terminated = json!({"exitCode": code, "reason": reason, "message": message,
            "startedAt": slot.started_at, "finishedAt": now(), "containerID": stopping.started.id});
        // Stops run in the background: a container given a grace period
        // must not hold up the node's other pods.
        if restart {
            if slot.since.elapsed() >= BACKOFF_RESET {
                slot.crashes = 0;
            }
            let delay = backoff_delay(retry_after, slot.crashes);
            slot.crashes += 1;
            slot.restarts += 1;
            slot.last = Some(terminated);
            slot.state = State::Waiting(json!({"reason": "CrashLoopBackOff",
                "message": format!("back-off {delay:?} restarting failed container={name} pod={}", key.name)}));
            // It starts again once stopped.
            let (k, name) = (key.clone(), name.to_string());
            tokio::spawn(async move {
                stopping.stop(grace).await;
                tokio::time::sleep(delay).await;
                let _ = tx.send(Msg::Restart(k, name));
            });
        } else {
            slot.state = State::Terminated(terminated);
            if a.slots.iter().all(Slot::done) {
                tokio::spawn(async move {
                    stopping.stop(grace).await;
                    let _ = tx.send(Msg::Complete(key));
                });
                return;
            }
            tokio::spawn(stopping.stop(grace));
        }
        if let Some(status) = self.status_of(uid) {
            self.status.write(&key, status);
        }
    }

    /// Every container of the pod has terminated for good.
    async fn complete(&mut self, uid: &str) {
        let a = match self.pods.remove(uid) {
            Some(Phase::Running(a)) => a,
            Some(other) => {
                self.pods.insert(uid.to_string(), other);
                return;
            }
            None => return,
        };
        self.pool.release(a.ip);
        self.pods.insert(uid.to_string(), Phase::Finished);
        self.runtime.release(uid).await;
        let all_ok = a
            .slots
            .iter()
            .all(|s| matches!(&s.state, State::Terminated(t) if t["exitCode"] == 0));
        let statuses: Vec<Value> = a.slots.iter().map(container_status).collect();
        let ts = now();
        let done = |ty: &str, st: &str| json!({"type": ty, "status": st, "reason": "PodCompleted", "lastTransitionTime": ts});
        let status = json!({"status": {"phase": if all_ok { "Succeeded" } else { "Failed" }, "containerStatuses": statuses,
            "conditions": [done("PodScheduled", "True"), done("Initialized", "True"), done("ContainersReady", "False"), done("Ready", "False")]}});
        self.status.write(&a.key, status);
    }

    /// A container's backoff is over: start it again in its pod, on a task.
    fn restart(&mut self, key: &PodKey, name: &str) {
        let Some(Phase::Running(a)) = self.pods.get(&key.uid) else {
            return;
        };
        let Some(run) = a
            .slots
            .iter()
            .find(|s| s.name == name && matches!(s.state, State::Waiting(_)))
            .map(|s| s.restarts)
        else {
            return;
        };
        let (pod, ip, volumes) = (a.pod.clone(), a.ip, a.volumes.clone());
        let restarts = a
            .slots
            .iter()
            .map(|s| (s.name.clone(), s.restarts))
            .collect();
        let restart = starts::Restart {
            key: key.clone(),
            name: name.to_string(),
            run,
            pod,
            ip,
            restarts,
            volumes,
        };
        self.starter.restart(restart, self.dirs(key));
    }

    /// A container's restart returned.
    async fn restarted(&mut self, r: Restarted) {
        let Restarted {
            key,
            name,
            run,
            result,
        } = r;
        let (probe_tx, retry_after, tx) = (
            self.probe_tx.clone(),
            self.cfg.retry_after,
            self.msgs.clone(),
        );
        let target = self.active(&key.uid).and_then(|a| {
            let (ip, c) = (a.ip, container(&a.pod, &name).ok()?.clone());
            let slot = a.slot(&name).filter(|s| s.awaits_run(run))?;
            Some((ip, c, slot))
        });
        let Some((ip, c, slot)) = target else {
            // The pod stopped or moved on meanwhile.
            if let Ok(run) = result {
                tokio::spawn(run.stop(Duration::ZERO));
            }
            return;
        };
        match result {
            Ok(run) => {
                slot._probes = spawn_probes(&key.uid, slot.restarts, &c, ip, &run, probe_tx);
                slot.ready = ready_at_start(&c);
                slot.started = Some(run.started.clone());
                slot.run = Some(run);
                slot.state = State::Running;
                slot.started_at = now();
                slot.since = Instant::now();
                self.replay_exits(&key.uid).await;
            }
            Err(e) => {
                tracing::warn!(pod = %key.name, container = %name, "restart failed: {e}");
                let delay = backoff_delay(retry_after, slot.crashes);
                slot.crashes += 1;
                slot.state =
                    State::Waiting(json!({"reason": e.reason(), "message": e.to_string()}));
                later(&tx, Msg::Restart(key.clone(), name), delay);
            }
        }
        if let Some(status) = self.status_of(&key.uid) {
            self.status.write(&key, status);
        }
    }

    /// A probe changed its verdict.
    async fn probed(&mut self, t: probes::Transition) {
        let Some(active) = self.active(&t.pod_uid) else {
            return;
        };
        let key = active.key.clone();
        let readiness =
            container(&active.pod, &t.container).is_ok_and(|c| c.readiness_probe.is_some());
        let Some(slot) = active
            .slot(&t.container)
            .filter(|s| s.restarts == t.run && s.run.is_some())
        else {
            return;
        };
        match (t.kind, t.healthy) {
            (probes::Kind::Readiness, ready) => {
                slot.ready = ready;
                if !ready {
                    let msg = format!("Readiness probe failed: {}", t.message);
                    self.api.event(&key, true, "Unhealthy", &msg).await;
                }
                if let Some(status) = self.status_of(&t.pod_uid) {
                    self.status.write(&key, status);
                }
            }
            (kind, false) => {
                let msg = format!("{} probe failed: {}", kind.as_str(), t.message);
                self.api.event(&key, true, "Unhealthy", &msg).await;
                let killing = format!(
                    "Container {} failed {} probe, will be restarted",
                    t.container,
                    kind.as_str().to_lowercase()
                );
                self.api.event(&key, false, "Killing", &killing).await;
                self.ended(&t.pod_uid, &t.container, t.run, Ending::Killed(msg))
                    .await;
            }
            (probes::Kind::Startup, true) if !readiness => {
                // Without a readiness probe a container is ready once started.
                slot.ready = true;
                if let Some(status) = self.status_of(&t.pod_uid) {
                    self.status.write(&key, status);
                }
            }
            (_, true) => {}
        }
    }

    /// Brings the pod's workload to what its object says. A pod in backoff
    /// starts again only when its retry comes (`retrying`).
    async fn sync(&mut self, pod: Pod, retrying: bool) {
        let key = PodKey::of(&pod);
        if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(&pod).await;
            return;
        }
        let Some(failures) = Phase::starts(self.pods.get(&key.uid), retrying) else {
            return;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return;
        }
        let want = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let Some(ip) = self.pool.take(want) else {
            tracing::error!(pod = %key.name, "pod IP range {} is exhausted", self.cfg.pod_cidr);
            return;
        };
        if !retrying && let Some(secs) = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds) {
            // Measured from the pod's first start on this node (status.startTime).
            let started = start_time(&pod).unwrap_or_else(jiff::Timestamp::now);
            let left = (started + Duration::from_secs(secs.max(0) as u64))
                .duration_since(jiff::Timestamp::now());
            let left = if left.is_negative() {
                Duration::ZERO
            } else {
                left.unsigned_abs()
            };
            later(&self.msgs, Msg::Deadline(key.clone()), left);
        }
        let cancel = None;
        self.pods
            .insert(key.uid.clone(), Phase::Starting { failures, cancel });
        let dirs = self.dirs(&key);
        self.starter.start(pod, ip, dirs);
    }

    /// A pod's start returned: it runs, or it waits for its retry.
    async fn started(&mut self, Start { pod, ip, result }: Start) {
        let key = PodKey::of(&pod);
        let (failures, cancel) = match self.pods.remove(&key.uid) {
            Some(Phase::Starting { failures, cancel }) => (failures, cancel),
            other => {
                // Only a start sends this; nothing else replaces Starting.
                if let Some(p) = other {
                    self.pods.insert(key.uid.clone(), p);
                }
                if let Ok((run, _)) = result {
                    stop_all(run.containers, Duration::ZERO).await;
                }
                return;
            }
        };
        let report = cancel.is_none();
        match result {
            Ok((run, volumes)) => {
                self.install(&pod, ip, run, volumes, report).await;
                self.replay_exits(&key.uid).await;
            }
            Err(e) => {
                self.pool.release(ip);
                tracing::warn!(pod = %key.name, "start failed: {e}");
                self.pods.insert(
                    key.uid.clone(),
                    Phase::Backoff {
                        failures: failures + 1,
                    },
                );
                let delay = backoff_delay(self.cfg.retry_after, failures);
                later(&self.msgs, Msg::Retry(key.clone()), delay);
                if report {
                    // As kubelet: ErrImagePull first, ImagePullBackOff while retries back off.
                    let (reason, message) = match e.reason() {
                        "ErrImagePull" if failures > 0 => {
                            ("ImagePullBackOff", format!("Back-off pulling image: {e}"))
                        }
                        r => (r, e.to_string()),
                    };
                    let status = waiting(&pod, reason, &message);
                    self.status.write(&key, status);
                }
            }
        }
        // What happened to the pod while it started, now that there is
        // something to stop.
        match cancel {
            None => {}
            Some(Cancel::Deleted(pod)) => self.terminate(&pod).await,
            Some(Cancel::Gone(pod)) => self.forget(&pod).await,
            Some(Cancel::Deadline) => self.deadline(&key).await,
        }
    }

    /// A started pod runs: one slot per container, its probes, its status.
    async fn install(
        &mut self,
        pod: &Pod,
        ip: Ipv4Addr,
        run: RunningPod,
        volumes: BTreeMap<String, Volume>,
        report: bool,
    ) {
        let key = PodKey::of(pod);
        // A container pod's IP comes from its network, not the agent's range.
        if run.ip != ip {
            self.pool.release(ip);
        }
        let ip = run.ip;
        // A restarted agent carries on counting (and naming log files) where the status left off.
        let statuses: HashMap<&str, &ContainerStatus> = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| (c.name.as_str(), c))
            .collect();
        let restarts = restart_counts(pod);
        let started_at = start_time(pod).map(ts).unwrap_or_else(now);
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        let slots = run
            .containers
            .into_iter()
            .zip(containers)
            .map(|(run, c)| {
                let restarts = restarts.get(&c.name).copied().unwrap_or(0);
                let last = statuses
                    .get(c.name.as_str())
                    .and_then(|s| s.last_state.as_ref()?.terminated.as_ref())
                    .and_then(|t| serde_json::to_value(t).ok());
                Slot {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    _probes: spawn_probes(&key.uid, restarts, c, ip, &run, self.probe_tx.clone()),
                    started: Some(run.started.clone()),
                    run: Some(run),
                    state: State::Running,
                    started_at: started_at.clone(),
                    since: Instant::now(),
                    restarts,
                    crashes: restarts,
                    last,
                    ready: ready_at_start(c),
                }
            })
            .collect();
        let active = Active {
            key: key.clone(),
            ip,
            pod: pod.clone(),
            started_at,
            volumes,
            slots,
        };
        let status = report.then(|| active.status(&self.cfg.node_ip().to_string()));
        self.pods.insert(key.uid.clone(), Phase::Running(active));
        if let Some(status) = status {
            self.status.write(&key, status);
        }
    }

    /// Graceful termination: not ready at once (so endpoints drop it), keep
    /// serving through the preStop sleep, then stop and finish the deletion.
    async fn terminate(&mut self, pod: &Pod) {
        let key = PodKey::of(pod);
        let mut active = match self.pods.remove(&key.uid) {
            Some(Phase::Running(a)) => a,
            Some(Phase::Starting { failures, .. }) => {
                // Stopped when its start returns.
                let cancel = Some(Cancel::Deleted(pod.clone()));
                self.pods
                    .insert(key.uid, Phase::Starting { failures, cancel });
                return;
            }
            Some(p @ (Phase::Terminating | Phase::Finished)) => {
                let draining = matches!(p, Phase::Terminating);
                self.pods.insert(key.uid.clone(), p);
                if !draining {
                    self.api.finish_deletion(&key).await;
                }
                return;
            }
            Some(Phase::Backoff { .. }) | None => {
                self.api.finish_deletion(&key).await;
                return;
            }
        };
        self.pods.insert(key.uid.clone(), Phase::Terminating);
        let ts = now();
        self.status.write(&key, json!({"status": {"conditions": [cond("ContainersReady", false, &ts), cond("Ready", false, &ts)]}}));
        let drain = drain_time(pod);
        let grace = grace_period(pod).saturating_sub(drain);
        let tx = self.msgs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            stop_all(active.take_runs(), grace).await;
            let _ = tx.send(Msg::Terminated(active.key, active.ip));
        });
    }
}

/// The probe loop of run `run` of container `c`.
fn spawn_probes(
    uid: &str,
    run: u32,
    c: &Container,
    ip: Ipv4Addr,
    container: &RunningContainer,
    tx: mpsc::UnboundedSender<probes::Transition>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(probes::run(
        uid.to_string(),
        run,
        c.clone(),
        ip,
        container.probe.clone(),
        tx,
    ));
    set
}
