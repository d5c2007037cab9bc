//! A Wasm pod end to end: `weft push` to a loopback registry, a pod bound to
//! the `weft up` node, Running and serving at its pod IP, then deleted.

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::Registry;
use common::{TestCluster, http_get};

/// Polls a kubectl jsonpath until it equals `want` (bounded).
fn wait_for(c: &TestCluster, args: &[&str], want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = String::from_utf8_lossy(&c.kubectl(args).stdout).to_string();
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded) for pod `name` to be Ready and returns its pod IP.
fn ready_ip(c: &TestCluster, name: &str) -> String {
    let pod = format!("pod/{name}");
    let ready = c.kubectl(&["wait", "--for=condition=Ready", &pod, "--timeout=60s"]);
    assert!(
        ready.status.success(),
        "{pod} never Ready: {}",
        String::from_utf8_lossy(&ready.stderr)
    );
    c.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"])
}

/// Applies `manifest` and waits (bounded) for pod `name`'s first container to wait with `reason`.
fn apply_and_wait_reason(c: &TestCluster, manifest: &str, name: &str, reason: &str) -> String {
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], manifest)
            .status
            .success()
    );
    let jsonpath = "jsonpath={.status.containerStatuses[0].state.waiting.reason}";
    wait_for(
        c,
        &["get", "pod", name, "-o", jsonpath],
        reason,
        Duration::from_secs(30),
    )
}

fn pod(name: &str, node: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: app\n    image: {image}\n    env: [{{name: LOG_REQUESTS, value: '1'}}]\n    ports: [{{containerPort: 8080}}]\n"
    )
}

/// Starts `kubectl logs -f` and returns a receiver of its output lines.
fn follow_logs(
    c: &TestCluster,
    pod: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = c.kubectl_spawn(&["logs", "-f", pod]);
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[test]
fn wasm_pod_runs_serves_and_is_deleted() {
    let registry = Registry::start();
    let c = TestCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hello.wasm");
    std::fs::write(&wasm, guests::sample("hello")).unwrap();
    let image = format!("{}/samples/hello:1", registry.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("push")
        .arg(&wasm)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sha256:"));

    // The in-process agent registered its node, Ready, labelled as a Wasm node, with the RuntimeClass.
    let node = c.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert!(!node.is_empty());
    assert_eq!(c.kubectl_ok(&["get", "node", &node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.metadata.labels.runtime\\.weft\\.dev/wasmtime}"]), "True true");
    assert_eq!(
        c.kubectl_ok(&["get", "runtimeclass", "wasm", "-o", "jsonpath={.handler}"]),
        "wasmtime"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "lease",
            &node,
            "-n",
            "kube-node-lease",
            "-o",
            "jsonpath={.spec.holderIdentity}"
        ]),
        node
    );

    let started = Instant::now();
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], &pod("hello", &node, &image))
            .status
            .success()
    );
    let ready = c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/hello",
        "--timeout=60s",
    ]);
    assert!(
        ready.status.success(),
        "pod never Ready: {}",
        String::from_utf8_lossy(&ready.stderr)
    );
    println!(
        "pod create -> Ready (first pull and compile): {:?}",
        started.elapsed()
    );
    let ip = c.kubectl_ok(&["get", "pod", "hello", "-o", "jsonpath={.status.podIP}"]);
    let cidr = std::fs::read_to_string(c.dir.join("test-pod-cidr")).unwrap();
    assert!(
        ip.starts_with(cidr.trim_end_matches("0/24")),
        "pod IP {ip} from the node's range {cidr}"
    );
    let (status, reply) =
        http_get(&format!("{ip}:8080"), "/").expect("the pod answers at podIP:8080");
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("Hello from hello\n"), "{reply}");
    let wide = c.kubectl_ok(&["get", "pod", "hello", "-o", "wide"]);
    assert!(
        wide.contains("Running") && wide.contains("1/1") && wide.contains(&ip),
        "{wide}"
    );

    // The same port speaks h2c (HTTP/2 with prior knowledge).
    let h2 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let resp = client
            .get(format!("http://{ip}:8080/"))
            .send()
            .await
            .unwrap();
        (resp.version(), resp.text().await.unwrap())
    });
    assert_eq!(
        h2,
        (reqwest::Version::HTTP_2, "Hello from hello\n".to_string())
    );

    // kubectl logs: the guest's stdout, through the API server from the agent.
    let logs = c.kubectl_ok(&["logs", "hello"]);
    assert_eq!(
        logs, "GET / answered by hello\nGET / answered by hello\n",
        "the HTTP/1.1 and the h2c request"
    );
    http_get(&format!("{ip}:8080"), "/").unwrap();
    let stamped = c.kubectl_ok(&["logs", "hello", "--tail=1", "--timestamps"]);
    let (ts, line) = stamped.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{stamped}");
    assert_eq!(line.trim_end(), "GET / answered by hello");
    assert_eq!(
        c.kubectl_ok(&["logs", "hello", "--since=1h"])
            .lines()
            .count(),
        3
    );
    let (mut follower, lines) = follow_logs(&c, "hello");
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap(),
        "GET / answered by hello"
    );
    std::thread::sleep(Duration::from_millis(300));
    http_get(&format!("{ip}:8080"), "/").unwrap();
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap(),
        "GET / answered by hello",
        "-f streams new lines"
    );
    let _ = follower.kill();
    let previous = c.kubectl(&["logs", "hello", "-p"]);
    assert!(!previous.status.success());
    assert!(
        String::from_utf8_lossy(&previous.stderr)
            .contains("previous terminated container \"app\" in pod \"hello\" not found"),
        "{}",
        String::from_utf8_lossy(&previous.stderr)
    );
    let wrong = c.kubectl(&["logs", "hello", "-c", "nope"]);
    assert!(
        String::from_utf8_lossy(&wrong.stderr)
            .contains("container nope is not valid for pod hello")
    );

    // Env from a ConfigMap reaches the guest; a missing ConfigMap is a config error.
    c.kubectl_ok(&[
        "create",
        "configmap",
        "greetings",
        "--from-literal=GREETING=Hi",
    ]);
    let greeter = pod("greeter", &node, &image).replace(
        "    ports:",
        "    envFrom: [{configMapRef: {name: greetings}}]\n    ports:",
    );
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], &greeter)
            .status
            .success()
    );
    let greeter_ip = ready_ip(&c, "greeter");
    let (_, reply) = http_get(&format!("{greeter_ip}:8080"), "/").unwrap();
    assert!(reply.contains("Hi from greeter"), "{reply}");
    let orphan = pod("orphan", &node, &image).replace(
        "    ports:",
        "    envFrom: [{configMapRef: {name: missing}}]\n    ports:",
    );
    assert_eq!(
        apply_and_wait_reason(&c, &orphan, "orphan", "CreateContainerConfigError"),
        "CreateContainerConfigError"
    );

    // A missing artifact shows ErrImagePull with the registry's message.
    let missing = format!("{}/samples/nope:1", registry.addr);
    assert_eq!(
        apply_and_wait_reason(
            &c,
            &pod("broken", &node, &missing),
            "broken",
            "ErrImagePull"
        ),
        "ErrImagePull"
    );

    // Deleting the pod stops it: graceful deletion is finished by the agent.
    let deleted = c.kubectl(&["delete", "pod", "hello", "--timeout=30s"]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(
        !c.kubectl(&["get", "pod", "hello"]).status.success(),
        "the pod object is gone"
    );
    assert!(
        http_get(&format!("{ip}:8080"), "/").is_err(),
        "nothing listens at the old pod IP"
    );
}

