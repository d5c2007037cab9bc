//! Services end to end: the node proxies' ClusterIPs, NodePorts, cluster
//! DNS, Wasm egress to Services by name, rollouts under load, scale to zero.

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::{TestCluster, http_get as get};

/// The hello sample (Deployment and Service) with `replicas`.
fn hello_sample(image: &str, replicas: u32) -> String {
    std::fs::read_to_string(guests::repo_root().join("samples/hello/deployment.yaml"))
        .expect("sample manifest")
        .replace("IMAGE", image)
        .replace("replicas: 2", &format!("replicas: {replicas}"))
}

fn cluster_ip(c: &TestCluster, svc: &str) -> String {
    let (ns, name) = svc.split_once('/').unwrap_or(("default", svc));
    c.kubectl_ok(&[
        "get",
        "service",
        "-n",
        ns,
        name,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
}

fn rollout(c: &TestCluster) {
    let out = c.kubectl(&["rollout", "status", "deployment/hello", "--timeout=90s"]);
    assert!(
        out.status.success(),
        "rollout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pod name in a hello answer.
fn pod_of(body: &str) -> String {
    body.trim().trim_start_matches("Hello from ").to_string()
}

#[test]
fn services_spread_load_resolve_by_dns_route_wasm_egress_and_scale_to_zero() {
    let registry = Registry::start();
    let hello = common::push(&registry, &guests::sample("hello"), "samples/hello:1");
    let fetch = common::push(
        &registry,
        &guests::guest("wasm-host/tests/guests/fetch", "fetch"),
        "tests/fetch:1",
    );
    let c = TestCluster::with_nodes(2, &[]);
    c.apply(&hello_sample(&hello, 3));
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: hello-np}\nspec:\n  type: NodePort\n  selector: {app: hello}\n  ports: [{port: 80, targetPort: http}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: hello-tcp}\nspec:\n  selector: {app: hello}\n  ports: [{name: web, port: 8000, targetPort: http, appProtocol: tcp}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: hello-headless}\nspec:\n  clusterIP: None\n  selector: {app: hello}\n  ports: [{name: http, port: 8080}]\n",
    );
    rollout(&c);

    // The API server's own Service and the cluster DNS Service exist from the start.
    let kubernetes = cluster_ip(&c, "kubernetes");
    assert!(
        kubernetes.ends_with(".1"),
        "kubernetes ClusterIP {kubernetes}"
    );
    let ip = cluster_ip(&c, "hello");
    assert!(
        ip.starts_with("127.2"),
        "ClusterIP {ip} from the test's service range"
    );

    // Spread: 300 requests, fresh connections, reach all 3 pods evenly (±20%).
    let addr = format!("{ip}:80");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&addr, "/").map(|r| r.0).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "ClusterIP {addr} never answered 200"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut per_pod: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        let (status, body) = get(&addr, "/").expect("GET through the ClusterIP");
        assert_eq!(status, 200, "{body}");
        *per_pod.entry(pod_of(&body)).or_default() += 1;
    }
    assert_eq!(per_pod.len(), 3, "all three pods answered: {per_pod:?}");
    for (pod, n) in &per_pod {
        assert!((80..=120).contains(n), "{pod} got {n} of 300: {per_pod:?}");
    }

    // The L4 path (appProtocol: tcp) and the NodePort on the node address.
    let tcp = format!("{}:8000", cluster_ip(&c, "hello-tcp"));
    let (status, body) = get(&tcp, "/").expect("GET through the TCP path");
    assert_eq!(
        (status, body.starts_with("Hello from hello-")),
        (200, true),
        "{body}"
    );
    let node_port = c.kubectl_ok(&[
        "get",
        "service",
        "hello-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let np: u16 = node_port.parse().expect("a nodePort");
    assert!((30000..=32767).contains(&np), "nodePort {np}");
    let (status, body) = get(&format!("127.0.0.1:{np}"), "/").expect("GET the NodePort");
    assert_eq!(
        (status, body.starts_with("Hello from hello-")),
        (200, true),
        "{body}"
    );

    // Cluster DNS, asked with a hickory client at kube-dns's ClusterIP.
    let dns_ip = cluster_ip(&c, "kube-system/kube-dns");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, srv, headless) = rt.block_on(async {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        use hickory_resolver::proto::xfer::Protocol;
        let mut cfg = ResolverConfig::new();
        let server: SocketAddr = format!("{dns_ip}:53").parse().unwrap();
        cfg.add_name_server(NameServerConfig::new(server, Protocol::Udp));
        let resolver = hickory_resolver::Resolver::builder_with_config(
            cfg,
            TokioConnectionProvider::default(),
        )
        .build();
        let a: Vec<String> = resolver
            .ipv4_lookup("hello.default.svc.cluster.local.")
            .await
            .expect("A record (cluster DNS listens on port 53: the tests run as root)")
            .iter()
            .map(|a| a.to_string())
            .collect();
        let srv: Vec<u16> = resolver
            .srv_lookup("_web._tcp.hello-tcp.default.svc.cluster.local.")
            .await
            .expect("SRV record")
            .iter()
            .map(|s| s.port())
            .collect();
        let headless = resolver
            .ipv4_lookup("hello-headless.default.svc.cluster.local.")
            .await
            .expect("headless A records")
            .iter()
            .count();
        (a, srv, headless)
    });
    assert_eq!(a, std::slice::from_ref(&ip), "the ClusterIP");
    assert_eq!(srv, [8000], "the named port");
    assert_eq!(headless, 3, "a headless Service resolves to its ready pods");

    // A Wasm guest calls the Service by name through the egress hook: no DNS, no allow-list entry.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: fetch}}\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: fetch\n    image: {fetch}\n    ports: [{{containerPort: 8080}}]\n"
    ));
    let ready = c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/fetch",
        "--timeout=60s",
    ]);
    assert!(
        ready.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ready.stderr),
        String::from_utf8_lossy(&c.kubectl(&["describe", "pod", "fetch"]).stdout)
    );
    let fetch_ip = c.kubectl_ok(&["get", "pod", "fetch", "-o", "jsonpath={.status.podIP}"]);
    for url in [
        "http://hello/",
        "http://hello.default/",
        "http://hello.default.svc.cluster.local/",
        "http://hello-tcp:8000/",
    ] {
        let (status, body) =
            get(&format!("{fetch_ip}:8080"), &format!("/?url={url}")).expect("GET the fetch pod");
        assert_eq!(status, 200, "{url}: {body}");
        assert!(body.starts_with("200 Hello from hello-"), "{url}: {body}");
    }
    // Outside the cluster the allow-list still applies (empty: denied).
    let (status, body) = get(&format!("{fetch_ip}:8080"), "/?url=http://example.invalid/").unwrap();
    assert_eq!(status, 502, "{body}");

    // Metrics per Service port and endpoint, on the agents' endpoints.
    let metrics: String = ["node-1", "node-2"]
        .iter()
        .map(|n| {
            let port = c.kubectl_ok(&[
                "get",
                "node",
                n,
                "-o",
                "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
            ]);
            let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .collect();
    for want in [
        "weft_proxy_requests_total{service=\"default/hello:80\",endpoint=\"127.",
        "weft_proxy_request_duration_seconds_bucket{",
        "weft_proxy_active_connections{",
    ] {
        assert!(metrics.contains(want), "metrics lack {want}:\n{metrics}");
    }

    // Scale to zero: a fast 503, not a hang.
    c.kubectl_ok(&["scale", "deployment/hello", "--replicas=0"]);
    c.wait_until(
        &["get", "pods", "-l", "app=hello", "-o", "name"],
        Duration::from_secs(60),
        |out| out.trim().is_empty(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let (status, body) = get(&addr, "/").expect("the ClusterIP still answers");
        if status == 503 {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "503 took {:?}",
                started.elapsed()
            );
            assert!(
                body.contains("no endpoints available for service"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after scale to zero: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rollout_restart_under_load_fails_no_request() {
    let registry = Registry::start();
    let hello = common::push(&registry, &guests::sample("hello"), "samples/hello:1");
    let c = TestCluster::start_with(&["--node-name", "node-1"]);
    c.apply(&hello_sample(&hello, 3));
    rollout(&c);
    let addr = format!("{}:80", cluster_ip(&c, "hello"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&addr, "/").map(|r| r.0).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "ClusterIP {addr} never answered 200"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Steady load from 4 clients (bounded in count and time) while the Deployment restarts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut pods) =
                    (0u32, Vec::new(), std::collections::HashSet::new());
                let until = Instant::now() + Duration::from_secs(120);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && Instant::now() < until
                    && ok < 50_000
                {
                    match get(&addr, "/") {
                        Ok((200, body)) => {
                            ok += 1;
                            pods.insert(pod_of(&body));
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (ok, failed, pods)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    c.kubectl_ok(&["rollout", "restart", "deployment/hello"]);
    rollout(&c);
    // Until the old pods are gone, then a little longer.
    c.wait_until(
        &[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        Duration::from_secs(60),
        |out| {
            out.split_whitespace().count() == 3
                && !out.split_whitespace().any(|p| before.contains(p))
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut pods) = (0, Vec::new(), std::collections::HashSet::new());
    for t in clients {
        let (o, f, p) = t.join().unwrap();
        ok += o;
        failed.extend(f);
        pods.extend(p);
    }
    eprintln!(
        "rollout under load: {ok} GETs answered by {} pods",
        pods.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} GETs failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 200, "only {ok} requests in the rollout");
    assert!(pods.len() >= 6, "old and new pods both served: {pods:?}");
}
