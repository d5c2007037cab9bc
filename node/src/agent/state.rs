//! Each pod's and container's state on the node, and the pure rules over
//! it: restart policy, backoff, grace periods, and the statuses it reports.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use weft_api::k8s_openapi::api::core::v1::{Container, Pod};
use weft_wasm_host::Exit;

use crate::volumes::Volume;
use crate::workload::{RunningContainer, Started};

/// Identifies a pod for messages the loop sends itself.
#[derive(Debug, Clone)]
pub(super) struct PodKey {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
}

impl PodKey {
    pub(super) fn of(pod: &Pod) -> PodKey {
        PodKey {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

/// How a container run ended.
#[derive(Debug, Clone)]
pub(super) enum Ending {
    Exit(Exit),
    /// Killed by the agent (failed liveness or startup probe).
    Killed(String),
}

impl Ending {
    pub(super) fn succeeded(&self) -> bool {
        matches!(self, Ending::Exit(Exit::Code(0)))
    }

    /// exitCode, reason and message, as kubelet reports them.
    pub(super) fn terminated(&self) -> (i32, &'static str, String) {
        match self {
            Ending::Exit(Exit::Code(0)) => (0, "Completed", String::new()),
            Ending::Exit(Exit::Code(n)) => (*n, "Error", String::new()),
            Ending::Exit(Exit::OutOfMemory(m)) => (137, "OOMKilled", m.clone()),
            Ending::Exit(Exit::Trap(m)) => (1, "Error", m.clone()),
            Ending::Killed(m) => (137, "Error", m.clone()),
        }
    }
}

/// Where a container of a running pod is.
pub(super) enum State {
    Running,
    /// Waiting to start again (`{"reason", "message"}`).
    Waiting(Value),
    /// Ended for good, by the restart policy (`state.terminated`).
    Terminated(Value),
}

/// One container of a running pod: each runs, ends and restarts on its own.
pub(super) struct Slot {
    pub(super) name: String,
    pub(super) image: String,
    /// The current run; `None` while waiting or terminated.
    pub(super) run: Option<RunningContainer>,
    /// What the latest run started as (imageID, containerID), kept for the status.
    pub(super) started: Option<Started>,
    pub(super) state: State,
    pub(super) started_at: String,
    /// When the current run started: a long run resets the backoff (tokio's
    /// clock, so that tests in paused time can run it for ten minutes).
    pub(super) since: Instant,
    pub(super) restarts: u32,
    /// Failures since the last long run: the backoff's exponent.
    pub(super) crashes: u32,
    /// The previous run's termination (`lastState.terminated`).
    pub(super) last: Option<Value>,
    /// Readiness of the current run (true without a readiness or startup probe).
    pub(super) ready: bool,
    /// The current run's probe loop; dropped with it.
    pub(super) _probes: tokio::task::JoinSet<()>,
}

impl Slot {
    pub(super) fn done(&self) -> bool {
        matches!(self.state, State::Terminated(_))
    }

    /// Whether run `run` is the one this slot waits to have installed (its
    /// restart is in flight).
    pub(super) fn awaits_run(&self, run: u32) -> bool {
        self.restarts == run && matches!(self.state, State::Waiting(_))
    }
}

pub(super) struct Active {
    pub(super) key: PodKey,
    pub(super) ip: Ipv4Addr,
    pub(super) pod: Pod,
    pub(super) started_at: String,
    /// The pod's volumes, set up once at its start: a container's restart
    /// must not rewrite what its running neighbours have mounted.
    pub(super) volumes: BTreeMap<String, Volume>,
    /// In the order of `spec.containers`.
    pub(super) slots: Vec<Slot>,
}

impl Active {
    pub(super) fn slot(&mut self, name: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.name == name)
    }

    /// Takes every container's current run, to stop or detach them.
    pub(super) fn take_runs(&mut self) -> Vec<RunningContainer> {
        self.slots.iter_mut().filter_map(|s| s.run.take()).collect()
    }

    /// The status of the running pod: each container's state, readiness and restarts.
    /// `host_ip` is the node's InternalIP.
    pub(super) fn status(&self, host_ip: &str) -> Value {
        let statuses: Vec<Value> = self.slots.iter().map(container_status).collect();
        let all_ready = self.slots.iter().all(|s| s.run.is_some() && s.ready);
        let (ts, ip) = (super::now(), self.ip.to_string());
        json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "startTime": self.started_at,
            "conditions": [cond("PodScheduled", true, &ts), cond("Initialized", true, &ts),
                           cond("ContainersReady", all_ready, &ts), cond("Ready", all_ready, &ts)],
            "containerStatuses": statuses}})
    }
}

