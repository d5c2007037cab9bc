//! A routed cluster on namespace hosts (docs/networking.md): three members
//! with node IPAM, a routed agent per host, registries on each host's
//! loopback, and the probes the pod-network tests share.

#![allow(dead_code)] // each test binary uses a subset

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;

use super::hosts::Members;

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// A Service range that is not loopback, so every host's proxy serves it
/// to others as to itself.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

pub fn parse(cidr: &str) -> Ipv4Net {
    cidr.parse().expect("an IPv4 CIDR")
}

/// Whether two blocks share any address (one holds the other).
pub fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// Three members with node IPAM on three hosts, and on each host a routed
/// agent `node-N`; returns them, the agents' process numbers and each
/// node's block once all three have one.
pub fn routed_cluster(agent_flags: &[&str]) -> (Members, Vec<usize>, BTreeMap<String, String>) {
    routed_cluster_with(&[], agent_flags)
}

/// [`routed_cluster`] with extra member flags.
pub fn routed_cluster_with(
    member_flags: &[&str],
    agent_flags: &[&str],
) -> (Members, Vec<usize>, BTreeMap<String, String>) {
    let mut m = Members::start_with(
        3,
        3,
        &[
            &[
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--service-cidr",
                SERVICE_CIDR,
            ],
            member_flags,
        ]
        .concat(),
    );
    let agents: Vec<usize> = (0..3)
        .map(|i| spawn_routed_agent(&mut m, i, &format!("node-{}", i + 1), i, agent_flags))
        .collect();
    let blocks = blocks(&m);
    (m, agents, blocks)
}

/// A routed agent `name` on host `i`, talking to member `server`.
pub fn spawn_routed_agent(
    m: &mut Members,
    i: usize,
    name: &str,
    server: usize,
    flags: &[&str],
) -> usize {
    let ip = m.hosts.hosts[i].ip.clone();
    // A documentation address (TEST-NET-2): shown, never used.
    let external = format!("198.51.100.{}", i + 1);
    m.spawn_agent_with(
        i,
        name,
        &[server],
        &[
            &[
                "--pod-network",
                "routed",
                "--node-ip",
                &ip,
                "--service-cidr",
                SERVICE_CIDR,
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--node-external-ip",
                &external,
            ],
            flags,
        ]
        .concat(),
    )
}

