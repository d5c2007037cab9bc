//! Pod networking across hosts (docs/networking.md), on hosts made of
//! network namespaces the test creates: node IPAM gives every routed node a
//! block of the cluster CIDR; each agent makes its block local on its host
//! (Wasm pods bind their IPs there) and routes every peer's block to the
//! peer (host-gw).

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::hosts::Members;
use ipnet::Ipv4Net;
use serde_json::Value;

const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// A Service range that is not loopback, so every host's proxy serves it
/// to others as to itself.
const SERVICE_CIDR: &str = "10.96.0.0/16";

fn parse(cidr: &str) -> Ipv4Net {
    cidr.parse().expect("an IPv4 CIDR")
}

/// Whether two blocks share any address (one holds the other).
fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// Three members with node IPAM on three hosts, and on each host a routed
/// agent `node-N`; returns them, the agents' process numbers and each
/// node's block once all three have one.
fn routed_cluster() -> (Members, Vec<usize>, BTreeMap<String, String>) {
    let mut m = Members::start_with(
        3,
        3,
        &[
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--service-cidr",
            SERVICE_CIDR,
        ],
    );
    let agents: Vec<usize> = (0..3)
        .map(|i| {
            let ip = m.hosts.hosts[i].ip.clone();
            m.spawn_agent_with(
                i,
                &format!("node-{}", i + 1),
                &[i],
                &[
                    "--pod-network",
                    "routed",
                    "--node-ip",
                    &ip,
                    "--service-cidr",
                    SERVICE_CIDR,
                ],
            )
        })
        .collect();
    let blocks = blocks(&m);
    (m, agents, blocks)
}