/// Stops containers together, each given `grace`.
pub(super) async fn stop_all(runs: Vec<RunningContainer>, grace: Duration) {
    futures::future::join_all(runs.into_iter().map(|r| r.stop(grace))).await;
}

/// A container that ran this long has its backoff reset (kubelet: 2 × the cap).
pub(super) const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// Whether a container that ended this way starts again, by the pod's restartPolicy.
pub(super) fn restarts(pod: &Pod, ending: &Ending) -> bool {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => false,
        Some("OnFailure") => !ending.succeeded(),
        _ => true,
    }
}

/// Readiness before any probe answers: gated by a readiness or startup probe.
pub(super) fn ready_at_start(c: &Container) -> bool {
    c.readiness_probe.is_none() && c.startup_probe.is_none()
}
/// The longest wait between start attempts, as kubelet's image pull backoff.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `base` doubled per earlier failure, capped at [`MAX_BACKOFF`].
pub(super) fn backoff_delay(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.min(16)).min(MAX_BACKOFF)
}

/// The pod's termination grace period (the deletion's, if it set one).
pub(super) fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0) as u64;
    Duration::from_secs(secs)
}

/// How long a deleted pod keeps serving: its preStop `sleep`, within the grace period.
pub(super) fn drain_time(pod: &Pod) -> Duration {
    let spec = pod.spec.as_ref();
    let grace = grace_period(pod).as_secs();
    let sleep = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.lifecycle.as_ref()?.pre_stop.as_ref()?.sleep.as_ref())
        .map(|s| s.seconds.max(0) as u64)
        .max()
        .unwrap_or(0);
    Duration::from_secs(sleep.min(grace))
}

/// A container's entry in `status.containerStatuses`.
pub(super) fn container_status(s: &Slot) -> Value {
    let running = matches!(s.state, State::Running);
    let state = match &s.state {
        State::Running => json!({"running": {"startedAt": s.started_at}}),
        State::Waiting(w) => json!({"waiting": w}),
        State::Terminated(t) => json!({"terminated": t}),
    };
    let mut v = json!({"name": s.name, "ready": running && s.ready, "started": running,
        "restartCount": s.restarts, "image": s.image, "state": state,
        "imageID": s.started.as_ref().map(|st| st.image_id.as_str()).unwrap_or_default()});
    if let Some(st) = &s.started {
        v["containerID"] = json!(st.id);
    }
    if let Some(t) = &s.last {
        v["lastState"] = json!({"terminated": t});
    }
    v
}

pub(super) fn cond(ty: &str, status: bool, ts: &str) -> Value {
    json!({"type": ty, "status": if status { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": ts})
}

/// Where a pod is on this node: the one place its state lives.
pub(super) enum Phase {
    /// Its start runs on a task; `failures` earlier starts failed.
    /// `cancel` is what happened to the pod meanwhile, done when it returns.
    Starting {
        failures: u32,
        cancel: Option<Cancel>,
    },
    /// Its last start failed; the next comes with its retry.
    Backoff {
        failures: u32,
    },
    Running(Active),
    /// Deleted: its workload is draining and stopping.
    Terminating,
    /// Ran to completion, or past its deadline: stale events must not start it again.
    Finished,
}

/// What a pod whose start is in flight is to do once the start returns.
pub(super) enum Cancel {
    /// Deleted gracefully: terminate it.
    Deleted(Pod),
    /// The object is gone: stop it at once.
    Gone(Pod),
    /// Its `activeDeadlineSeconds` passed.
    Deadline,
}

impl Phase {
    /// Whether a pod in `phase` starts now, and after how many failures: a
    /// new pod on any event, a pod in backoff only on its retry.
    pub(super) fn starts(phase: Option<&Phase>, retrying: bool) -> Option<u32> {
        match phase {
            None => Some(0),
            Some(Phase::Backoff { failures }) if retrying => Some(*failures),
            Some(_) => None,
        }
    }
}

/// A pod that is not running yet: Pending, each container waiting for `reason`.
pub(super) fn waiting(pod: &Pod, reason: &str, message: &str) -> Value {
    let counts = restart_counts(pod);
    let restarts = |name: &str| counts.get(name).copied().unwrap_or(0);
    let statuses: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
        "name": c.name, "ready": false, "started": false, "restartCount": restarts(&c.name),
        "image": c.image.clone().unwrap_or_default(), "imageID": "",
        "state": {"waiting": {"reason": reason, "message": message}}})
        })
        .collect();
    json!({"status": {"phase": "Pending", "containerStatuses": statuses}})
}

