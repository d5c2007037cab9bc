//! Pod networking across hosts (docs/networking.md), on hosts made of
//! network namespaces the test creates: node IPAM gives every routed node a
//! block of the cluster CIDR; each agent makes its block local on its host
//! (Wasm pods bind their IPs there) and routes every peer's block to the
//! peer (host-gw).

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::hosts::Members;
use common::routed::*;
use serde_json::Value;

#[test]
fn routed_nodes_get_disjoint_blocks_and_reach_each_others_by_host_gw_routes() {
    let (m, agents, blocks) = routed_cluster(&[]);

    eprintln!("blocks: {blocks:?}");
    // kubectl shows each node's host address as INTERNAL-IP, and its block.
    let wide = m.kubectl_ok(0, &["get", "nodes", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    let col = header
        .iter()
        .position(|h| *h == "INTERNAL-IP")
        .unwrap_or_else(|| panic!("an INTERNAL-IP column:\n{wide}"));
    let external = header.iter().position(|h| *h == "EXTERNAL-IP").unwrap();
    let cidrs = header
        .iter()
        .position(|h| *h == "POD-CIDRS")
        .unwrap_or_else(|| panic!("a POD-CIDRS column:\n{wide}"));
    for i in 0..3 {
        let row: Vec<&str> = wide
            .lines()
            .find(|l| l.starts_with(&format!("node-{} ", i + 1)))
            .unwrap_or_else(|| panic!("node-{} in:\n{wide}", i + 1))
            .split_whitespace()
            .collect();
        assert_eq!(row[col], m.hosts.hosts[i].ip, "node-{}:\n{wide}", i + 1);
        assert_eq!(row[external], format!("198.51.100.{}", i + 1), "{wide}");
        assert_eq!(
            row[cidrs],
            blocks[&format!("node-{}", i + 1)],
            "node-{}'s POD-CIDRS:\n{wide}",
            i + 1
        );
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
    let limit = Duration::from_secs(20);
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| wait_for(what, limit, ok);
    // A node offers the scheduler as many pods as its block has IPs
    // (a /24 to Wasm alone: all but .0, .1 and .255).
    for i in 1..=3 {
        let node = format!("node/node-{i}");
        wait_for(&format!("{node} allocatable pods"), &|| {
            m.kubectl_ok(
                0,
                &["get", &node, "-o", "jsonpath={.status.allocatable.pods}"],
            ) == "253"
        });
    }
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

/// An HTTP server on host `i` at `addr:port` that answers `from <client IP>`.
fn echo_server(m: &mut Members, i: usize, addr: &str, port: u16) {
    let script = "import http.server,sys\nclass H(http.server.BaseHTTPRequestHandler):\n  def do_GET(s):\n    b=('from '+s.client_address[0]).encode();s.send_response(200);s.send_header('Content-Length',str(len(b)));s.end_headers();s.wfile.write(b)\n  def log_message(s,*a): pass\nhttp.server.ThreadingHTTPServer((sys.argv[1],int(sys.argv[2])),H).serve_forever()";
    let mut cmd = m.hosts.command(i, "python3");
    cmd.args(["-c", script, addr, &port.to_string()]);
    m.hosts.spawn(cmd);
}

/// Sections of a prober's log: `==name` starts one.
fn sections(log: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut name = String::new();
    for line in log.lines() {
        if let Some(n) = line.strip_prefix("==") {
            name = n.to_string();
            out.insert(name.clone(), String::new());
        } else if let Some(s) = out.get_mut(&name) {
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

#[test]
fn wasm_and_container_pods_on_three_hosts_reach_each_other_services_and_dns() {
    pods_services_and_dns_across_hosts("host-gw");
}

#[test]
fn the_same_over_the_vxlan_backend() {
    pods_services_and_dns_across_hosts("vxlan");
}

/// Every pod-to-pod, Service and DNS check on three hosts, with the given
/// `--backend`.
fn pods_services_and_dns_across_hosts(backend: &str) {
    let containerd = common::containers::Containerd::start();
    let socket = containerd.socket.to_str().unwrap().to_string();
    let (mut m, agents, blocks) =
        routed_cluster(&["--containerd-socket", &socket, "--backend", backend]);
    if backend == "vxlan" {
        // Peers' blocks go through the overlay device, not via their hosts.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, block) in blocks.iter().filter(|(n, _)| *n != "node-1") {
            let want = format!("{block} via {} dev weft.vxlan", parse(block).network());
            while !route_show(&m, 0).contains(&want) {
                assert!(
                    Instant::now() < deadline,
                    "host 1 routes {name}'s {block} over VXLAN:\n{}",
                    route_show(&m, 0)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let _namespaces = PodNamespaces;
    let dir = tempfile::tempdir().unwrap();
    registries(
        &mut m,
        dir.path(),
        &guests::sample("hello"),
        &guests::guest("wasm-host/tests/guests/fetch", "fetch"),
    );

    // On each host: a Wasm hello, a busybox web server, and a Wasm fetch
    // guest that may call anything (for pod-to-pod checks from Wasm).
    for n in 1..=3 {
        let pods = format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: hello-{n}, labels: {{app: hello, tier: both}}}}
spec:
  nodeName: node-{n}
  containers:
  - name: app
    image: {IMAGE_HELLO}
    ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-{n}, labels: {{app: web, tier: both, host: \"{n}\"}}}}
spec:
  nodeName: node-{n}
  containers:
  - name: web
    image: {IMAGE_BUSYBOX}
    command: [sh, -c, 'echo Hello from web-{n} > /tmp/index.html && exec httpd -f -p 8080 -h /tmp']
    ports: [{{containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: fetch-{n}, annotations: {{weft.dev/egress-allow: '*'}}}}
spec:
  nodeName: node-{n}
  containers:
  - name: fetch
    image: {IMAGE_FETCH}
    ports: [{{containerPort: 8080}}]
"
        );
        m.kubectl_stdin(0, &["apply", "-f", "-"], &pods);
    }
    let mut servers = Vec::new(); // (name, pod IP)
    let mut fetchers = Vec::new();
    for n in 1..=3 {
        let block = parse(&blocks[&format!("node-{n}")]);
        let (low, high) = {
            let mut halves = block.subnets(block.prefix_len() + 1).unwrap();
            (halves.next().unwrap(), halves.next().unwrap())
        };
        for (name, half) in [
            (format!("hello-{n}"), high),
            (format!("web-{n}"), low),
            (format!("fetch-{n}"), high),
        ] {
            let (pod_ip, host_ip) = ready(&m, &name);
            // Containers take the lower half of the node's block (the CNI
            // bridge), Wasm pods the upper half (local on the host).
            assert!(
                overlap(parse(&format!("{pod_ip}/32")), half),
                "{name}'s IP {pod_ip} is in {half}"
            );
            assert_eq!(host_ip, m.hosts.hosts[n - 1].ip, "{name}'s hostIP");
            if name.starts_with("fetch") {
                fetchers.push(pod_ip);
            } else {
                servers.push((name, pod_ip));
            }
        }
    }

    // Every host and every Wasm pod reach every pod, by pod IP.
    for (h, fetcher) in fetchers.iter().enumerate() {
        for (name, ip) in &servers {
            let url = format!("http://{ip}:8080/");
            let want = format!("Hello from {name}");
            assert_eq!(http_from(&m, h, &url), want, "host {} → {name}", h + 1);
            let via_wasm = http_from(&m, h, &format!("http://{fetcher}:8080/?url={url}"));
            assert_eq!(via_wasm, format!("200 {want}"), "fetch-{} → {name}", h + 1);
        }
    }

    // Services: one over all six pods; one whose only endpoint is web-3.
    m.kubectl_stdin(
        0,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: hello}\nspec:\n  selector: {tier: both}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: edge}\nspec:\n  selector: {app: web, host: \"3\"}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let cluster_ip = cluster_ip(&m, "hello");
    assert!(
        overlap(parse(&format!("{cluster_ip}/32")), parse(SERVICE_CIDR)),
        "ClusterIP {cluster_ip} from {SERVICE_CIDR}"
    );
    let all: BTreeSet<String> = servers
        .iter()
        .map(|(name, _)| format!("Hello from {name}"))
        .collect();
    for h in 0..3 {
        let url = format!("http://{cluster_ip}:80/");
        assert_eq!(
            answers_from(&m, h, &url),
            all,
            "host {} through {cluster_ip}",
            h + 1
        );
    }
    // Traffic policies keep traffic on the node it arrived at: cluster
    // traffic with `internalTrafficPolicy: Local` or `trafficDistribution:
    // PreferClose`, NodePort traffic with `externalTrafficPolicy: Local`.
    m.kubectl_stdin(
        0,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: local}\nspec:\n  selector: {tier: both}\n  internalTrafficPolicy: Local\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: close}\nspec:\n  selector: {tier: both}\n  trafficDistribution: PreferClose\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  selector: {tier: both}\n  externalTrafficPolicy: Local\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let get_svc = |name: &str, path: &str| {
        m.kubectl_ok(
            0,
            &["get", "service", name, "-o", &format!("jsonpath={path}")],
        )
    };
    let node_port = get_svc("np", "{.spec.ports[0].nodePort}");
    for h in 0..3 {
        let on_h: BTreeSet<String> = [
            format!("Hello from hello-{}", h + 1),
            format!("Hello from web-{}", h + 1),
        ]
        .into();
        for svc in ["local", "close"] {
            let ip = get_svc(svc, "{.spec.clusterIP}");
            assert_eq!(
                answers_from(&m, h, &format!("http://{ip}/")),
                on_h,
                "{svc} from host {}",
                h + 1
            );
        }
        // Host h's NodePort, asked from the next host.
        let url = format!("http://{}:{node_port}/", m.hosts.hosts[h].ip);
        assert_eq!(
            answers_from(&m, (h + 1) % 3, &url),
            on_h,
            "NodePort of host {}",
            h + 1
        );
    }

    // A Wasm guest on host 1 calls, by name, a Service whose only endpoint
    // is a container on host 3.
    assert_eq!(
        http_from(
            &m,
            0,
            &format!("http://{}:8080/?url=http://edge/", fetchers[0])
        ),
        "200 Hello from web-3"
    );

    // Cluster DNS from every host: a plain A query to kube-dns's ClusterIP.
    let query = "import socket\nq=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'+b''.join(bytes([len(p)])+p.encode() for p in 'hello.default.svc.cluster.local'.split('.'))+b'\\x00\\x00\\x01\\x00\\x01'\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1)\nfor _ in range(20):\n  try:\n    s.sendto(q,('10.96.0.10',53));r=s.recv(512);print(socket.inet_ntoa(r[-4:]));break\n  except OSError: pass";
    for h in 0..3 {
        assert_eq!(
            python(&m, h, query),
            cluster_ip,
            "host {} asks kube-dns",
            h + 1
        );
    }

    // Outside the cluster: a host with no route to any pod block (the
    // answer reaches a container only if the container was masqueraded).
    // Inside it: an address of host 3's Wasm half, which must see the
    // container's own IP.
    let outside = m.hosts.add();
    let outside_ip = m.hosts.hosts[outside].ip.clone();
    echo_server(&mut m, outside, &outside_ip, 9000);
    let inside_ip = addr_in(&blocks["node-3"], 200);
    echo_server(&mut m, 2, &inside_ip, 9001);

    // From inside a container on each host: every pod by IP, the ClusterIP,
    // and cluster DNS through the resolv.conf the agent gave it.
    // (Busybox's static wget crashes without libc's NSS modules: nc it is.)
    let targets: Vec<&str> = servers.iter().map(|(_, ip)| ip.as_str()).collect();
    let script = format!(
        r#"get() {{ printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" | nc -w 3 "$1" "$2" 2>/dev/null | tail -n 1; }}
try() {{ for n in $(seq 10); do out=$(get "$1" "$2"); case "$out" in Hello*|from*) echo "$out"; return;; esac; sleep 0.3; done; echo FAIL; }}
for t in {targets}; do echo "==pod $t"; try $t 8080; done
echo "==svc"; for n in $(seq 60); do get {cluster_ip} 80; echo; done | sort -u
echo "==nslookup hello"; nslookup hello 2>&1
echo "==nslookup fqdn"; nslookup hello.default.svc.cluster.local 2>&1
addr=$(nslookup hello 2>/dev/null | while read a b; do [ "$a" = Address: ] && echo "$b"; done | tail -n 1)
echo "==byname"; try "$addr" 80
echo "==resolv"; cat /etc/resolv.conf
echo "==outside"; try {outside_ip} 9000
echo "==inside"; try {inside_ip} 9001
"#,
        targets = targets.join(" ")
    );
    for n in 1..=3 {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("probe-{n}")},
            "spec": {"nodeName": format!("node-{n}"), "restartPolicy": "Never",
                     "containers": [{"name": "probe", "image": IMAGE_BUSYBOX,
                                     "command": ["sh", "-c", script]}]}
        });
        m.kubectl_stdin(0, &["apply", "-f", "-"], &pod.to_string());
    }
    for n in 1..=3 {
        let pod = format!("pod/probe-{n}");
        let done = m.kubectl(
            0,
            &[
                "wait",
                "--for=jsonpath={.status.phase}=Succeeded",
                &pod,
                "--timeout=180s",
            ],
        );
        let log = m.kubectl_ok(0, &["logs", &pod]);
        assert!(
            done.status.success(),
            "{pod} Succeeded: {}\n{log}",
            String::from_utf8_lossy(&done.stderr)
        );
        eprintln!("{pod}:\n{log}");
        let s = sections(&log);
        for ((name, _), t) in servers.iter().zip(&targets) {
            assert_eq!(
                s.get(&format!("pod {t}")).map(|x| x.trim()),
                Some(format!("Hello from {name}").as_str()),
                "{pod} → {name}:\n{log}"
            );
        }
        let seen: BTreeSet<String> = s["svc"]
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(seen, all, "{pod} through {cluster_ip}:\n{log}");
        for q in ["nslookup hello", "nslookup fqdn"] {
            assert!(
                s[q].contains(&format!("Address: {cluster_ip}")),
                "{pod} {q} answers {cluster_ip}:\n{log}"
            );
        }
        assert!(
            all.contains(s["byname"].trim()),
            "{pod} GET http://hello/:\n{log}"
        );
        // Leaving the cluster, a container is masqueraded behind its host;
        // pod-to-pod, it keeps its own address.
        assert_eq!(
            s["outside"].trim(),
            format!("from {}", m.hosts.hosts[n - 1].ip),
            "{pod} → {outside_ip}:\n{log}"
        );
        let seen_as = s["inside"].trim().trim_start_matches("from ");
        let containers = parse(&blocks[&format!("node-{n}")])
            .subnets(25)
            .unwrap()
            .next()
            .unwrap();
        assert!(
            overlap(parse(&format!("{seen_as}/32")), containers),
            "{pod} reached {inside_ip} un-NATed, from its own IP in {containers}:\n{log}"
        );
    }

    if backend == "vxlan" {
        // The checks above crossed hosts encapsulated.
        let out = m
            .hosts
            .command(0, "ip")
            .args(["-j", "-s", "link", "show", "dev", "weft.vxlan"])
            .output()
            .unwrap();
        let link: Value = serde_json::from_slice(&out.stdout).unwrap();
        let sent = link[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0);
        assert!(sent > 100, "host 1's weft.vxlan sent {sent} packets");
        // Containers' links leave room for the overlay's headers.
        let out = m
            .hosts
            .command(0, "ip")
            .args(["-j", "link", "show", "dev", "weft0"])
            .output()
            .unwrap();
        let bridge: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(bridge[0]["mtu"], 1450, "host 1's container bridge");
    }

    // The NAT rule is the agent's own table, gone with a clean stop.
    let nat = |m: &Members| {
        m.hosts
            .command(0, "nft")
            .args(["list", "table", "ip", "weft"])
            .output()
            .unwrap()
    };
    assert!(
        String::from_utf8_lossy(&nat(&m).stdout).contains("masquerade"),
        "host 1's NAT table"
    );
    m.hosts.signal(agents[0], "TERM");
    wait_for(
        "agent 1 removed its NAT table",
        Duration::from_secs(20),
        &|| !nat(&m).status.success(),
    );
    // The overlay device goes too (with its routes and entries).
    let device = m
        .hosts
        .command(0, "ip")
        .args(["link", "show", "dev", "weft.vxlan"])
        .output()
        .unwrap();
    assert!(
        !device.status.success(),
        "host 1 has no weft.vxlan after the stop"
    );
}

#[test]
fn a_joining_node_gets_a_block_and_routes_everywhere_and_a_leaving_one_frees_them() {
    let (mut m, _agents, blocks) = routed_cluster(&[]);
    let h = m.add_host();
    let host_ip = m.hosts.hosts[h].ip.clone();
    let limit = Duration::from_secs(30);
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| wait_for(what, limit, ok);
    let pod_cidr = |m: &Members, node: &str| {
        let out = m.kubectl(0, &["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // Joining: node IPAM gives node-4 a free block, the three hosts route
    // it to host 4, and host 4 routes theirs.
    let agent = spawn_routed_agent(&mut m, h, "node-4", 0, &[]);
    wait_for("node-4 gets a podCIDR", &|| {
        !pod_cidr(&m, "node-4").is_empty()
    });
    let joined = pod_cidr(&m, "node-4");
    for (name, cidr) in &blocks {
        assert!(
            !overlap(parse(&joined), parse(cidr)),
            "node-4's {joined} is disjoint from {name}'s {cidr}"
        );
    }
    let via = format!("{joined} via {host_ip} ");
    for i in 0..3 {
        wait_for(&format!("host {} routes {via}", i + 1), &|| {
            route_show(&m, i).contains(&via)
        });
    }
    wait_for("host 4 routes every other block", &|| {
        let routes = route_show(&m, h);
        blocks.values().all(|b| routes.contains(b.as_str()))
    });

    // Leaving: a drained host's agent stops and its Node is deleted; its
    // routes leave every table and its block is free for the next node.
    m.hosts.signal(agent, "TERM");
    m.kubectl_ok(0, &["delete", "node", "node-4"]);
    for i in 0..3 {
        wait_for(&format!("host {} forgets {joined}", i + 1), &|| {
            !route_show(&m, i).contains(&joined)
        });
    }
    wait_for("host 4 has no Weft routes", &|| {
        route_show(&m, h).is_empty()
    });
    spawn_routed_agent(&mut m, h, "node-5", 1, &[]);
    wait_for("node-5 gets a podCIDR", &|| {
        !pod_cidr(&m, "node-5").is_empty()
    });
    assert_eq!(
        pod_cidr(&m, "node-5"),
        joined,
        "the freed block is the lowest free one again"
    );
}
