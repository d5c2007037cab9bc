//! API benchmark through the real HTTPS API and the real Raft + rocksdb store.
//!
//!   cargo bench --profile dev --bench api            (all figures)
//!   cargo bench --profile dev --bench api -- quick   (smaller counts)
//!
//! Prints pod creates/s and p50/p99 latency with 1 and 64 clients, the latency
//! of one write reaching 100 watchers, and the floor it all sits on: one
//! synced rocksdb put, measured on the same disk in the same run.

#[path = "common/watch.rs"]
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn pod(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "tier": "web"}},
           "spec": {"containers": [{"name": "hello", "image": "127.0.0.1:5000/hello:1",
                     "ports": [{"containerPort": 8080}], "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                     "env": [{"name": "GREETING", "value": "hello"}]}]}})
}

/// The floor: serial synced rocksdb puts of a pod-sized value.
fn fsync_baseline(dir: &std::path::Path, n: usize) -> Duration {
    let db = rocksdb::DB::open_default(dir.join("baseline")).unwrap();
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let value = vec![b'x'; 1500];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        db.put_opt(format!("k{i}"), &value, &wo).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    pct(&lat, 0.5)
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    n: usize,
}

async fn creates(
    cp: &ControlPlane,
    http: &reqwest::Client,
    ns: &str,
    clients: usize,
    total: usize,
    budget: Duration,
) -> Run {
    let url = format!("{}/api/v1/namespaces/{ns}/pods", cp.url);
    let deadline = Instant::now() + budget;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, token, ns) = (http.clone(), url.clone(), cp.token.clone(), ns.to_string());
        let per = total / clients;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                if Instant::now() > deadline {
                    break;
                }
                let body = pod(&ns, &format!("p-{c}-{i}")).to_string();
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                let _ = r.bytes().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    Run {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(&all, 0.5),
        p99: pct(&all, 0.99),
        n: all.len(),
    }
}

async fn create_ns(cp: &ControlPlane, http: &reqwest::Client, ns: &str) {
    let r = http
        .post(format!("{}/api/v1/namespaces", cp.url))
        .bearer_auth(&cp.token)
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

/// Opens `watchers` watches, then times each of `writes` writes until every watcher has it.
async fn fanout(
    cp: &ControlPlane,
    http: &reqwest::Client,
    watchers: usize,
    writes: usize,
) -> (Duration, Duration, Duration) {
    let ns = "bench-watch";
    create_ns(cp, http, ns).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let ready = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    for _ in 0..watchers {
        let (http, tx, ready) = (http.clone(), tx.clone(), ready.clone());
        let url = format!(
            "{}/api/v1/namespaces/{ns}/pods?watch=true&allowWatchBookmarks=false",
            cp.url
        );
        let token = cp.token.clone();
        tokio::spawn(async move {
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            ready.wait().await;
            watch::for_each_event(resp, |v| match v["object"]["metadata"]["name"].as_str() {
                Some(name) => tx.send((name.to_string(), Instant::now())).is_ok(),
                None => true,
            })
            .await;
        });
    }
    ready.wait().await;
    let url = format!("{}/api/v1/namespaces/{ns}/pods", cp.url);
    let mut all_lat = Vec::new();
    let mut each_lat = Vec::new();
    for i in 0..writes {
        let name = format!("w{i}");
        let t = Instant::now();
        let r = http
            .post(&url)
            .bearer_auth(&cp.token)
            .json(&pod(ns, &name))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let mut got = 0;
        while got < watchers {
            let (n, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("watch delivery")
                .unwrap();
            if n == name {
                got += 1;
                each_lat.push(at - t);
                if got == watchers {
                    all_lat.push(at - t);
                }
            }
        }
    }
    all_lat.sort();
    each_lat.sort();
    (pct(&each_lat, 0.5), pct(&all_lat, 0.5), pct(&all_lat, 0.99))
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (single_n, multi_n, writes) = if quick {
        (300, 3_000, 30)
    } else {
        (2_000, 20_000, 200)
    };
    let dir = tempfile::tempdir_in(
        std::env::var("WEFT_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let floor = fsync_baseline(dir.path(), 1000);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = ControlPlaneConfig::new(dir.path().join("cluster"), "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        cfg.watch_window = 50_000;
        let cp = ControlPlane::start(cfg).await.unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cp.ca_pem.as_ref().unwrap().as_bytes()).unwrap())
            .pool_max_idle_per_host(128)
            .build()
            .unwrap();
        for ns in ["bench-warm", "bench-1", "bench-64"] {
            create_ns(&cp, &http, ns).await;
        }
        creates(&cp, &http, "bench-warm", 8, 400, Duration::from_secs(30)).await; // warm-up: connections, caches
        let one = creates(&cp, &http, "bench-1", 1, single_n, Duration::from_secs(60)).await;
        let many = creates(&cp, &http, "bench-64", 64, multi_n, Duration::from_secs(60)).await;
        let (each_p50, all_p50, all_p99) = fanout(&cp, &http, 100, writes).await;

        println!("weft API benchmark (HTTPS, Raft + rocksdb, synced writes)");
        println!("baseline: one synced rocksdb put, p50            {}", ms(floor));
        println!("pod create, 1 client   ({:>6} creates): {:>8.0} creates/s  p50 {}  p99 {}  (p50 = {:.1}x the synced put)", one.n, one.rate, ms(one.p50), ms(one.p99), one.p50.as_secs_f64() / floor.as_secs_f64());
        println!("pod create, 64 clients ({:>6} creates): {:>8.0} creates/s  p50 {}  p99 {}", many.n, many.rate, ms(many.p50), ms(many.p99));
        println!("one write -> 100 watchers ({writes} writes): each watcher p50 {}  all 100 p50 {}  all 100 p99 {}", ms(each_p50), ms(all_p50), ms(all_p99));
        println!("process RSS after the run: {:.0} MiB", rss_mib());
        cp.shutdown(Duration::from_secs(10)).await;
    });
}
