//! Container pods end to end: a real containerd (the test's own), real
//! kubectl, the loopback registry and a busybox-static image built here.

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::containers::{Containerd, PodNetwork, push_busybox};
use common::registry::Registry;
use common::{TestCluster, http_get as get};

const PAGE: &str = "container page\n";

/// A Deployment (no RuntimeClass: the image decides) and its Service.
fn web(name: &str, label: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {label}, deploy: {name}}}}}
  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: {label}, deploy: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 3
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        lifecycle: {{preStop: {{sleep: {{seconds: 2}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {label}}}
spec:
  selector: {{app: {label}}}
  ports: [{{port: 80, targetPort: 8080}}]
"
    )
}

fn cluster_ip(c: &TestCluster, svc: &str) -> String {
    c.kubectl_ok(&["get", "service", svc, "-o", "jsonpath={.spec.clusterIP}"])
}

fn rollout(c: &TestCluster, deploy: &str) {
    let out = c.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{deploy}"),
        "--timeout=60s",
    ]);
    assert!(
        out.status.success(),
        "rollout {deploy}: {}\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.kubectl_ok(&["get", "pods", "-o", "wide"]),
        c.kubectl_ok(&["get", "pods", "-o", "jsonpath={..state.waiting.message}"]),
        c.kubectl_ok(&["get", "events"])
    );
}

fn jsonpath(c: &TestCluster, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let jp = format!("jsonpath={path}");
    args.extend(["-o", &jp]);
    c.kubectl_ok(&args)
}