#[test]
fn agent_restart_resumes_its_pods() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start_in(dir.path());
    let wasm = dir.path().join("hello.wasm");
    std::fs::write(&wasm, guests::sample("hello")).unwrap();
    let image = format!("{}/samples/hello:2", registry.addr);
    assert!(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("push")
            .arg(&wasm)
            .arg(&image)
            .status()
            .unwrap()
            .success()
    );
    let node = c.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], &pod("resume", &node, &image))
            .status
            .success()
    );
    let ip = ready_ip(&c, "resume");
    assert!(
        http_get(&format!("{ip}:8080"), "/")
            .unwrap()
            .1
            .contains("Hello from resume")
    );

    // Stop everything (agent included); the registry goes too, so the restart
    // must run the pod from its artifact and compile caches.
    c.stop();
    assert!(
        http_get(&format!("{ip}:8080"), "/").is_err(),
        "stopped with the agent"
    );
    drop(registry);
    let c = TestCluster::start_in(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match http_get(&format!("{ip}:8080"), "/") {
            Ok((_, body)) => break body,
            Err(e) if Instant::now() > deadline => panic!("the pod did not come back at {ip}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(reply.contains("Hello from resume"), "{reply}");
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "pod",
            "resume",
            "-o",
            "jsonpath={.status.phase} {.status.podIP}"
        ]),
        format!("Running {ip}")
    );
}

