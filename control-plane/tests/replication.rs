//! Three control-plane members: writes through any member commit through
//! Raft and reach every member; reads on any member are linearizable.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use weft_control_plane::store;
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn member(
    id: u64,
    port: u16,
    peers: BTreeMap<u64, String>,
    dir: &std::path::Path,
) -> ControlPlane {
    let mut cfg =
        ControlPlaneConfig::new(dir.to_path_buf(), SocketAddr::from(([127, 0, 0, 1], port)));
    // Plain HTTP: each member would otherwise mint its own CA (a shared CA comes with HA).
    cfg.insecure = true;
    cfg.node_id = id;
    cfg.peers = peers;
    ControlPlane::start(cfg).await.expect("member starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_writes() {
    let ports = [free_port(), free_port(), free_port()];
    let peers: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("http://127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let (a, b, c) = tokio::join!(
        member(1, ports[0], peers.clone(), dirs[0].path()),
        member(2, ports[1], peers.clone(), dirs[1].path()),
        member(3, ports[2], peers.clone(), dirs[2].path()),
    );
    let members = [a, b, c];
    let leader_id = members[0]
        .api
        .store
        .raft()
        .metrics()
        .borrow()
        .current_leader
        .expect("a leader");
    let leader = members
        .iter()
        .find(|m| m.api.store.node_id() == leader_id)
        .unwrap();
    let follower = members
        .iter()
        .find(|m| m.api.store.node_id() != leader_id)
        .unwrap();

    let http = reqwest::Client::new();
    let configmaps = |m: &ControlPlane| format!("{}/api/v1/namespaces/default/configmaps", m.url);
    let cm = |name: &str| serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}});
    let create = |m: &ControlPlane, name: &str| http.post(configmaps(m)).json(&cm(name)).send();
    let r = create(leader, "via-leader").await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // Reads without a resourceVersion are linearizable on a follower too:
    // the leader's write is there at once, without polling.
    let r = http
        .get(format!("{}/via-leader", configmaps(follower)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // A follower forwards writes to the leader, and reads its own write back.
    let r = create(follower, "via-follower").await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let created: serde_json::Value = r.json().await.unwrap();
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap();
    let key = store::key("", "configmaps", "default", "via-follower");
    let (local_rev, _) = follower.api.store.get(&key).unwrap().expect("applied here");
    assert_eq!(local_rev.to_string(), rv);
    // Preconditions hold across the forward: a second create conflicts.
    let r = create(follower, "via-follower").await.unwrap();
    assert_eq!(r.status().as_u16(), 409);

    for name in ["via-leader", "via-follower"] {
        let key = store::key("", "configmaps", "default", name);
        for m in &members {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some((_, obj)) = m.api.store.get(&key).unwrap() {
                    assert_eq!(obj["data"]["k"], name);
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "member {} never received {name}",
                    m.api.store.node_id()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Every member applied the same history: the same revision for the object.
        let revs: Vec<u64> = members
            .iter()
            .map(|m| m.api.store.get(&key).unwrap().unwrap().0)
            .collect();
        assert!(revs.windows(2).all(|w| w[0] == w[1]), "{revs:?}");
    }

    // /metrics: the leader counts its synced appends and commit index; every
    // member has seen one leader.
    let scrape = |m: &ControlPlane| http.get(format!("{}/metrics", m.url)).send();
    let text = scrape(leader).await.unwrap().text().await.unwrap();
    assert!(
        metric(&text, "weft_raft_log_fsync_duration_seconds_count") >= 2.0,
        "{text}"
    );
    assert!(metric(&text, "weft_raft_commit_index") >= 2.0, "{text}");
    assert_eq!(metric(&text, "weft_raft_is_leader"), 1.0);
    for m in &members {
        let text = scrape(m).await.unwrap().text().await.unwrap();
        assert_eq!(
            metric(&text, "weft_raft_leader_changes_total"),
            1.0,
            "{text}"
        );
        assert_eq!(metric(&text, "weft_raft_proposals_failed_total"), 0.0);
    }

    // With the leader and one follower gone, the last member has no quorum:
    // writes and linearized reads fail fast with a retryable 503, and local
    // reads (resourceVersion=0) still answer.
    let mut members = Vec::from(members);
    let last = members
        .iter()
        .position(|m| m.api.store.node_id() != leader_id)
        .unwrap();
    let last = members.remove(last);
    for m in members {
        m.shutdown(Duration::from_secs(5)).await;
    }
    let started = tokio::time::Instant::now();
    let r = create(&last, "no-quorum").await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["retry-after"], "1");
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status["reason"], "ServiceUnavailable");
    let r = http
        .get(format!("{}/via-leader", configmaps(&last)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no-quorum answers took {:?}",
        started.elapsed()
    );
    let r = http
        .get(format!(
            "{}/via-leader?resourceVersion=0",
            configmaps(&last)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = scrape(&last).await.unwrap().text().await.unwrap();
    assert!(
        metric(&text, "weft_raft_proposals_failed_total") >= 1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "weft_raft_is_leader"), 0.0);
    last.shutdown(Duration::from_secs(5)).await;
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Leader election: of three members on one replicated store, exactly one
/// runs the scheduler and controllers; when it goes, another takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_member_runs_the_controllers() {
    let ports = [free_port(), free_port(), free_port()];
    let peers: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("http://127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let start = |id: u64| {
        let mut cfg = ControlPlaneConfig::new(
            dirs[id as usize - 1].path().to_path_buf(),
            SocketAddr::from(([127, 0, 0, 1], ports[id as usize - 1])),
        );
        cfg.insecure = true;
        cfg.node_id = id;
        cfg.peers = peers.clone();
        // Kubernetes' 15 s: a takeover sooner than that shows the release.
        cfg.lease_duration = Duration::from_secs(15);
        ControlPlane::start(cfg)
    };
    let (a, b, c) = tokio::join!(start(1), start(2), start(3));
    let mut members: Vec<ControlPlane> = vec![a.unwrap(), b.unwrap(), c.unwrap()];
    let leaders = |ms: &[ControlPlane]| -> Vec<u64> {
        ms.iter()
            .filter(|m| *m.leading.borrow())
            .map(|m| m.api.store.node_id())
            .collect()
    };
    // Someone acquires; then, sampled over several renewals, never two at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while leaders(&members).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..40 {
        assert!(
            leaders(&members).len() <= 1,
            "two leaders: {:?}",
            leaders(&members)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = leaders(&members);
    assert_eq!(first.len(), 1);
    // Only the Raft leader campaigns for the Lease.
    let raft_leader = members[0]
        .api
        .store
        .raft()
        .metrics()
        .borrow()
        .current_leader;
    assert_eq!(Some(first[0]), raft_leader);

    // The lease holder shuts down cleanly and releases the Lease: one of the
    // others takes over at its next retry (15/7 s) once Raft has a new
    // leader, not after the 15 s lease lapses.
    let i = members
        .iter()
        .position(|m| m.api.store.node_id() == first[0])
        .unwrap();
    let gone = members.remove(i);
    gone.shutdown(Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = leaders(&members);
        assert!(now.len() <= 1, "two leaders: {now:?}");
        if now.len() == 1 {
            assert_ne!(now[0], first[0]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no member took over within 10 s of a clean shutdown: was the lease released?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in members {
        m.shutdown(Duration::from_secs(5)).await;
    }
}
