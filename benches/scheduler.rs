//! A scheduler_perf-style benchmark: simulated nodes (Node objects with no
//! agent) and pending pods in the real Raft + rocksdb store, then the real
//! scheduler binding them through `pods/binding`.
//!
//!   cargo bench --profile dev --bench scheduler            (5,000 nodes, 10,000 pods)
//!   cargo bench --profile dev --bench scheduler -- quick   (500 nodes, 1,000 pods)
//!   cargo bench --profile dev --bench scheduler -- basic   (one case: basic, anti, spread)
//!
//! Each case gets a fresh control plane. The baseline, measured in the same
//! run, binds the same pods round-robin with no scheduling logic at all: the
//! ceiling the store and the binding path put on any scheduler here.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::watch;
use weft_control_plane::cluster::res;
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

use weft_control_plane::cluster::Writer;
use weft_control_plane::member::writer::InProcess;

// The same allocator as the weft binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ZONES: usize = 10;
const CONCURRENCY: usize = 64;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn node(i: usize) -> Value {
    let name = format!("node-{i:05}");
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES), "runtime.weft.dev/wasmtime": "true"}},
        "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}})
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Baseline,
    Basic,
    AntiAffinity,
    TopologySpread,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Baseline => "baseline: bind round-robin, no scheduling",
            Case::Basic => "basic",
            Case::AntiAffinity => "required pod anti-affinity (hostname, 10 groups)",
            Case::TopologySpread => "topology spread (zone, maxSkew 1)",
        }
    }
}

fn pod(case: Case, i: usize) -> Value {
    let group = format!("g{}", i % 10);
    let mut spec = json!({"runtimeClassName": "wasm",
        "containers": [{"name": "app", "image": "127.0.0.1:5000/hello:1",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]});
    match case {
        Case::AntiAffinity => {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"group": group}}, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        Case::TopologySpread => {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "bench"}}}]);
        }
        _ => {}
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "namespace": "default", "labels": {"app": "bench", "group": group}},
        "spec": spec})
}

/// Writes `objects` through the API with bounded concurrency.
async fn create_all(client: &InProcess, plural: &str, objects: Vec<Value>) {
    let r = res(plural);
    futures::stream::iter(objects)
        .for_each_concurrent(CONCURRENCY, |o| {
            let client = client.clone();
            async move {
                let ns = if plural == "pods" { "default" } else { "" };
                client.create(r, ns, o).await.expect("create");
            }
        })
        .await;
}

struct Result {
    rate: f64,
    seconds: f64,
    rss_growth: f64,
}

async fn run_case(case: Case, nodes: usize, pods: usize) -> Result {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ControlPlaneConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    cfg.insecure = true;
    cfg.run_controllers = false;
    cfg.watch_window = 200_000;
    let cp = ControlPlane::start(cfg).await.expect("control plane");
    let client = InProcess::new(cp.api.registry.clone());
    client
        .create(
            res("runtimeclasses"),
            "",
            json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "wasm"}, "handler": "wasmtime"}),
        )
        .await
        .unwrap();
    create_all(&client, "nodes", (0..nodes).map(node).collect()).await;
    create_all(&client, "pods", (0..pods).map(|i| pod(case, i)).collect()).await;

    let (stop_tx, stop) = watch::channel(false);
    let (cache, _feed) =
        weft_control_plane::member::mirror::start(cp.api.store.clone(), stop.clone());
    cache.synced().await;
    let mut feed = cache.subscribe();
    let already = cache
        .read()
        .list("", "pods", Some("default"))
        .filter(|p| p.pointer("/spec/nodeName").is_some())
        .count();
    assert_eq!(already, 0);
    let rss_before = rss_mib();
    let start = Instant::now();
    let scheduler = if case == Case::Baseline {
        let client = client.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..pods)
                .for_each_concurrent(256, |i| {
                    let client = client.clone();
                    async move {
                        let node = format!("node-{:05}", i % nodes);
                        client
                            .bind("default", &format!("pod-{i:05}"), &node)
                            .await
                            .expect("bind");
                    }
                })
                .await;
        })
    } else {
        tokio::spawn(weft_control_plane::scheduler::run(
            cache.clone(),
            Arc::new(client.clone()),
            stop.clone(),
        ))
    };
    let mut bound = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while bound < pods && Instant::now() < deadline {
        let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(30), feed.recv()).await else {
            break;
        };
        let newly = c
            .new
            .as_ref()
            .is_some_and(|n| n.pointer("/spec/nodeName").is_some())
            && c.old
                .as_ref()
                .is_some_and(|o| o.pointer("/spec/nodeName").is_none());
        bound += usize::from(c.resource() == ("", "pods") && newly);
    }
    let seconds = start.elapsed().as_secs_f64();
    let rss_growth = rss_mib() - rss_before;
    assert_eq!(
        bound,
        pods,
        "{}: only {bound} of {pods} pods were bound",
        case.name()
    );
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    cp.shutdown(Duration::from_secs(5)).await;
    Result {
        rate: pods as f64 / seconds,
        seconds,
        rss_growth,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (nodes, pods) = if quick { (500, 1_000) } else { (5_000, 10_000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "scheduler benchmark: {nodes} simulated nodes, {pods} pods, real store, 2-core machine\n"
    );
    let baseline = rt.block_on(run_case(Case::Baseline, nodes, pods));
    println!(
        "{:<52} {:>9.0} pods/s  ({:.2} s)",
        Case::Baseline.name(),
        baseline.rate,
        baseline.seconds
    );
    // Naming cases (basic, anti, spread) runs just those.
    let only: Vec<String> = std::env::args()
        .filter(|a| ["basic", "anti", "spread"].contains(&a.as_str()))
        .collect();
    let cases = [
        (Case::Basic, "basic"),
        (Case::AntiAffinity, "anti"),
        (Case::TopologySpread, "spread"),
    ];
    for (case, _) in cases
        .into_iter()
        .filter(|(_, n)| only.is_empty() || only.iter().any(|o| o == n))
    {
        let r = rt.block_on(run_case(case, nodes, pods));
        println!(
            "{:<52} {:>9.0} pods/s  ({:.2} s, {:.0}% of baseline, RSS +{:.0} MiB while scheduling)",
            case.name(),
            r.rate,
            r.seconds,
            100.0 * r.rate / baseline.rate,
            r.rss_growth
        );
    }
    println!("\nprocess RSS at the end: {:.0} MiB", rss_mib());
}