/// Each container's restart count, as the pod's status has it.
pub(super) fn restart_counts(pod: &Pod) -> HashMap<String, u32> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| (c.name.clone(), c.restart_count.max(0) as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff_delay(base, 0), base);
        assert_eq!(backoff_delay(base, 1), Duration::from_secs(20));
        assert_eq!(backoff_delay(base, 4), Duration::from_secs(160));
        assert_eq!(backoff_delay(base, 5), MAX_BACKOFF);
        assert_eq!(backoff_delay(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn each_policy_restarts_what_kubelet_restarts() {
        let pod = |policy: &str| -> Pod {
            serde_json::from_value(json!({"spec": {"restartPolicy": policy, "containers": []}}))
                .unwrap()
        };
        let ok = Ending::Exit(Exit::Code(0));
        let failed = Ending::Exit(Exit::Code(2));
        let killed = Ending::Killed("Liveness probe failed".into());
        for ending in [&ok, &failed, &killed] {
            assert!(restarts(&pod("Always"), ending));
            assert!(restarts(&Pod::default(), ending), "Always by default");
            assert!(!restarts(&pod("Never"), ending));
        }
        assert!(!restarts(&pod("OnFailure"), &ok));
        assert!(restarts(&pod("OnFailure"), &failed));
        assert!(restarts(&pod("OnFailure"), &killed));
    }

    fn slot(state: State, ready: bool, last: Option<Value>) -> Slot {
        Slot {
            name: "worker".into(),
            image: "reg/job:1".into(),
            run: None,
            started: Some(Started {
                name: "worker".into(),
                image: "reg/job:1".into(),
                image_id: "sha256:ab".into(),
                command: true,
                id: "wasm://u/worker".into(),
            }),
            state,
            started_at: "2026-11-30T00:00:00Z".into(),
            since: Instant::now(),
            restarts: 2,
            crashes: 2,
            last,
            ready,
            _probes: tokio::task::JoinSet::new(),
        }
    }

    #[test]
    fn container_statuses_show_each_containers_own_state() {
        let exited = json!({"exitCode": 1, "reason": "Error"});
        let waiting = container_status(&slot(
            State::Waiting(json!({"reason": "CrashLoopBackOff"})),
            true,
            Some(exited.clone()),
        ));
        assert_eq!(waiting["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(waiting["lastState"]["terminated"], exited);
        assert_eq!(waiting["restartCount"], 2);
        assert_eq!(waiting["ready"], false, "only a running container is ready");
        assert_eq!(waiting["started"], false);
        assert_eq!(waiting["containerID"], "wasm://u/worker");
        assert_eq!(waiting["imageID"], "sha256:ab");

        let running = container_status(&slot(State::Running, true, None));
        assert_eq!(
            running["state"]["running"]["startedAt"],
            "2026-11-30T00:00:00Z"
        );
        assert_eq!(
            (&running["ready"], &running["started"]),
            (&json!(true), &json!(true))
        );
        assert!(running.get("lastState").is_none());
        let unready = container_status(&slot(State::Running, false, None));
        assert_eq!(unready["ready"], false, "its readiness probe says no");

        let done = container_status(&slot(State::Terminated(exited.clone()), false, None));
        assert_eq!(done["state"]["terminated"], exited);
    }
}