/// Waits (bounded) until the three Nodes have podCIDRs; checks them.
pub fn blocks(m: &Members) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let nodes: Vec<Value> = loop {
        let list: Value =
            serde_json::from_str(&m.kubectl_ok(0, &["get", "nodes", "-o", "json"])).unwrap();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ready = items.len() == 3
            && items
                .iter()
                .all(|n| n.pointer("/spec/podCIDR").and_then(Value::as_str).is_some());
        if ready {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "three nodes with podCIDRs: {list}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let cluster = parse(CLUSTER_CIDR);
    let mut blocks = BTreeMap::new();
    for n in &nodes {
        let name = n["metadata"]["name"].as_str().unwrap().to_string();
        let cidr = n["spec"]["podCIDR"].as_str().unwrap().to_string();
        assert_eq!(n["spec"]["podCIDRs"][0], cidr.as_str(), "{name}: podCIDRs");
        let block = parse(&cidr);
        assert_eq!(block.prefix_len(), 24, "{name}: a /24 ({cidr})");
        assert!(overlap(block, cluster), "{name}: {cidr} in {CLUSTER_CIDR}");
        blocks.insert(name, cidr);
    }
    let all: Vec<_> = blocks.values().map(|c| parse(c)).collect();
    for (a, x) in all.iter().enumerate() {
        for y in &all[a + 1..] {
            assert!(!overlap(*x, *y), "disjoint blocks: {blocks:?}");
        }
    }
    blocks
}

/// The address `offset` into `cidr`.
pub fn addr_in(cidr: &str, offset: u32) -> String {
    std::net::Ipv4Addr::from(u32::from(parse(cidr).network()) + offset).to_string()
}

/// `python3 -c` on host `i`: its stdout, trimmed.
pub fn python(m: &Members, i: usize, script: &str) -> String {
    let out = m
        .hosts
        .command(i, "python3")
        .args(["-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The pod namespaces of containers still running when the test ends
/// (addresses in the cluster CIDR): deleted before the hosts go, while
/// their eth0 still tells them apart.
pub struct PodNamespaces;

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        super::containers::delete_pod_namespaces("10.244.");
    }
}

/// A GET from host `i` (python, bounded retries): the body, or `FAIL`.
pub fn http_from(m: &Members, i: usize, url: &str) -> String {
    python(
        m,
        i,
        &format!(
            "import urllib.request,time\nfor _ in range(20):\n  try:\n    print(urllib.request.urlopen('{url}',timeout=3).read().decode().strip());break\n  except OSError: time.sleep(0.3)\nelse: print('FAIL')"
        ),
    )
}

/// What 60 GETs of `url` from host `i` answered, distinct and sorted.
pub fn answers_from(m: &Members, i: usize, url: &str) -> BTreeSet<String> {
    let said = python(
        m,
        i,
        &format!(
            "import urllib.request,time\nseen=set()\nfor _ in range(60):\n  try: seen.add(urllib.request.urlopen('{url}',timeout=2).read().decode().strip())\n  except OSError: time.sleep(0.1)\nprint('|'.join(sorted(seen)))"
        ),
    );
    said.split('|')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub const IMAGE_HELLO: &str = "127.0.0.1:5000/samples/hello:1";
pub const IMAGE_FETCH: &str = "127.0.0.1:5000/tests/fetch:1";
pub const IMAGE_BUSYBOX: &str = "127.0.0.1:5000/tests/busybox:1";

/// On every host a registry on its own loopback (agents speak plain HTTP
/// to loopback registries only) holding the hello and fetch guests and a
/// busybox image.
pub fn registries(m: &mut Members, dir: &std::path::Path, hello: &[u8], fetch: &[u8]) {
    let hello_file = dir.join("hello.wasm");
    std::fs::write(&hello_file, hello).unwrap();
    let fetch_file = dir.join("fetch.wasm");
    std::fs::write(&fetch_file, fetch).unwrap();
    let (hello, fetch) = (&hello_file, &fetch_file);
    for i in 0..3 {
        let config =
            super::registry::Registry::config(&dir.join(format!("r{i}")), "127.0.0.1:5000");
        let mut cmd = m.hosts.command(i, super::registry::Registry::binary());
        cmd.arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        m.hosts.spawn(cmd);
        for (file, image) in [(&hello, IMAGE_HELLO), (&fetch, IMAGE_FETCH)] {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let out = m
                    .hosts
                    .command(i, env!("CARGO_BIN_EXE_weft"))
                    .arg("push")
                    .arg(file)
                    .arg(image)
                    .output()
                    .unwrap();
                if out.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "weft push {image} on host {}: {}",
                    i + 1,
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        m.hosts.run_in(i, || {
            super::containers::push_busybox("127.0.0.1:5000", "tests/busybox:1", "", &["sh"])
        });
    }
}

/// Waits until `ok`, checking every 200 ms; fails with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, ok: &dyn Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Service `name`'s ClusterIP (namespace default).
pub fn cluster_ip(m: &Members, name: &str) -> String {
    m.kubectl_ok(
        0,
        &["get", "service", name, "-o", "jsonpath={.spec.clusterIP}"],
    )
}

/// Waits until pod `name` is Ready; returns its podIP and hostIP.
pub fn ready(m: &Members, name: &str) -> (String, String) {
    let pod = format!("pod/{name}");
    let out = m.kubectl(0, &["wait", "--for=condition=Ready", &pod, "--timeout=90s"]);
    assert!(
        out.status.success(),
        "{name} Ready: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&m.kubectl(0, &["describe", &pod]).stdout)
    );
    let ips = m.kubectl_ok(
        0,
        &[
            "get",
            &pod,
            "-o",
            "jsonpath={.status.podIP} {.status.hostIP}",
        ],
    );
    let (pod_ip, host_ip) = ips.split_once(' ').unwrap();
    (pod_ip.to_string(), host_ip.to_string())
}
