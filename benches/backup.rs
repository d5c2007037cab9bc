//! Backup benchmark: `weft snapshot save` and `restore` of a cluster of
//! 10,000 ConfigMaps (1 KiB of data each), through the real binary, a real
//! `weft up` and its HTTPS API.
//!
//!   cargo bench --profile dev --bench backup            (10,000 objects)
//!   cargo bench --profile dev --bench backup -- quick   (2,000)
//!
//! In one run it prints, as medians of 3:
//! * the baseline: one full list of the ConfigMaps over the API (what a
//!   backup by `kubectl get -A -o json` would cost at least);
//! * `weft snapshot save FILE` (linearized read, rocksdb snapshot, transfer,
//!   verified and synced to disk), and its ratio to the list;
//! * `weft snapshot restore FILE --data-dir DIR` (verified, then written);
//! * `weft up` on the restored directory until it serves (it seeds a Raft
//!   snapshot of the restored objects first).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/stats.rs"]
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TestCluster;
use serde_json::json;
use stats::{ms, pct};

const PATH: &str = "/api/v1/namespaces/default/configmaps";

/// `weft ARGS`, which must succeed; how long it took.
fn weft(args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = common::weft(args);
    assert!(
        out.status.success(),
        "weft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// `n` ConfigMaps created by 32 concurrent clients.
fn load(c: &TestCluster, n: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, token, url) = (c.http(), c.token(), format!("{}{PATH}", c.url));
    let next = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (http, token, url, next) =
                    (http.clone(), token.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return;
                        }
                        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": format!("cm-{i}"), "labels": {"app": "bench"}},
                            "data": {"payload": "x".repeat(1024)}});
                        let res = http
                            .post(&url)
                            .bearer_auth(&token)
                            .json(&body)
                            .send()
                            .await
                            .expect("create");
                        assert!(res.status().is_success(), "create: {}", res.status());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn list(c: &TestCluster) -> Duration {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (http, token) = (c.http(), c.token());
    rt.block_on(async {
        let t = Instant::now();
        let body = http
            .get(format!("{}{PATH}", c.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(body.len() > 1024, "a list of ConfigMaps");
        took
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let n = if quick { 2_000 } else { 10_000 };
    let tmp = tempfile::tempdir().unwrap();
    let c = TestCluster::start_with(&["--snapshot-interval", "0"]);
    let t = Instant::now();
    load(&c, n);
    println!(
        "backup: {n} ConfigMaps of 1 KiB created in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut lists: Vec<Duration> = (0..3).map(|_| list(&c)).collect();
    let file = tmp.path().join("cluster.snap");
    let kubeconfig = c.kubeconfig.to_str().unwrap().to_string();
    let mut saves: Vec<Duration> = (0..3)
        .map(|_| {
            weft(&[
                "snapshot",
                "save",
                file.to_str().unwrap(),
                "--kubeconfig",
                &kubeconfig,
            ])
        })
        .collect();
    let size = std::fs::metadata(&file).unwrap().len();
    let mut restores: Vec<Duration> = (0..3)
        .map(|k| {
            let dir = tmp.path().join(format!("restored-{k}"));
            weft(&[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
            ])
        })
        .collect();
    drop(c);
    let t = Instant::now();
    let restored = TestCluster::start_in(&tmp.path().join("restored-0"));
    let up = t.elapsed();
    let listed = list(&restored);

    let (list50, save50) = (pct(&mut lists, 0.5), pct(&mut saves, 0.5));
    println!("backup: full list over the API (baseline)   {}", ms(list50));
    println!(
        "backup: weft snapshot save                   {}  ({:.1} MiB; {:.2}x the list)",
        ms(save50),
        size as f64 / (1 << 20) as f64,
        save50.as_secs_f64() / list50.as_secs_f64()
    );
    println!(
        "backup: weft snapshot restore                {}",
        ms(pct(&mut restores, 0.5))
    );
    println!(
        "backup: weft up on the restored data, until serving  {} (then a full list: {})",
        ms(up),
        ms(listed)
    );
}