/// Waits (bounded) until the three Nodes have podCIDRs; checks them.
fn blocks(m: &Members) -> BTreeMap<String, String> {
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

#[test]
fn routed_nodes_get_disjoint_blocks_and_reach_each_others_by_host_gw_routes() {
    let (m, agents, blocks) = routed_cluster();

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

    // Each host treats its own block as local (pods bind there), and routes
    // every other block to the host that owns it (host-gw).
    let route_get = |i: usize, cidr: &str| {
        let out = m
            .hosts
            .command(i, "ip")
            .args(["route", "get", &addr_in(cidr, 7)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for i in 0..3 {
        let own = &blocks[&format!("node-{}", i + 1)];
        assert!(
            route_get(i, own).starts_with("local "),
            "host {}: {}",
            i + 1,
            route_get(i, own)
        );
        for j in (0..3).filter(|&j| j != i) {
            let other = &blocks[&format!("node-{}", j + 1)];
            let via = format!("via {} ", m.hosts.hosts[j].ip);
            wait_for(&format!("host {} routes {other} {via}", i + 1), &|| {
                route_get(i, other).contains(&via)
            });
        }
    }

    // The data path: a socket bound on an address of host 3's block (as a
    // Wasm pod's) answers a client on host 1, with no NAT in between.
    let pod_ip = addr_in(&blocks["node-3"], 9);
    let server = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{pod_ip}',8080))\ns.listen()\nc,a=s.accept()\nc.sendall(('from '+a[0]).encode())\nc.close()"
    );
    let mut listener = m
        .hosts
        .command(2, "python3")
        .args(["-c", &server])
        .spawn()
        .unwrap();
    let client = format!(
        "import socket,time\nfor _ in range(50):\n  try:\n    s=socket.create_connection(('{pod_ip}',8080),timeout=2);print(s.recv(100).decode());break\n  except OSError: time.sleep(0.1)"
    );
    let out = m
        .hosts
        .command(0, "python3")
        .args(["-c", &client])
        .output()
        .unwrap();
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("from {}", m.hosts.hosts[0].ip),
        "host 1 reached {pod_ip} on host 3, which saw host 1's own address: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A clean stop takes the node's routes with it; a deleted Node's block
    // leaves the other hosts' tables.
    m.hosts.signal(agents[2], "TERM");
    wait_for("agent 3 removed its routes", &|| {
        route_show(&m, 2).is_empty()
    });
    m.kubectl_ok(0, &["delete", "node", "node-3"]);
    for i in 0..2 {
        wait_for(&format!("host {} forgets node-3's block", i + 1), &|| {
            !route_show(&m, i).contains(blocks["node-3"].as_str())
        });
    }
}

/// The address `offset` into `cidr`.
fn addr_in(cidr: &str, offset: u32) -> String {
    std::net::Ipv4Addr::from(u32::from(parse(cidr).network()) + offset).to_string()
}

/// Weft's routes on host `i` (its own protocol number), both tables.
fn route_show(m: &Members, i: usize) -> String {
    let out = m
        .hosts
        .command(i, "ip")
        .args(["route", "show", "table", "all", "proto", "87"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `python3 -c` on host `i`: its stdout, trimmed.
fn python(m: &Members, i: usize, script: &str) -> String {
    let out = m
        .hosts
        .command(i, "python3")
        .args(["-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn wasm_pods_on_three_hosts_answer_every_host_by_pod_ip_and_cluster_ip() {
    let (mut m, _agents, blocks) = routed_cluster();
    // Each host pulls from a registry on its own loopback (agents speak
    // plain HTTP to loopback registries only).
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hello.wasm");
    std::fs::write(&wasm, guests::sample("hello")).unwrap();
    let image = "127.0.0.1:5000/samples/hello:1";
    for i in 0..3 {
        let registry =
            common::registry::Registry::config(&dir.path().join(format!("r{i}")), "127.0.0.1:5000");
        let cmd = {
            let mut c = m.hosts.command(i, common::registry::Registry::binary());
            c.arg("serve")
                .arg(&registry)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            c
        };
        m.hosts.spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = m
                .hosts
                .command(i, env!("CARGO_BIN_EXE_weft"))
                .arg("push")
                .arg(&wasm)
                .arg(image)
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "weft push on host {}: {}",
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for i in 0..3 {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hello-{n}, labels: {{app: hello}}}}\nspec:\n  nodeName: node-{n}\n  containers:\n  - name: app\n    image: {image}\n    ports: [{{containerPort: 8080}}]\n",
            n = i + 1
        );
        m.kubectl_stdin(0, &["apply", "-f", "-"], &pod);
    }
    let mut pods = Vec::new();
    for i in 0..3 {
        let name = format!("pod/hello-{}", i + 1);
        let ready = m.kubectl(
            0,
            &["wait", "--for=condition=Ready", &name, "--timeout=60s"],
        );
        assert!(
            ready.status.success(),
            "{name} Ready: {}",
            String::from_utf8_lossy(&ready.stderr)
        );
        let ips = m.kubectl_ok(
            0,
            &[
                "get",
                &name,
                "-o",
                "jsonpath={.status.podIP} {.status.hostIP}",
            ],
        );
        let (pod_ip, host_ip) = ips.split_once(' ').unwrap();
        let block = parse(&blocks[&format!("node-{}", i + 1)]);
        assert!(
            overlap(parse(&format!("{pod_ip}/32")), block),
            "{name}'s IP {pod_ip} is in its node's block {block:?}"
        );
        assert_eq!(host_ip, m.hosts.hosts[i].ip, "{name}'s hostIP");
        pods.push(pod_ip.to_string());
    }
    // Every host reaches every pod, its own and the others', by pod IP.
    for h in 0..3 {
        for (p, ip) in pods.iter().enumerate() {
            let said = python(
                &m,
                h,
                &format!(
                    "import urllib.request\nprint(urllib.request.urlopen('http://{ip}:8080/',timeout=5).read().decode())"
                ),
            );
            // The sample names the pod that answered.
            assert_eq!(
                said,
                format!("Hello from hello-{}", p + 1),
                "host {} → hello-{} at {ip}",
                h + 1,
                p + 1
            );
        }
    }

    // A Service over the three: each host's proxy spreads requests to its
    // ClusterIP over endpoints on all three hosts.
    m.kubectl_stdin(
        0,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: hello}\nspec:\n  selector: {app: hello}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let cluster_ip = m.kubectl_ok(
        0,
        &[
            "get",
            "service",
            "hello",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert!(
        overlap(parse(&format!("{cluster_ip}/32")), parse(SERVICE_CIDR)),
        "ClusterIP {cluster_ip} from {SERVICE_CIDR}"
    );
    let all: std::collections::BTreeSet<String> =
        (1..=3).map(|n| format!("Hello from hello-{n}")).collect();
    for h in 0..3 {
        // Bounded: 60 requests, each with a timeout; the proxies may need a
        // moment to learn the endpoints.
        let said = python(
            &m,
            h,
            &format!(
                "import urllib.request,time\nseen=set()\nfor _ in range(60):\n  try: seen.add(urllib.request.urlopen('http://{cluster_ip}:80/',timeout=2).read().decode().strip())\n  except OSError: time.sleep(0.1)\nprint('|'.join(sorted(seen)))"
            ),
        );
        let seen: std::collections::BTreeSet<String> = said
            .split('|')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        assert_eq!(seen, all, "host {} through {cluster_ip}", h + 1);
    }

    // Cluster DNS on every host answers for the Service with its ClusterIP
    // (a plain A query to kube-dns's ClusterIP, 10th of the range).
    let query = "import socket\nq=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'+b''.join(bytes([len(p)])+p.encode() for p in 'hello.default.svc.cluster.local'.split('.'))+b'\\x00\\x00\\x01\\x00\\x01'\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1)\nfor _ in range(20):\n  try:\n    s.sendto(q,('10.96.0.10',53));r=s.recv(512);print(socket.inet_ntoa(r[-4:]));break\n  except OSError: pass";
    for h in 0..3 {
        assert_eq!(
            python(&m, h, query),
            cluster_ip,
            "host {} asks kube-dns",
            h + 1
        );
    }
}