/// Waits until `addr` answers 200.
fn answers(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(addr, "/") {
            Ok((200, body)) => return body,
            other => assert!(
                Instant::now() < deadline,
                "{addr} never answered 200: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn container_deployment_serves_logs_is_replaced_and_survives_an_agent_restart() {
    let registry = Registry::start();
    let containerd = Containerd::start();
    let net = PodNetwork::fresh();
    let image = push_busybox(
        &registry.addr,
        "test/httpd:1",
        PAGE,
        &[
            "sh",
            "-c",
            "cat /etc/resolv.conf; echo serving on 8080; exec httpd -f -p 8080 -h /www",
        ],
    );
    let mut flags = net.flags(&containerd);
    flags.extend(["--node-name", "node-1"]);
    let mut c = TestCluster::start_with(&flags);
    c.apply(&web("web", "web", &image, 2));
    rollout(&c, "web");

    // Two replicas on one node, both on containerPort 8080, each in its own namespace.
    let ips = jsonpath(&c, &["pods", "-l", "app=web"], "{.items[*].status.podIP}");
    let prefix = net.cidr.trim_end_matches("0/24");
    let ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    for ip in &ips {
        assert!(ip.starts_with(prefix), "pod IP {ip} outside {}", net.cidr);
        assert_eq!(answers(&format!("{ip}:8080")), PAGE);
    }
    // Through the Service, on the node proxy.
    let addr = format!("{}:80", cluster_ip(&c, "web"));
    assert_eq!(answers(&addr), PAGE);
    let statuses = jsonpath(
        &c,
        &["pods", "-l", "app=web"],
        "{.items[*].status.containerStatuses[0].containerID}",
    );
    assert!(
        statuses
            .split_whitespace()
            .all(|id| id.starts_with("containerd://")),
        "{statuses}"
    );
    // kubectl logs serves the container's stdout.
    let pods = jsonpath(&c, &["pods", "-l", "app=web"], "{.items[*].metadata.name}");
    let first = pods.split_whitespace().next().unwrap().to_string();
    let logs = c.kubectl_ok(&["logs", &first]);
    assert!(logs.contains("serving on 8080"), "logs: {logs:?}");
    // Its resolv.conf is kubelet's for ClusterFirst: the cluster DNS first.
    let dns = c.kubectl_ok(&[
        "get",
        "service",
        "kube-dns",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(
        logs.starts_with(&format!(
            "nameserver {dns}\nsearch default.svc.cluster.local svc.cluster.local cluster.local"
        )) && logs.contains("options ndots:5\n"),
        "logs: {logs:?}"
    );
    // Events tell the pull.
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={first}"),
    ]);
    assert!(events.contains("Pulled"), "{events}");

    // A deleted pod is replaced.
    c.kubectl_ok(&["delete", "pod", &first, "--wait=false"]);
    c.wait_until(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        Duration::from_secs(60),
        |out| !out.contains(first.as_str()) && out.split_whitespace().count() == 2,
    );
    rollout(&c, "web");

    // Kill the agent (with the whole `weft up`): the containers keep serving
    // while it is down, and the next agent adopts them without restarts.
    let before = jsonpath(
        &c,
        &["pods", "-l", "app=web"],
        "{range .items[*]}{.metadata.name}={.status.containerStatuses[0].containerID}/{.status.containerStatuses[0].restartCount} {end}",
    );
    let ips = jsonpath(&c, &["pods", "-l", "app=web"], "{.items[*].status.podIP}");
    let tasks_before = containerd.running_tasks();
    assert_eq!(tasks_before.len(), 2, "{tasks_before:?}");
    c.kill9();
    for ip in ips.split_whitespace() {
        assert_eq!(
            get(&format!("{ip}:8080"), "/").unwrap().1,
            PAGE,
            "{ip} while the agent is down"
        );
    }
    let dir = c.dir.clone();
    let c2 = TestCluster::start_in_with(&dir, &flags);
    c2.wait_until(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ],
        Duration::from_secs(60),
        |out| out.split_whitespace().filter(|s| *s == "True").count() == 2,
    );
    let after = jsonpath(
        &c2,
        &["pods", "-l", "app=web"],
        "{range .items[*]}{.metadata.name}={.status.containerStatuses[0].containerID}/{.status.containerStatuses[0].restartCount} {end}",
    );
    assert_eq!(
        after, before,
        "adopted containers keep their IDs and restart counts"
    );
    assert_eq!(
        containerd.running_tasks(),
        tasks_before,
        "same tasks, same PIDs"
    );
    assert_eq!(answers(&format!("{}:80", cluster_ip(&c2, "web"))), PAGE);

    // Deleting the Deployment removes its containers from containerd.
    let uids = jsonpath(&c2, &["pods", "-l", "app=web"], "{.items[*].metadata.uid}");
    let uids: Vec<String> = uids.split_whitespace().map(String::from).collect();
    assert_eq!(uids.len(), 2);
    c2.kubectl_ok(&["delete", "deployment", "web"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !containerd.running_tasks().is_empty() {
        assert!(
            Instant::now() < deadline,
            "tasks left: {:?}",
            containerd.running_tasks()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The pods finish deleting only after their networks are released.
    c2.wait_until(
        &["get", "pods", "-l", "app=web", "-o", "name"],
        Duration::from_secs(60),
        |out| out.trim().is_empty(),
    );
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(
        uids.iter().all(|u| !ns.contains(u.as_str())),
        "pod namespaces left: {ns}"
    );
    drop(c);
}

#[test]
fn liveness_failures_restart_and_memory_breaches_show_oomkilled() {
    let registry = Registry::start();
    let containerd = Containerd::start();
    let net = PodNetwork::fresh();
    let image = push_busybox(&registry.addr, "test/box:1", PAGE, &["sleep", "600"]);
    let mut flags = net.flags(&containerd);
    flags.extend(["--restart-backoff", "1s"]);
    let c = TestCluster::start_with(&flags);
    c.apply(&format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: conf}}
data: {{greeting: hi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: live}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {image}
    command: [sh, -c, 'touch /tmp/healthy; sleep 3; rm /tmp/healthy; sleep 600']
    livenessProbe: {{exec: {{command: [cat, /tmp/healthy]}}, periodSeconds: 1, failureThreshold: 2}}
  - name: steady
    image: {image}
    command: [sleep, '600']
    volumeMounts: [{{name: conf, mountPath: /etc/conf}}]
  volumes: [{{name: conf, configMap: {{name: conf}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: bomb}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {image}
    command: [sh, -c, 'echo allocating; x=aaaaaaaa; while true; do x=$x$x; done']
    resources: {{limits: {{memory: 32Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: conf}}
spec:
  securityContext: {{runAsUser: 1000}}
  containers:
  - name: c
    image: {image}
    command: [sh, -c, 'echo env=$GREETING file=$(cat /etc/conf/greeting) uid=$(id -u); touch /x 2>/dev/null || echo read-only; sleep 600']
    env: [{{name: GREETING, valueFrom: {{configMapKeyRef: {{name: conf, key: greeting}}}}}}]
    securityContext: {{readOnlyRootFilesystem: true}}
    volumeMounts: [{{name: conf, mountPath: /etc/conf}}]
  volumes: [{{name: conf, configMap: {{name: conf}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: missing}}
spec:
  containers:
  - name: c
    image: {registry}/test/nope:1
",
        registry = registry.addr
    ));
    let steady_started = c.wait_until(
        &[
            "get",
            "pod",
            "live",
            "-o",
            "jsonpath={.status.containerStatuses[?(@.name==\"steady\")].state.running.startedAt}",
        ],
        Duration::from_secs(60),
        |s| !s.is_empty(),
    );
    let live_uid = jsonpath(&c, &["pod", "live"], "{.metadata.uid}");
    let steady_task = || {
        let id = format!("{live_uid}-steady");
        containerd
            .running_tasks()
            .into_iter()
            .find(|(t, _)| *t == id)
            .map(|(_, pid)| pid)
    };
    let steady_pid = steady_task().expect("the steady container runs");
    c.wait_until(
        &[
            "get",
            "pod",
            "bomb",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.reason}",
        ],
        Duration::from_secs(60),
        |out| out == "OOMKilled",
    );
    assert_eq!(jsonpath(&c, &["pod", "bomb"], "{.status.phase}"), "Failed");
    assert_eq!(
        jsonpath(
            &c,
            &["pod", "bomb"],
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "137"
    );
    c.wait_until(
        &[
            "get",
            "pod",
            "live",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.running.startedAt}",
        ],
        Duration::from_secs(90),
        // Restarted, and running again.
        |out| {
            out.split_once(' ')
                .is_some_and(|(n, at)| n.parse::<u32>().is_ok_and(|n| n >= 1) && !at.is_empty())
        },
    );
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=live",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    // Only the failing container restarted: its neighbour runs on, the same task.
    assert_eq!(
        jsonpath(
            &c,
            &["pod", "live"],
            "{.status.containerStatuses[?(@.name==\"steady\")].restartCount} {.status.containerStatuses[?(@.name==\"steady\")].state.running.startedAt}"
        ),
        format!("0 {steady_started}")
    );
    assert_eq!(steady_task(), Some(steady_pid));
    // Pod volumes outlive a container's restart: its neighbour still reads them.
    let read = containerd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "read-conf",
        &format!("{live_uid}-steady"),
        "cat",
        "/etc/conf/greeting",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "hi",
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    // The spec from the pod: env from a ConfigMap, a configMap volume,
    // runAsUser, a read-only root filesystem.
    let logs = c.wait_until(&["logs", "conf"], Duration::from_secs(60), |out| {
        out.contains("read-only")
    });
    assert!(logs.contains("env=hi file=hi uid=1000"), "{logs}");
    // A tag the registry does not have: ErrImagePull with the registry's
    // words, then ImagePullBackOff.
    let waiting = c.wait_until(
        &["get", "pod", "missing", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"],
        Duration::from_secs(60),
        |out| out.starts_with("ErrImagePull") || out.starts_with("ImagePullBackOff"),
    );
    assert!(waiting.contains("manifest unknown"), "{waiting}");
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=missing",
    ]);
    assert!(events.contains("Failed to pull image"), "{events}");
}

/// Which kind of endpoint answered: "wasm" (the hello sample), else the body.
fn kind(body: String) -> String {
    if body.starts_with("Hello from") {
        "wasm".into()
    } else {
        body
    }
}

/// Requests answered, failures, and which kinds of body were seen.
type LoadResult = (u32, Vec<String>, HashSet<String>);

/// Sends requests from `clients` threads until stopped (bounded in count
/// and time); returns the bodies seen and the failures.
fn load(
    addr: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<LoadResult>> {
    (0..clients)
        .map(|_| {
            let (addr, stop) = (addr.to_string(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut bodies) = (0u32, Vec::new(), HashSet::new());
                let until = Instant::now() + Duration::from_secs(180);
                while !stop.load(Ordering::Relaxed) && Instant::now() < until && ok < 100_000 {
                    match get(&addr, "/") {
                        Ok((200, body)) => {
                            ok += 1;
                            bodies.insert(kind(body));
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (ok, failed, bodies)
            })
        })
        .collect()
}

#[test]
fn one_service_over_both_runtimes_and_moving_a_service_to_wasm() {
    let registry = Registry::start();
    let containerd = Containerd::start();
    let net = PodNetwork::fresh();
    let image = push_busybox(
        &registry.addr,
        "test/httpd:1",
        PAGE,
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let wasm = common::push(&registry, &guests::sample("hello"), "samples/hello:1");
    let c = TestCluster::start_with(&net.flags(&containerd));

    // One Service selecting a Wasm Deployment and a container Deployment.
    c.apply(&web("both-ctr", "both", &image, 1));
    c.apply(&web("both-wasm", "both", &wasm, 1));
    rollout(&c, "both-ctr");
    rollout(&c, "both-wasm");
    let addr = format!("{}:80", cluster_ip(&c, "both"));
    answers(&addr);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        if let Ok((200, body)) = get(&addr, "/") {
            seen.insert(kind(body));
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        HashSet::from(["wasm".to_string(), PAGE.to_string()]),
        "both kinds of endpoint answer"
    );

    // Moving a service: the same manifest with a Wasm artifact, under load.
    c.apply(&web("mover", "mover", &image, 2));
    rollout(&c, "mover");
    let addr = format!("{}:80", cluster_ip(&c, "mover"));
    answers(&addr);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&addr, 3, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    c.apply(&web("mover", "mover", &wasm, 2));
    rollout(&c, "mover");
    c.wait_until(
        &[
            "get",
            "pods",
            "-l",
            "app=mover",
            "-o",
            "jsonpath={.items[*].status.containerStatuses[0].containerID}",
        ],
        Duration::from_secs(60),
        |out| {
            out.split_whitespace().count() == 2
                && out.split_whitespace().all(|id| id.starts_with("wasm://"))
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut bodies) = (0, Vec::new(), HashSet::new());
    for t in clients {
        let (o, f, b) = t.join().unwrap();
        ok += o;
        failed.extend(f);
        bodies.extend(b);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        bodies.contains(PAGE) && bodies.contains("wasm"),
        "served by both during the move: {bodies:?}"
    );
    eprintln!("moving a service: {ok} requests, 0 failed");

    // samples/mixed: the Wasm frontend reaches the container backend by Service name.
    let frontend = common::push(&registry, &guests::sample("mixed"), "samples/mixed:1");
    let manifest = std::fs::read_to_string(guests::repo_root().join("samples/mixed/app.yaml"))
        .unwrap()
        .replace("FRONTEND_IMAGE", &frontend)
        .replace("BACKEND_IMAGE", &image);
    c.apply(&manifest);
    rollout(&c, "backend");
    rollout(&c, "frontend");
    let body = answers(&format!("{}:80", cluster_ip(&c, "frontend")));
    assert!(
        body.contains("(Wasm) -> backend (200): container page"),
        "{body}"
    );
}
