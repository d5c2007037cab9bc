//! Pod lifecycles on the fake runtime and the recording API, in paused
//! time: restarts and their backoff, probes, termination, deadlines, Job
//! pods and adoption. Each runs minutes of the agent's time in milliseconds.

use std::time::Duration;

use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use super::fake::{FakeWorkload, Harness, Op, deleted, pod};

/// Waits (in paused time, up to an hour of it) for an operation matching
/// `f`, and returns when it happened.
async fn op(h: &Harness, f: impl Fn(&Op) -> bool) -> Instant {
    for _ in 0..36_000 {
        if let Some(t) = h.workload.times(&f).first() {
            return *t;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("no such operation: {:?}", h.workload.ops());
}

fn restart_of(pod: &str, run: u32) -> impl Fn(&Op) -> bool {
    let pod = pod.to_string();
    move |o| matches!(o, Op::Restart(p, _, r) if *p == pod && *r == run)
}

fn condition(status: &Value, ty: &str) -> bool {
    let conditions = status["status"]["conditions"].as_array().cloned();
    conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

fn app(status: &Value) -> &Value {
    &status["status"]["containerStatuses"][0]
}

fn probes(extra: Value) -> Value {
    let mut c = json!({"name": "app", "image": "reg/app:1"});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    json!({"containers": [c]})
}

fn exec(cmd: &str, period: i32, failures: i32) -> Value {
    json!({"exec": {"command": [cmd]}, "periodSeconds": period, "failureThreshold": failures})
}

#[tokio::test(start_paused = true)]
async fn crashes_back_off_10s_doubling_to_5_minutes_and_reset_after_10_minutes_running() {
    let h = Harness::start(FakeWorkload::default());
    h.apply(pod("crashy", json!({})));
    sleep(Duration::from_secs(1)).await;
    let mut delays = Vec::new();
    for run in 0..7 {
        let exited = Instant::now();
        h.exit("crashy", run, 1);
        if run == 0 {
            sleep(Duration::from_secs(1)).await;
            let waiting = h.last("crashy");
            let app = app(&waiting);
            assert_eq!(app["state"]["waiting"]["reason"], "CrashLoopBackOff");
            assert_eq!(app["restartCount"], 1);
            assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
            assert!(!condition(&waiting, "Ready"), "{waiting}");
        }
        let restarted = op(&h, restart_of("crashy", run + 1)).await;
        delays.push((restarted - exited).as_secs());
    }
    assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
    let running = h.last("crashy");
    assert!(app(&running)["state"]["running"].is_object(), "{running}");
    assert_eq!(app(&running)["restartCount"], 7);
    // Ten minutes of running resets the backoff.
    sleep(Duration::from_secs(600)).await;
    let exited = Instant::now();
    h.exit("crashy", 7, 1);
    let restarted = op(&h, restart_of("crashy", 8)).await;
    assert_eq!((restarted - exited).as_secs(), 10);
}

#[tokio::test(start_paused = true)]
async fn liveness_failures_restart_and_readiness_failures_only_unready() {
    let h = Harness::start(FakeWorkload::default());
    let spec = probes(json!({"livenessProbe": exec("live", 1, 3),
        "readinessProbe": exec("ready", 1, 1)}));
    h.apply(pod("web", spec));
    sleep(Duration::from_secs(2)).await;
    assert!(condition(&h.last("web"), "Ready"), "{}", h.last("web"));

    h.workload.answer("web", "ready", 1);
    sleep(Duration::from_secs(2)).await;
    let unready = h.last("web");
    assert!(!condition(&unready, "Ready"), "{unready}");
    assert_eq!(app(&unready)["ready"], false);
    assert!(
        app(&unready)["state"]["running"].is_object(),
        "not restarted"
    );
    assert_eq!(h.api.events("web"), ["Unhealthy"]);
    h.workload.answer("web", "ready", 0);
    sleep(Duration::from_secs(2)).await;
    assert!(condition(&h.last("web"), "Ready"), "ready again");

    let failing = Instant::now();
    h.workload.answer("web", "live", 1);
    let stopped = op(&h, |o| matches!(o, Op::Stop(p, ..) if p == "web")).await;
    // Three failures, a period apart: the third comes 2-3 s after the first.
    assert!(stopped - failing <= Duration::from_secs(3), "{stopped:?}");
    assert_eq!(h.api.events("web")[1..], ["Unhealthy", "Killing"]);
    let killed = h.last("web");
    let last = &app(&killed)["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137);
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("Liveness probe failed"),
        "{killed}"
    );
    h.workload.answer("web", "live", 0);
    let restarted = op(&h, restart_of("web", 1)).await;
    assert_eq!((restarted - stopped).as_secs(), 10);
    sleep(Duration::from_secs(2)).await;
    let back = h.last("web");
    assert!(condition(&back, "Ready"), "{back}");
    assert_eq!(app(&back)["restartCount"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_startup_probe_gates_liveness_and_readiness() {
    let h = Harness::start(FakeWorkload::default());
    let spec = probes(json!({"startupProbe": exec("started", 1, 30),
        "livenessProbe": exec("live", 1, 1)}));
    h.workload.answer("slow", "started", 1);
    h.workload.answer("slow", "live", 1);
    h.apply(pod("slow", spec.clone()));
    sleep(Duration::from_secs(10)).await;
    // Liveness fails all along, but nobody asks it before startup succeeds.
    assert!(
        h.api.events("slow").is_empty(),
        "{:?}",
        h.api.events("slow")
    );
    assert!(!condition(&h.last("slow"), "Ready"));
    h.workload.answer("slow", "started", 0);
    h.workload.answer("slow", "live", 0);
    sleep(Duration::from_secs(2)).await;
    let started = h.last("slow");
    assert!(
        condition(&started, "Ready"),
        "ready once started: {started}"
    );
    assert_eq!(app(&started)["restartCount"], 0);
    h.workload.answer("slow", "live", 1);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.api.events("slow"), ["Unhealthy", "Killing"]);

    // A startup probe that never succeeds kills the container after its
    // failureThreshold × periodSeconds.
    let spec = probes(json!({"startupProbe": exec("started", 2, 3)}));
    h.workload.answer("never", "started", 1);
    h.apply(pod("never", spec));
    let stopped = op(&h, |o| matches!(o, Op::Stop(p, ..) if p == "never")).await;
    let killed = h.last("never");
    let message = app(&killed)["lastState"]["terminated"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with("Startup probe failed")
    );
    assert!(stopped.elapsed() < Duration::from_secs(1));
    op(&h, restart_of("never", 1)).await;
}

#[tokio::test(start_paused = true)]
async fn termination_drains_through_pre_stop_then_gives_the_rest_of_the_grace() {
    let h = Harness::start(FakeWorkload {
        stubborn: ["stubborn".to_string()].into(),
        ..Default::default()
    });
    let spec = json!({"terminationGracePeriodSeconds": 30, "containers": [{"name": "app",
        "image": "reg/app:1", "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}]});
    let (stubborn, quick) = (pod("stubborn", spec), pod("quick", json!({})));
    h.apply(stubborn.clone());
    h.apply(quick.clone());
    sleep(Duration::from_secs(1)).await;
    let deleted_at = Instant::now();
    h.apply(deleted(&stubborn, 30));
    h.apply(deleted(&quick, 30));
    sleep(Duration::from_millis(100)).await;
    // Not ready at once, so that endpoints drop it; still serving.
    let draining = h.last("stubborn");
    assert!(!condition(&draining, "Ready"), "{draining}");
    assert!(draining["status"]["phase"].is_null(), "{draining}");
    // A container that exits on SIGTERM ends the deletion at once.
    assert!(h.api.finished("quick"));
    let quick_stop = Op::Stop("quick".into(), "app".into(), Duration::from_secs(30));
    assert!(h.workload.ops().contains(&quick_stop));

    sleep(Duration::from_secs(4)).await;
    assert!(!h.api.finished("stubborn"), "still in its preStop sleep");
    // One that ignores SIGTERM is killed when the rest of the grace runs out.
    let stopped = op(&h, |o| matches!(o, Op::Stop(p, ..) if p == "stubborn")).await;
    assert_eq!((stopped - deleted_at).as_secs(), 30);
    let stop = Op::Stop("stubborn".into(), "app".into(), Duration::from_secs(25));
    assert!(h.workload.ops().contains(&stop), "{:?}", h.workload.ops());
    sleep(Duration::from_millis(100)).await;
    assert!(h.api.finished("stubborn"));
    assert!(
        h.workload
            .ops()
            .contains(&Op::Release("uid-stubborn".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn active_deadline_fails_the_pod_with_deadline_exceeded() {
    let h = Harness::start(FakeWorkload::default());
    let late = pod("late", json!({"activeDeadlineSeconds": 30}));
    h.apply(late.clone());
    sleep(Duration::from_secs(29)).await;
    assert_eq!(h.last("late")["status"]["phase"], "Running");
    sleep(Duration::from_secs(2)).await;
    let failed = h.last("late");
    assert_eq!(failed["status"]["phase"], "Failed", "{failed}");
    assert_eq!(failed["status"]["reason"], "DeadlineExceeded");
    assert_eq!(h.api.events("late"), ["DeadlineExceeded"]);
    assert!(h.workload.ops().contains(&Op::Release("uid-late".into())));
    // A later event about the pod starts nothing again.
    h.apply(late);
    sleep(Duration::from_secs(15)).await;
    let starts = h.workload.times(|o| matches!(o, Op::Start(_)));
    assert_eq!(starts.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn job_pods_restart_by_their_restart_policy() {
    let h = Harness::start(FakeWorkload::default());
    for name in ["never-fails", "never-succeeds"] {
        h.apply(pod(name, json!({"restartPolicy": "Never"})));
    }
    h.apply(pod("on-failure", json!({"restartPolicy": "OnFailure"})));
    sleep(Duration::from_secs(1)).await;
    h.exit("never-fails", 0, 1);
    h.exit("never-succeeds", 0, 0);
    h.exit("on-failure", 0, 2);
    sleep(Duration::from_secs(30)).await;
    let failed = h.last("never-fails");
    assert_eq!(failed["status"]["phase"], "Failed", "{failed}");
    assert_eq!(app(&failed)["state"]["terminated"]["exitCode"], 1);
    assert_eq!(app(&failed)["restartCount"], 0);
    assert_eq!(h.last("never-succeeds")["status"]["phase"], "Succeeded");
    for name in ["never-fails", "never-succeeds"] {
        let restarts = h
            .workload
            .times(|o| matches!(o, Op::Restart(p, ..) if p == name));
        assert!(restarts.is_empty(), "{name} restarted");
        assert!(
            h.workload
                .ops()
                .contains(&Op::Release(format!("uid-{name}")))
        );
    }
    // OnFailure: a failure runs it again, a success completes it.
    op(&h, restart_of("on-failure", 1)).await;
    assert_eq!(h.last("on-failure")["status"]["phase"], "Running");
    h.exit("on-failure", 1, 0);
    sleep(Duration::from_secs(1)).await;
    let done = h.last("on-failure");
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    assert_eq!(app(&done)["restartCount"], 1);
    assert_eq!(app(&done)["lastState"]["terminated"]["exitCode"], 2);
}

/// Each container of a pod ends and restarts on its own (kubelet): one
/// that completed stays Completed while its neighbour restarts.
#[tokio::test(start_paused = true)]
async fn containers_of_a_pod_end_and_restart_on_their_own() {
    let h = Harness::start(FakeWorkload::default());
    let two = |policy: &str| {
        json!({"restartPolicy": policy, "containers": [{"name": "ok", "image": "reg/job:1"},
            {"name": "fail", "image": "reg/job:1"}]})
    };
    h.apply(pod("on-failure", two("OnFailure")));
    h.apply(pod("never", two("Never")));
    sleep(Duration::from_secs(1)).await;
    for p in ["on-failure", "never"] {
        h.exit_of(p, "ok", 0, 0);
        h.exit_of(p, "fail", 0, 3);
    }
    sleep(Duration::from_secs(1)).await;
    let field = |pod: &str, i: usize, path: &[&str]| {
        let last = h.last(pod);
        let mut v = last["status"]["containerStatuses"][i].clone();
        for p in path {
            v = v[p].clone();
        }
        v
    };
    let reasons = |pod: &str| [0, 1].map(|i| field(pod, i, &["state", "terminated", "reason"]));
    assert_eq!(h.last("never")["status"]["phase"], "Failed");
    assert_eq!(reasons("never"), [json!("Completed"), json!("Error")]);
    assert_eq!(h.last("on-failure")["status"]["phase"], "Running");
    assert_eq!(
        field("on-failure", 0, &["state", "terminated", "reason"]),
        "Completed"
    );
    assert_eq!(
        field("on-failure", 1, &["state", "waiting", "reason"]),
        "CrashLoopBackOff"
    );
    let restarted = |o: &Op| matches!(o, Op::Restart(p, c, 1) if p == "on-failure" && c == "fail");
    op(&h, restarted).await;
    assert!(
        !h.workload
            .ops()
            .iter()
            .any(|o| matches!(o, Op::Restart(_, c, _) if c == "ok"))
    );
    h.exit_of("on-failure", "fail", 1, 0);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.last("on-failure")["status"]["phase"], "Succeeded");
    assert_eq!(field("on-failure", 0, &["restartCount"]), 0);
    assert_eq!(field("on-failure", 1, &["restartCount"]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_adopts_running_pods_and_collects_the_rest() {
    let h = Harness::start(FakeWorkload::default());
    let kept = pod("kept", json!({}));
    h.apply(kept.clone());
    h.apply(pod("gone", json!({})));
    sleep(Duration::from_secs(1)).await;
    // `gone` started second: the next agent asks for its IP for `kept`,
    // and must get it, as the pod keeps it.
    let ip = h.last("gone")["status"]["podIP"].clone();
    let workload = h.workload.clone();
    h.stop().await;
    // An agent that stops leaves its workloads running.
    assert!(
        !workload.ops().iter().any(|o| matches!(o, Op::Stop(..))),
        "{:?}",
        workload.ops()
    );

    // The next agent lists only `kept` (`gone` was deleted meanwhile), as
    // the API server has it: two restarts, the last one's failure, its start time.
    let mut listed = serde_json::to_value(&kept).unwrap();
    listed["status"] = json!({"phase": "Running", "startTime": "2026-12-07T00:00:00Z",
        "podIP": ip, "containerStatuses": [{"name": "app", "ready": true,
        "restartCount": 2, "image": "reg/app:1", "imageID": "sha256:ab",
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]});
    let h = Harness::on(workload);
    h.events.send(Ok(watcher::Event::Init)).unwrap();
    let listed = serde_json::from_value(listed).unwrap();
    h.events
        .send(Ok(watcher::Event::InitApply(listed)))
        .unwrap();
    h.events.send(Ok(watcher::Event::InitDone)).unwrap();
    sleep(Duration::from_secs(1)).await;
    let collected = Op::Collect(vec!["uid-kept".into()]);
    assert!(
        h.workload.ops().contains(&collected),
        "{:?}",
        h.workload.ops()
    );
    let status = h.last("kept");
    assert_eq!(status["status"]["phase"], "Running", "{status}");
    assert_eq!(status["status"]["startTime"], "2026-12-07T00:00:00Z");
    assert_eq!(status["status"]["podIP"], ip, "the same IP");
    assert_eq!(app(&status)["restartCount"], 2, "counts carry on");
    assert_eq!(app(&status)["lastState"]["terminated"]["exitCode"], 1);
    assert!(
        !h.workload
            .ops()
            .iter()
            .any(|o| matches!(o, Op::Restart(..)))
    );
    // Its next crash is run 2's, and run 3 follows.
    h.exit("kept", 2, 1);
    op(&h, restart_of("kept", 3)).await;
}