#[test]
fn static_pods_run_from_a_manifest_directory_with_a_mirror_pod() {
    let registry = Registry::start();
    let manifests = tempfile::tempdir().unwrap();
    let c = TestCluster::start_with(&[
        "--node-name",
        "static-node",
        "--pod-manifest-path",
        manifests.path().to_str().unwrap(),
    ]);
    let image = common::push(&registry, &guests::sample("hello"), "samples/hello:static");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {image}\n    ports: [{{containerPort: 8080}}]\n"
    );
    std::fs::write(manifests.path().join("web.yaml"), &manifest).unwrap();
    let mirror = "web-static-node";
    let ip = c.wait_until(
        &["get", "pod", mirror, "-o", "jsonpath={.status.podIP}"],
        Duration::from_secs(60),
        |s| !s.is_empty(),
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "pod",
            mirror,
            "-o",
            "jsonpath={.metadata.annotations.kubernetes\\.io/config\\.source} {.spec.nodeName}"
        ]),
        "file static-node"
    );
    let reply = ready_ip(&c, mirror);
    assert_eq!(reply, ip);
    assert!(
        http_get(&format!("{ip}:8080"), "/")
            .unwrap()
            .1
            .contains(&format!("Hello from {mirror}"))
    );

    // Deleting the mirror pod through the API only brings it back.
    let uid = c.kubectl_ok(&["get", "pod", mirror, "-o", "jsonpath={.metadata.uid}"]);
    c.kubectl_ok(&["delete", "pod", mirror, "--timeout=30s"]);
    c.wait_until(
        &["get", "pod", mirror, "-o", "jsonpath={.metadata.uid}"],
        Duration::from_secs(30),
        |s| !s.is_empty() && s != uid,
    );
    // Removing the file removes the pod.
    std::fs::remove_file(manifests.path().join("web.yaml")).unwrap();
    c.wait_until(
        &["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"],
        Duration::from_secs(30),
        |s| !s.contains(mirror),
    );
}

/// `{.status.containerStatuses[?(@.name=="NAME")]FIELD}` of a pod.
fn container_field(c: &TestCluster, pod: &str, name: &str, field: &str) -> String {
    c.kubectl_ok(&[
        "get",
        "pod",
        pod,
        "-o",
        &format!("jsonpath={{.status.containerStatuses[?(@.name==\"{name}\")]{field}}}"),
    ])
}

#[test]
fn containers_of_a_pod_restart_one_at_a_time() {
    let registry = Registry::start();
    let c = TestCluster::start_with(&["--restart-backoff", "1s"]);
    let hello = common::push(&registry, &guests::sample("hello"), "hello:mc");
    let job = common::push(&registry, &guests::sample("job"), "job:mc");
    let bad = common::push(
        &registry,
        &guests::guest("wasm-host/tests/guests/hostile", "hostile"),
        "hostile:mc",
    );
    let step = |name: &str, code: u8| {
        format!("  - {{name: {name}, image: {job}, env: [{{name: EXIT_CODE, value: '{code}'}}]}}\n")
    };
    let manifests = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sidecars}}\nspec:\n  runtimeClassName: wasm\n  containers:\n  \
         - {{name: web, image: {hello}, ports: [{{containerPort: 8080}}]}}\n{worker}  \
         - name: flaky\n    image: {bad}\n    ports: [{{containerPort: 8081}}]\n    \
         livenessProbe: {{httpGet: {{path: /trap, port: 8081}}, periodSeconds: 1, failureThreshold: 1}}\n",
        worker = step("worker", 3),
    );
    c.apply(&manifests);
    // Never Ready while the worker crash-loops (kubelet's rule): wait for the web container.
    c.wait_until(
        &[
            "get",
            "pod",
            "sidecars",
            "-o",
            "jsonpath={.status.containerStatuses[?(@.name==\"web\")].state.running.startedAt}",
        ],
        Duration::from_secs(60),
        |s| !s.is_empty(),
    );
    let ip = c.kubectl_ok(&["get", "pod", "sidecars", "-o", "jsonpath={.status.podIP}"]);
    let web_started = container_field(&c, "sidecars", "web", ".state.running.startedAt");
    assert!(!web_started.is_empty());

    // While the worker crash-loops and the flaky server fails its liveness
    // probe, the web container keeps serving from the same run (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut served, mut restarted) = (0, false);
    while Instant::now() < deadline && !restarted {
        let (code, body) = http_get(&format!("{ip}:8080"), "/").expect("web answers");
        assert_eq!(code, 200, "{body}");
        served += 1;
        let counts = (
            container_field(&c, "sidecars", "worker", ".restartCount"),
            container_field(&c, "sidecars", "flaky", ".restartCount"),
        );
        restarted = counts.0.parse::<u32>().is_ok_and(|n| n >= 2)
            && counts.1.parse::<u32>().is_ok_and(|n| n >= 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        restarted,
        "worker and flaky never restarted ({served} GETs)"
    );
    assert_eq!(container_field(&c, "sidecars", "web", ".restartCount"), "0");
    assert_eq!(
        container_field(&c, "sidecars", "web", ".state.running.startedAt"),
        web_started,
        "the web container was never restarted"
    );
    let worker = |field: &str| container_field(&c, "sidecars", "worker", field);
    // wasi:cli's exit carries success or failure, not the number.
    assert_eq!(worker(".lastState.terminated.exitCode"), "1");
    assert_eq!(worker(".lastState.terminated.reason"), "Error");
    let flaky = container_field(&c, "sidecars", "flaky", ".lastState.terminated.message");
    assert!(flaky.contains("Liveness probe failed"), "{flaky}");
    assert_eq!(
        c.kubectl_ok(&["get", "pod", "sidecars", "-o", "jsonpath={.status.phase}"]),
        "Running"
    );
    let previous = c.kubectl_ok(&["logs", "sidecars", "-c", "worker", "-p"]);
    assert!(
        previous.contains("job step done by sidecars") && previous.contains("exit code 3"),
        "{previous}"
    );
    // Restart policies of Job pods (OnFailure, Never) over several
    // containers: node/src/agent/lifecycle_tests.rs, in paused time.
}

