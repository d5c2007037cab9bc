//! Robustness: Kubernetes-shaped traffic through every member of a real
//! three-member cluster (one host each, in network namespaces of the
//! test's own) while one fault is injected, then the recorded history is
//! checked: linearizability, watch guarantees, no acknowledged write lost,
//! a minority that commits nothing, members that end alike. As etcd's
//! robustness tests do. docs/ha.md says how to run many seeds and replay.
//!
//! Each run prints its seed; `WEFT_ROBUSTNESS_SEED=N` repeats its traffic
//! (the timing of a real cluster is not repeatable; the history of a run
//! that failed is saved and can be checked again with `replay`).

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod history;
mod traffic;

use std::time::{Duration, Instant};

use common::hosts::Members;
use history::{History, Ret};
use traffic::Api;

/// One fault per run, on the Raft leader (where faults hurt most).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL, then a restart on its data.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Its host's link down, then up.
    Partition,
    /// Its host's link slow and lossy, then clean.
    SlowLink,
}

/// Traffic runs this long; the fault starts after `FAULT_AT` and lasts
/// `FAULT_FOR`, so the history covers before, during and after.
const TRAFFIC: Duration = Duration::from_secs(9);
const FAULT_AT: Duration = Duration::from_secs(2);
const FAULT_FOR: Duration = Duration::from_secs(4);
const CLIENTS: usize = 6;

fn seed() -> u64 {
    match std::env::var("WEFT_ROBUSTNESS_SEED") {
        Ok(s) => s.parse().expect("WEFT_ROBUSTNESS_SEED is a number"),
        Err(_) => rand::random(),
    }
}

/// What the scenario saw besides the history.
struct Timeline {
    target: usize,
    /// When the fault started and ended, on the history's clock.
    fault: (u64, u64),
    /// After a kill: how long until kubectl wrote through a survivor.
    kubectl_back: Option<Duration>,
}

/// The node agent of a kill scenario, on a survivor's host, given the
/// leader first so that it has to fail over.
const NODE: &str = "robust-node";

/// SIGKILL → first write kubectl gets through member `via` (in a
/// namespace the traffic does not watch).
fn kubectl_back(m: &Members, via: usize, killed: Instant) -> Duration {
    for n in 0.. {
        let name = format!("probe-{n}");
        let out = m.kubectl(via, &["create", "configmap", &name, "-n", "kube-public"]);
        if out.status.success() {
            return killed.elapsed();
        }
        eprintln!(
            "kubectl on member {} at {:?} after the kill: {}",
            via + 1,
            killed.elapsed(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "kubectl on member {} still fails 10 s after the kill: {}",
            via + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    unreachable!()
}

fn node_lease(m: &Members, via: usize) -> String {
    m.kubectl_ok(
        via,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            NODE,
            "-o",
            "jsonpath={.spec.renewTime}",
        ],
    )
}

/// One scenario at a time: each loads the machine, and timings are judged.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(fault: Fault) -> (History, Timeline, Members) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    eprintln!(
        "robustness {fault:?}: seed {seed} (WEFT_ROBUSTNESS_SEED={seed} repeats its traffic)"
    );
    let mut m = Members::start(3);
    let api = Api::of(&m);
    let target = m.leader(0).expect("a leader");
    let survivor = (target + 1) % 3;
    if fault == Fault::Kill {
        m.spawn_agent(survivor, NODE, &[target, survivor, (target + 2) % 3]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !m
            .kubectl(survivor, &["get", "lease", "-n", "kube-node-lease", NODE])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "the node agent never registered");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let until = Instant::now() + TRAFFIC;
    let traffic = {
        let api = api.clone();
        std::thread::spawn(move || traffic::run(&api, seed, CLIENTS, until))
    };
    std::thread::sleep(FAULT_AT);
    match fault {
        Fault::Kill => m.kill(target),
        Fault::Pause => m.pause(target),
        Fault::Partition => m.hosts.disconnect(target),
        Fault::SlowLink => m.hosts.slow(target),
    }
    // The fault is in place once its command returned.
    let begin = api.t0.elapsed().as_nanos() as u64;
    let injected = Instant::now();
    eprintln!(
        "{fault:?} of member {} at {:?}",
        target + 1,
        api.t0.elapsed()
    );
    let back = (fault == Fault::Kill).then(|| kubectl_back(&m, survivor, injected));
    std::thread::sleep(FAULT_FOR.saturating_sub(injected.elapsed()));
    let end = api.t0.elapsed().as_nanos() as u64;
    match fault {
        Fault::Kill => m.restart(target),
        Fault::Pause => m.resume(target),
        Fault::Partition => m.hosts.reconnect(target),
        Fault::SlowLink => m.hosts.unslow(target),
    }
    let mut h = traffic.join().expect("traffic");
    h.scenario = format!("{fault:?}");
    h.finals = traffic::finals(&api);
    let t = Timeline {
        target,
        fault: (begin, end),
        kubectl_back: back,
    };
    (h, t, m)
}

/// Runs the checks; on a violation saves the history and fails.
fn verdict(h: &History, extra: Vec<String>) {
    let acked = h
        .ops
        .iter()
        .filter(|o| matches!(o.ret, Ret::Written(_) | Ret::Deleted))
        .count();
    let unknown = h.ops.iter().filter(|o| o.ret == Ret::Unknown).count();
    let events: usize = h.streams.iter().map(|s| s.events.len()).sum();
    eprintln!(
        "{}: {} ops ({acked} writes acknowledged, {unknown} without answer), {} lists, {} watch streams with {events} events",
        h.scenario,
        h.ops.len(),
        h.lists.len(),
        h.streams.len()
    );
    let mut v = checker::check(h);
    v.extend(extra);
    if acked < 50 {
        v.push(format!(
            "only {acked} writes were acknowledged: too little traffic to judge"
        ));
    }
    if !v.is_empty() {
        let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("robustness-{}-{}.json", h.scenario, h.seed));
        std::fs::write(&file, serde_json::to_vec(h).unwrap()).unwrap();
        panic!(
            "seed {} ({}): {} violations (history saved; WEFT_ROBUSTNESS_REPLAY={} cargo test --test robustness replay -- --ignored):\n{}",
            h.seed,
            h.scenario,
            v.len(),
            file.display(),
            v.join("\n")
        );
    }
}

