//! When a host dies, its pods move (Kubernetes' first promise): on three
//! namespace hosts with routed agents, a host is cut off while a Service
//! over a Deployment spread across the hosts serves bounded load from
//! another host.

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::time::{Duration, Instant};

use common::routed::*;
use serde_json::Value;

/// How long the load runs, and at most how many requests it sends.
const LOAD_SECS: u64 = 20;
const LOAD_MAX: u32 = 20_000;

/// GETs `url` from start to `LOAD_SECS` (at most `LOAD_MAX` times), each
/// with a 5 s timeout, and writes `{ok, failed: [[seconds, error]]}`.
const LOAD: &str = r#"
import json, sys, time, urllib.request
url, out, secs, most = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
t0 = time.time(); ok = 0; failed = []; n = 0
while time.time() - t0 < secs and n < most:
    n += 1; t = time.time()
    try:
        urllib.request.urlopen(url, timeout=5).read(); ok += 1
    except Exception as e:
        failed.append([round(t - t0, 3), str(e)[:100]])
    time.sleep(0.01)
json.dump({"ok": ok, "failed": failed}, open(out, "w"))
"#;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 3
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      runtimeClassName: wasm
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: hello}}}
      # Kubernetes' default is 300 s; the test waits 2.
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - name: app
        image: IMAGE
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
";

/// The Deployment's pods that serve: Ready and not terminating, by node.
fn serving(m: &common::hosts::Members) -> Vec<String> {
    let list: Value =
        serde_json::from_str(&m.kubectl_ok(0, &["get", "pods", "-l", "app=hello", "-o", "json"]))
            .unwrap();
    let mut nodes: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter(|p| {
            p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .filter_map(|p| p.pointer("/spec/nodeName")?.as_str().map(String::from))
        .collect();
    nodes.sort();
    nodes
}

/// Waits (bounded) until `ok`, checking every 100 ms; returns when. A
/// timeout shows the pods and nodes.
fn until(
    m: &common::hosts::Members,
    what: &str,
    limit: Duration,
    ok: &dyn Fn() -> bool,
) -> Instant {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            let pods = m.kubectl(0, &["get", "pods,nodes,events", "-o", "wide"]);
            panic!(
                "{what} within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&pods.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Instant::now()
}

#[test]
fn a_host_cut_off_has_its_pods_replaced_and_its_service_keeps_answering() {
    let (mut m, _agents, _blocks) =
        routed_cluster_with(&["--node-monitor-grace-period", "4s"], &[]);
    let dir = tempfile::tempdir().unwrap();
    registries(
        &mut m,
        dir.path(),
        &guests::sample("hello"),
        &guests::guest("wasm-host/tests/guests/fetch", "fetch"),
    );
    m.kubectl_stdin(
        0,
        &["apply", "-f", "-"],
        &DEPLOYMENT.replace("IMAGE", IMAGE_HELLO),
    );
    until(
        &m,
        "one serving pod per node",
        Duration::from_secs(60),
        &|| serving(&m) == ["node-1", "node-2", "node-3"],
    );
    let cluster_ip = cluster_ip(&m, "hello");
    let url = format!("http://{cluster_ip}/");
    assert!(
        http_from(&m, 0, &url).starts_with("Hello from hello-"),
        "the Service answers host 1"
    );

    // Load from host 1; a second later host 3 goes dark.
    let report = dir.path().join("load.json");
    let mut load = m.hosts.command(0, "python3");
    load.args(["-c", LOAD, &url])
        .arg(&report)
        .args([LOAD_SECS.to_string(), LOAD_MAX.to_string()]);
    let started = Instant::now();
    m.hosts.spawn(load);
    std::thread::sleep(Duration::from_secs(1));
    let cut = Instant::now();
    m.hosts.disconnect(2);

    let not_ready = until(&m, "node-3 NotReady", Duration::from_secs(30), &|| {
        m.kubectl_ok(
            0,
            &[
                "get",
                "node",
                "node-3",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        ) != "True"
    });
    let full = until(
        &m,
        "three serving pods on the other hosts",
        Duration::from_secs(35),
        &|| {
            let s = serving(&m);
            s.len() == 3 && !s.iter().any(|n| n == "node-3")
        },
    );
    let placed = serving(&m);
    assert!(
        placed.contains(&"node-1".into()) && placed.contains(&"node-2".into()),
        "replacements on both hosts left: {placed:?}"
    );

    until(
        &m,
        "the load finished",
        Duration::from_secs(LOAD_SECS + 20),
        &|| report.exists(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let ok = r["ok"].as_u64().unwrap();
    let failed = r["failed"].as_array().unwrap();
    let full_at = (full - started).as_secs_f64();
    eprintln!(
        "host 3 cut at {:.1} s; NotReady after {:.1} s; full capacity after {:.1} s; {ok} requests answered, {} failed: {failed:?}",
        (cut - started).as_secs_f64(),
        (not_ready - cut).as_secs_f64(),
        (full - cut).as_secs_f64(),
        failed.len()
    );
    assert!(ok > 100, "the load ran: {ok} answered");
    // Once the replacements serve, every request is answered.
    let late: Vec<&Value> = failed
        .iter()
        .filter(|f| f[0].as_f64().unwrap() > full_at + 1.0)
        .collect();
    assert!(late.is_empty(), "failures after full capacity: {late:?}");
    // The evicted pods stay Terminating while host 3 might still run them;
    // an operator's out-of-service taint says it does not, and pod GC
    // removes them.
    let on_node_3 = |m: &common::hosts::Members| {
        m.kubectl_ok(
            0,
            &[
                "get",
                "pods",
                "--field-selector",
                "spec.nodeName=node-3",
                "-o",
                "name",
            ],
        )
    };
    assert!(!on_node_3(&m).is_empty(), "evicted pods wait on node-3");
    m.kubectl_ok(
        0,
        &[
            "taint",
            "node",
            "node-3",
            "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute",
        ],
    );
    until(
        &m,
        "pod GC removed node-3's pods",
        Duration::from_secs(20),
        &|| on_node_3(&m).is_empty(),
    );
    assert_eq!(
        http_from(&m, 1, &url).split('-').next(),
        Some("Hello from hello"),
        "host 2 reaches the Service too"
    );
}
