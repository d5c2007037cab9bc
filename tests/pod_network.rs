//! Pod networking across hosts (docs/networking.md), on hosts made of
//! network namespaces the test creates: node IPAM gives every routed node a
//! block of the cluster CIDR, and each agent makes its block local on its
//! host so Wasm pods bind their IPs there.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::hosts::Members;
use serde_json::Value;

const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// An IPv4 CIDR as (network, prefix length).
fn parse(cidr: &str) -> (u32, u32) {
    let (ip, len) = cidr.split_once('/').expect("a CIDR");
    let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    (u32::from(ip), len.parse().expect("a prefix length"))
}

fn overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    a.0 & mask == b.0 & mask
}

#[test]
fn routed_nodes_get_disjoint_blocks_of_the_cluster_cidr_made_local_on_their_hosts() {
    let mut m = Members::start_with(3, 3, &["--cluster-cidr", CLUSTER_CIDR]);
    for i in 0..3 {
        let ip = m.hosts.hosts[i].ip.clone();
        m.spawn_agent_with(
            i,
            &format!("node-{}", i + 1),
            &[i],
            &["--pod-network", "routed", "--node-ip", &ip],
        );
    }

    // Every node registers and gets a block.
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
        assert_eq!(block.1, 24, "{name}: a /24 ({cidr})");
        assert!(overlap(block, cluster), "{name}: {cidr} in {CLUSTER_CIDR}");
        blocks.insert(name, cidr);
    }
    let all: Vec<_> = blocks.values().map(|c| parse(c)).collect();
    for (a, x) in all.iter().enumerate() {
        for y in &all[a + 1..] {
            assert!(!overlap(*x, *y), "disjoint blocks: {blocks:?}");
        }
    }

    eprintln!("blocks: {blocks:?}");
    // kubectl shows each node's host address as INTERNAL-IP.
    let wide = m.kubectl_ok(0, &["get", "nodes", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    let col = header
        .iter()
        .position(|h| *h == "INTERNAL-IP")
        .unwrap_or_else(|| panic!("an INTERNAL-IP column:\n{wide}"));
    for i in 0..3 {
        let row: Vec<&str> = wide
            .lines()
            .find(|l| l.starts_with(&format!("node-{} ", i + 1)))
            .unwrap_or_else(|| panic!("node-{} in:\n{wide}", i + 1))
            .split_whitespace()
            .collect();
        assert_eq!(row[col], m.hosts.hosts[i].ip, "node-{}:\n{wide}", i + 1);
    }

    // Each host treats its own block as local (pods bind there), and only its own.
    for i in 0..3 {
        let own = &blocks[&format!("node-{}", i + 1)];
        let probe = |cidr: &str| {
            let (net, _) = parse(cidr);
            let ip = std::net::Ipv4Addr::from(net + 7).to_string();
            let out = m
                .hosts
                .command(i, "ip")
                .args(["route", "get", &ip])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(
            probe(own).starts_with("local "),
            "host {}: {}",
            i + 1,
            probe(own)
        );
        let other = &blocks[&format!("node-{}", (i + 1) % 3 + 1)];
        assert!(
            !probe(other).starts_with("local "),
            "host {} does not own {other}",
            i + 1
        );
    }
}
