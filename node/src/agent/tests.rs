//! The pod loop on a fake workload and a recording API, in paused time.

use std::time::Duration;

use serde_json::json;
use weft_api::k8s_openapi::api::core::v1::Pod;

use super::fake::{Call, FakeWorkload, Harness, Op};

fn pod(name: &str) -> Pod {
    super::fake::pod(name, json!({}))
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
    assert!(!h.workload.ops().contains(&Op::Start("slow".into())));
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
    assert_eq!(h.workload.stops("slow"), 0, "still starting");
    assert!(
        !h.api
            .calls
            .lock()
            .unwrap()
            .contains(&Call::FinishDeletion("slow".into()))
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.workload.stops("slow"), 1, "stopped once started");
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
    // Run 0 exits while its start is still in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.exit("job", 0, 3);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let last = h.api.statuses("job").last().cloned().unwrap();
    let app = &last["status"]["containerStatuses"][0];
    assert_eq!(app["lastState"]["terminated"]["exitCode"], 3, "{last}");
    assert_eq!(app["restartCount"], 1);
    assert_eq!(app["state"]["waiting"]["reason"], "CrashLoopBackOff");
    // After the 10 s backoff run 1 starts; its exit 0 completes the pod.
    tokio::time::sleep(Duration::from_secs(12)).await;
    h.exit("job", 1, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = h.api.statuses("job").last().cloned().unwrap();
    assert_eq!(last["status"]["phase"], "Succeeded", "{last}");
}
