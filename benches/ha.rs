//! HA benchmark: real `weft control-plane` members on hosts made of network
//! namespaces (root), TLS and Raft between them, as tests/ha.rs runs them.
//!
//!   cargo bench --profile dev --bench ha            (all figures)
//!   cargo bench --profile dev --bench ha -- quick   (smaller counts)
//!
//! In one run it prints:
//! * 64-client create throughput and p50/p99 through the leader of three
//!   members, through all three (followers forward), and through one
//!   member alone: the ratio is what replication costs;
//! * sequential linearizable GET latency through the leader and through a
//!   follower (which asks the leader for its read index);
//! * failover: over N leader kills, SIGKILL → the first write acknowledged
//!   through a survivor, p50 and max (each killed member is restarted and
//!   caught up before the next kill).

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/robustness/history.rs"]
mod history;
#[path = "common/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "../tests/robustness/traffic.rs"]
mod traffic;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::hosts::Members;
use serde_json::json;
use stats::{ms, pct};
use traffic::Api;

const PATH: &str = "/api/v1/namespaces/default/configmaps";
/// The object the GETs read.
const PROBE: &str = "linearizable-get";

fn body(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
           "data": {"from": "bench", "payload": "x".repeat(512)}})
}

/// `clients` concurrent clients creating ConfigMaps through `members`
/// (clients spread over them) until `count` are made or `limit` passed.
/// Returns creates/s and every create's latency.
fn creates(
    api: &Api,
    members: &[usize],
    clients: usize,
    count: usize,
    limit: Duration,
) -> (f64, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run = format!("{:x}", rand::random::<u32>());
    let threads: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(k, &m)| {
            let (api, next, run) = (api.clone(), next.clone(), run.clone());
            let share = clients / members.len() + usize::from(k < clients % members.len());
            std::thread::spawn(move || {
                let (rt, http) = api.client(m);
                let url = format!("{}{PATH}", api.members[m].url);
                rt.block_on(async {
                    let tasks: Vec<_> = (0..share)
                        .map(|_| {
                            let (http, url, next, token, run) = (
                                http.clone(),
                                url.clone(),
                                next.clone(),
                                api.token.clone(),
                                run.clone(),
                            );
                            tokio::spawn(async move {
                                let mut lat = Vec::new();
                                loop {
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    if i >= count || started.elapsed() > limit {
                                        return lat;
                                    }
                                    let t = Instant::now();
                                    let resp = http
                                        .post(&url)
                                        .bearer_auth(&token)
                                        .json(&body(&format!("c-{run}-{i}")))
                                        .send()
                                        .await
                                        .expect("create");
                                    assert_eq!(resp.status(), 201, "create");
                                    lat.push(t.elapsed());
                                }
                            })
                        })
                        .collect();
                    let mut all = Vec::new();
                    for t in tasks {
                        all.extend(t.await.unwrap());
                    }
                    all
                })
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().unwrap());
    }
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    (rate, lat)
}

/// Whether a linearizable GET of `name` through member `m` succeeds.
fn get_ok(api: &Api, m: usize, name: &str) -> bool {
    let (api, name) = (api.clone(), name.to_string());
    std::thread::spawn(move || {
        let (rt, http) = api.client(m);
        let url = format!("{}{PATH}/{name}", api.members[m].url);
        rt.block_on(async {
            let sent = http
                .get(&url)
                .bearer_auth(&api.token)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            sent.is_ok_and(|r| r.status() == 200)
        })
    })
    .join()
    .unwrap()
}

/// `n` sequential GETs of one object through member `m`.
fn gets(api: &Api, m: usize, name: &str, n: usize) -> Vec<Duration> {
    let (api, name) = (api.clone(), name.to_string());
    std::thread::spawn(move || {
        let (rt, http) = api.client(m);
        let url = format!("{}{PATH}/{name}", api.members[m].url);
        rt.block_on(async {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let resp = http
                    .get(&url)
                    .bearer_auth(&api.token)
                    .send()
                    .await
                    .expect("get");
                assert_eq!(resp.status(), 200, "get");
                resp.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        })
    })
    .join()
    .unwrap()
}

fn row(what: &str, rate: f64, lat: &mut [Duration]) {
    println!(
        "{what:<44} {rate:>8.0}/s   p50 {}   p99 {}",
        ms(pct(lat, 0.5)),
        ms(pct(lat, 0.99))
    );
}

/// Kills the leader `kills` times; each time a client on a survivor's host
/// writes until one write is acknowledged.
fn failover(m: &mut Members, api: &Api, kills: usize) -> Vec<Duration> {
    let mut took = Vec::new();
    for k in 0..kills {
        // All three serve linearizable reads (so they caught up) before a kill.
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..3 {
            while !get_ok(api, i, PROBE) {
                assert!(
                    Instant::now() < deadline,
                    "member {} does not serve before kill {}; its log:\n{}",
                    i + 1,
                    k + 1,
                    m.log(i)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let leader = m.leader(0).expect("a leader");
        let survivor = (leader + 1) % 3;
        let (go, killed_rx) = std::sync::mpsc::channel::<()>();
        let writer = {
            let api = api.clone();
            std::thread::spawn(move || {
                let (rt, http) = api.client(survivor);
                let url = format!("{}{PATH}", api.members[survivor].url);
                rt.block_on(async {
                    // A warm connection first, then wait for the kill, then
                    // write until a write is acknowledged.
                    let warm = http
                        .get(format!("{url}/{PROBE}"))
                        .bearer_auth(&api.token)
                        .send()
                        .await;
                    assert!(warm.is_ok_and(|r| r.status() == 200), "warm-up read");
                    killed_rx.recv().unwrap();
                    let mut n = 0;
                    let killed = Instant::now();
                    let mut last = String::new();
                    loop {
                        n += 1;
                        if killed.elapsed() > Duration::from_secs(30) {
                            return Err(last);
                        }
                        let sent = http
                            .post(&url)
                            .bearer_auth(&api.token)
                            .timeout(Duration::from_secs(2))
                            .json(&body(&format!("failover-{k}-{n}")))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 201 => return Ok(Instant::now()),
                            Ok(r) => {
                                last = format!(
                                    "{}: {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                )
                            }
                            Err(e) => last = format!("{e:?}"),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        m.kill(leader);
        let killed = Instant::now();
        go.send(()).unwrap();
        let acked = match writer.join().unwrap() {
            Ok(t) => t,
            Err(last) => panic!(
                "no write acknowledged through member {} 30 s after kill {}; the last answer: {last}\nits log:\n{}\nthe other survivor's log:\n{}",
                survivor + 1,
                k + 1,
                m.log(survivor),
                m.log((leader + 2) % 3)
            ),
        };
        took.push(acked.saturating_duration_since(killed));
        println!(
            "  kill {}: member {} → first write through member {} after {}",
            k + 1,
            leader + 1,
            survivor + 1,
            ms(took[k])
        );
        // Back to three before the next kill (checked at the loop's top).
        m.restart(leader);
    }
    took
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (count, gets_n, kills) = if quick {
        (2_000, 300, 5)
    } else {
        (10_000, 2_000, 20)
    };
    let limit = Duration::from_secs(30);
    println!(
        "weft HA benchmark (members on network-namespace hosts, TLS, Raft + rocksdb, synced writes)"
    );

    let one = Members::start(1);
    let api1 = Api::of(&one);
    let (r1, mut l1) = creates(&api1, &[0], 64, count, limit);
    drop(one);

    let mut m = Members::start(3);
    let api = Api::of(&m);
    let leader = m.leader(0).expect("a leader");
    let follower = (leader + 1) % 3;
    let (r3, mut l3) = creates(&api, &[leader], 64, count, limit);
    let (rs, mut ls) = creates(&api, &[0, 1, 2], 64, count, limit);
    println!("64 clients, {count} ConfigMap creates (bounded to {limit:?}):");
    row("one member", r1, &mut l1);
    row("three members, all clients on the leader", r3, &mut l3);
    row("three members, clients spread over all", rs, &mut ls);
    println!(
        "ratio three/one: {:.2} (leader), {:.2} (spread)",
        r3 / r1,
        rs / r1
    );

    // A linearizable GET: the leader confirms its leadership with a quorum;
    // a follower asks the leader for its read index, then reads locally.
    std::thread::spawn({
        let api = api.clone();
        move || {
            let (rt, http) = api.client(0);
            rt.block_on(async {
                let resp = http
                    .post(format!("{}{PATH}", api.members[0].url))
                    .bearer_auth(&api.token)
                    .json(&body(PROBE))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            })
        }
    })
    .join()
    .unwrap();
    let mut gl = gets(&api, leader, PROBE, gets_n);
    let mut gf = gets(&api, follower, PROBE, gets_n);
    println!("{gets_n} sequential linearizable GETs:");
    println!(
        "  through the leader     p50 {}   p99 {}",
        ms(pct(&mut gl, 0.5)),
        ms(pct(&mut gl, 0.99))
    );
    println!(
        "  through a follower     p50 {}   p99 {}",
        ms(pct(&mut gf, 0.5)),
        ms(pct(&mut gf, 0.99))
    );

    println!(
        "failover, {kills} leader kills (SIGKILL → first write acknowledged through a survivor):"
    );
    let mut f = failover(&mut m, &api, kills);
    let max = *f.iter().max().unwrap();
    println!("failover p50 {}   max {}", ms(pct(&mut f, 0.5)), ms(max));
}
