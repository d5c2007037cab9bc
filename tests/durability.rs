//! `kill -9` of `weft up` under a write load loses no acknowledged write.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;

const WRITERS: usize = 16;
const MAX_WRITES_PER_WRITER: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start_in(dir.path());
    let (http, token, url) = (cluster.http(), cluster.token(), cluster.url.clone());
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, token, url, acked) = (http.clone(), token.clone(), url.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            // Bounded in count; the kill below ends it sooner.
            for i in 0..MAX_WRITES_PER_WRITER {
                let name = format!("cm-{w}-{i}");
                let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name}, "data": {"writer": w.to_string(), "seq": i.to_string()}});
                let resp = http
                    .post(format!("{url}/api/v1/namespaces/default/configmaps"))
                    .bearer_auth(&token)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 201 => acked.lock().unwrap().push(name),
                    _ => return,
                }
            }
        }));
    }

    // Let the load run until plenty is acknowledged (bounded in time), then SIGKILL mid-flight.
    let start = Instant::now();
    while acked.lock().unwrap().len() < 500 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "the load made too little progress to test anything: {}",
        acked.len()
    );

    let cluster = TestCluster::start_in(dir.path());
    let http = cluster.http();
    let token = cluster.token();
    let list: serde_json::Value = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps",
            cluster.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let present: std::collections::HashSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    // Every acknowledged object reads back whole.
    let sample = &acked[acked.len() / 2];
    let obj: serde_json::Value = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps/{sample}",
            cluster.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (w, i) = sample.trim_start_matches("cm-").split_once('-').unwrap();
    assert_eq!(obj["data"]["writer"], w);
    assert_eq!(obj["data"]["seq"], i);
    println!(
        "acknowledged {} writes before kill -9; all {} present after restart",
        acked.len(),
        acked.len()
    );
}

#[test]
fn restart_keeps_state_and_sigterm_shuts_down_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start_in(dir.path());
    c.kubectl_ok(&["create", "configmap", "survivor", "--from-literal=k=v"]);
    let took = c.stop();
    assert!(
        took < Duration::from_secs(15),
        "clean shutdown took {took:?}"
    );
    let c = TestCluster::start_in(dir.path());
    assert_eq!(
        c.kubectl_ok(&["get", "configmap", "survivor", "-o", "jsonpath={.data.k}"]),
        "v"
    );
}