/// SIGKILL of the leader: kubectl through a survivor works again within
/// 2 s, the node agent that used the dead member keeps renewing its Lease
/// through another and its Node stays Ready.
#[test]
fn leader_killed_under_load() {
    let (h, t, m) = run(Fault::Kill);
    let back = t.kubectl_back.expect("measured");
    eprintln!("kubectl wrote through a survivor {back:?} after the SIGKILL");
    let mut extra = Vec::new();
    if back > Duration::from_secs(2) {
        extra.push(format!(
            "kubectl took {back:?} to write through a survivor (over 2 s)"
        ));
    }
    let survivor = (t.target + 1) % 3;
    let renewed = node_lease(&m, survivor);
    std::thread::sleep(Duration::from_millis(2500));
    if node_lease(&m, survivor) == renewed {
        extra.push("the node agent stopped renewing its Lease after its member died".into());
    }
    let ready = m.kubectl_ok(
        survivor,
        &[
            "get",
            "node",
            NODE,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ],
    );
    if ready != "True" {
        extra.push(format!(
            "the node is Ready={ready} after the leader's death"
        ));
    }
    verdict(&h, extra);
}

#[test]
fn leader_paused_under_load() {
    let (h, _, _m) = run(Fault::Pause);
    verdict(&h, vec![]);
}

/// The cut-off leader's side commits nothing: every call its clients
/// sent while it was cut off, and that ended before the heal, got an
/// error, never a success (stale or not).
#[test]
fn leader_partitioned_under_load() {
    let (h, t, _m) = run(Fault::Partition);
    let (begin, end) = t.fault;
    // A call without an answer ends at NEVER, so never before the heal.
    let mut answered: Vec<String> = h
        .ops
        .iter()
        .filter(|o| o.member == t.target && o.start >= begin && o.end < end)
        .filter(|o| o.ret != Ret::Unknown)
        .map(|o| format!("the cut-off member answered {:?} with {:?}", o.call, o.ret))
        .collect();
    // Meanwhile the majority elects a leader and keeps committing.
    let majority = h
        .ops
        .iter()
        .filter(|o| o.member != t.target && o.start >= begin && o.end < end)
        .filter(|o| matches!(o.ret, Ret::Written(_)))
        .count();
    eprintln!("the majority acknowledged {majority} writes while the leader was cut off");
    if majority == 0 {
        answered.push("the majority committed nothing while the leader was cut off".into());
    }
    verdict(&h, answered);
}

#[test]
fn leader_link_slow_and_lossy() {
    let (h, _, _m) = run(Fault::SlowLink);
    verdict(&h, vec![]);
}

/// Checks a history a failed run saved: `WEFT_ROBUSTNESS_REPLAY=FILE
/// cargo test --test robustness replay -- --ignored --nocapture`.
#[test]
#[ignore = "replays the history file named by WEFT_ROBUSTNESS_REPLAY"]
fn replay() {
    let file = std::env::var("WEFT_ROBUSTNESS_REPLAY").expect("WEFT_ROBUSTNESS_REPLAY=FILE");
    let h: History =
        serde_json::from_slice(&std::fs::read(&file).expect("read the history")).expect("parse");
    let v = checker::check(&h);
    assert!(
        v.is_empty(),
        "seed {} ({}): {} violations:\n{}",
        h.seed,
        h.scenario,
        v.len(),
        v.join("\n")
    );
}