#[test]
fn a_stalled_pull_holds_up_no_other_pod_and_the_node_stays_ready() {
    let registry = Registry::start();
    let slow_wasm = guests::guest("wasm-host/tests/guests/hostile", "hostile");
    let slow_digest = weft_node::artifacts::sha256(&slow_wasm);
    let hello = guests::sample("hello");
    let hello_digest = weft_node::artifacts::sha256(&hello);
    common::push(&registry, &slow_wasm, "samples/slow:1");
    common::push(&registry, &hello, "samples/hello:1");
    // Pulls go through a proxy of the test's own: it counts blob fetches and
    // holds the slow artifact's blob for twice the node grace period.
    let grace = Duration::from_secs(6);
    let proxy =
        common::registry::Proxy::start(&registry.addr, Some((slow_digest.clone(), 2 * grace)));
    let c = TestCluster::start_with(&[
        "--node-monitor-grace-period",
        "6s",
        "--node-status-update-frequency",
        "1s",
        // An empty socket turns container pods off: a Wasm-only node.
        "--containerd-socket",
        "",
    ]);
    let node = c.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let labels = c.kubectl_ok(&["get", "node", &node, "-o", "jsonpath={.metadata.labels}"]);
    assert!(
        labels.contains("runtime.weft.dev/wasmtime")
            && !labels.contains("runtime.weft.dev/containerd"),
        "{labels}"
    );
    let stalled_at = Instant::now();
    c.apply(&pod(
        "slow",
        &node,
        &format!("{}/samples/slow:1", proxy.addr),
    ));
    // Ten pods of one uncached artifact at once, while the slow pull hangs.
    let fast: Vec<String> = (0..10)
        .map(|i| {
            pod(
                &format!("fast-{i}"),
                &node,
                &format!("{}/samples/hello:1", proxy.addr),
            )
        })
        .collect();
    c.apply(&fast.join("---\n"));
    for i in 0..10 {
        ready_ip(&c, &format!("fast-{i}"));
    }
    assert!(
        stalled_at.elapsed() < 2 * grace,
        "the fast pods waited for the stalled pull: {:?}",
        stalled_at.elapsed()
    );
    assert_eq!(
        proxy.gets(&hello_digest),
        1,
        "ten pods, one fetch of their blob"
    );
    let waiting = "jsonpath={.status.containerStatuses[0].state.waiting.reason}";
    c.wait_until(
        &["get", "pod", "slow", "-o", waiting],
        Duration::from_secs(10),
        |r| r == "ContainerCreating",
    );
    // Past the grace period, with the pull still stalled: the Lease renewed,
    // so the node is Ready and untainted.
    std::thread::sleep((grace + Duration::from_secs(2)).saturating_sub(stalled_at.elapsed()));
    assert!(stalled_at.elapsed() < 2 * grace, "the stall is still on");
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints}";
    assert_eq!(c.kubectl_ok(&["get", "node", &node, "-o", ready]), "True ");
    assert_eq!(
        c.kubectl_ok(&["get", "pod", "slow", "-o", waiting]),
        "ContainerCreating"
    );
    // Then the pull completes and the pod runs.
    let ip = ready_ip(&c, "slow");
    assert!(stalled_at.elapsed() >= 2 * grace);
    assert_eq!(http_get(&format!("{ip}:8080"), "/").unwrap().1, "ok\n");
    assert_eq!(proxy.gets(&slow_digest), 1);
}
