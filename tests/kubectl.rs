//! Real kubectl against a real `weft up`: the flows users run first.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use common::TestCluster;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: REPLICAS
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: IMAGE
        ports:
        - containerPort: 8080
"#;

fn deployment(replicas: u32, image: &str) -> String {
    DEPLOYMENT
        .replace("REPLICAS", &replicas.to_string())
        .replace("IMAGE", image)
}

#[test]
fn cluster_info_api_resources_and_health() {
    let c = TestCluster::start();
    let info = c.kubectl_ok(&["cluster-info"]);
    assert!(
        info.contains("is running at") && info.contains(&c.url),
        "{info}"
    );
    let resources = c.kubectl_ok(&["api-resources"]);
    for needle in [
        "deployments",
        "deploy",
        "apps/v1",
        "pods",
        "po",
        "endpointslices",
        "runtimeclasses",
        "leases",
    ] {
        assert!(
            resources.contains(needle),
            "api-resources lacks {needle}:\n{resources}"
        );
    }
    assert_eq!(c.kubectl_ok(&["get", "--raw=/healthz"]).trim(), "ok");
    let version = c.kubectl_ok(&["version", "-o", "json"]);
    assert!(version.contains("\"minor\": \"32\""), "{version}");
}

#[test]
fn apply_create_then_reapply_with_a_change() {
    let c = TestCluster::start();
    let out = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &deployment(2, "registry.local/hello:1"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deployment.apps/web created"
    );

    let out = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &deployment(3, "registry.local/hello:2"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deployment.apps/web configured"
    );
    let got = c.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.metadata.generation}"]);
    assert_eq!(got, "3 registry.local/hello:2 2");

    // Re-applying the same manifest changes nothing.
    let out = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &deployment(3, "registry.local/hello:2"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deployment.apps/web unchanged"
    );

    // Strict validation reaches the server: an unknown field is refused, naming it.
    let bad = deployment(1, "x").replace("replicas: 1", "replicas: 1\n  bogusField: true");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogusField"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn get_wide_yaml_and_watch() {
    let c = TestCluster::start();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, labels: {app: demo}}\nspec:\n  containers: [{name: c, image: hello.wasm}]\n";
    assert!(c.kubectl_stdin(&["apply", "-f", "-"], pod).status.success());

    let wide = c.kubectl_ok(&["get", "pods", "-o", "wide"]);
    let header = wide.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED NODE",
        "READINESS GATES",
    ] {
        assert!(header.contains(col), "missing {col} in {header:?}");
    }
    assert!(
        wide.contains("p1") && wide.contains("0/1") && wide.contains("Pending"),
        "{wide}"
    );
    let narrow = c.kubectl_ok(&["get", "pods"]);
    assert!(
        !narrow.lines().next().unwrap_or_default().contains("NODE"),
        "priority-1 columns hidden without -o wide: {narrow}"
    );

    let yaml = c.kubectl_ok(&["get", "pod", "p1", "-o", "yaml"]);
    for needle in [
        "kind: Pod",
        "restartPolicy: Always",
        "imagePullPolicy: Always",
        "phase: Pending",
        "uid:",
        "creationTimestamp:",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
    }

    // `get -w` prints the list, then a row for each change, over one open stream.
    let mut w = c.kubectl_spawn(&["get", "pods", "-w"]);
    let (tx, rx) = mpsc::channel();
    let stdout = w.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watch header");
    assert!(first.starts_with("NAME"), "{first}");
    let pod2 = pod.replace("p1", "p2");
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], &pod2)
            .status
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline && !seen.iter().any(|l: &String| l.starts_with("p2"))
    {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(l);
        }
    }
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        seen.iter().any(|l| l.starts_with("p2")),
        "watch never showed p2: {seen:?}"
    );
}

#[test]
fn create_generators_send_protobuf() {
    let c = TestCluster::start();
    assert_eq!(
        c.kubectl_ok(&[
            "create",
            "configmap",
            "demo-config",
            "--from-literal=env=prod"
        ])
        .trim(),
        "configmap/demo-config created"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "configmap",
            "demo-config",
            "-o",
            "jsonpath={.data.env}"
        ]),
        "prod"
    );
    let yaml = c.kubectl_ok(&["get", "configmap", "demo-config", "-o", "yaml"]);
    assert!(
        !yaml.contains("generateName"),
        "empty protobuf strings must not leak: {yaml}"
    );

    assert!(
        c.kubectl_ok(&["create", "namespace", "team-a"])
            .contains("namespace/team-a created")
    );
    assert!(
        c.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=k=v",
            "-n",
            "team-a"
        ])
        .contains("secret/s1 created")
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "secret",
            "s1",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "dg=="
    );
    assert!(
        c.kubectl_ok(&[
            "create",
            "deployment",
            "d1",
            "--image=registry.local/hello:1",
            "--replicas=2",
            "--port=8080"
        ])
        .contains("deployment.apps/d1 created")
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deploy",
            "d1",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}"
        ]),
        "2 8080"
    );
    assert!(
        c.kubectl_ok(&["create", "service", "clusterip", "svc1", "--tcp=80:8080"])
            .contains("service/svc1 created")
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "svc",
            "svc1",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "8080"
    );
    assert!(
        c.kubectl_ok(&["create", "job", "j1", "--image=registry.local/job:1"])
            .contains("job.batch/j1 created")
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "job",
            "j1",
            "-o",
            "jsonpath={.spec.template.spec.restartPolicy}"
        ]),
        "Never"
    );

    // A missing namespace is a NotFound naming it.
    let out = c.kubectl(&[
        "create",
        "configmap",
        "x",
        "--from-literal=a=b",
        "-n",
        "nope",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("namespaces \"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node of `weft up` sits beside a control-plane member and carries
/// its role (as k3s servers' nodes do) and the labels of `--node-labels`.
#[test]
fn control_plane_node_has_its_role_and_labels() {
    let c = TestCluster::start_with(&["--node-name", "node-1", "--node-labels", "tier=edge,zone="]);
    let names = c.wait_until(
        &[
            "get",
            "nodes",
            "-l",
            "node-role.kubernetes.io/control-plane=true",
            "-o",
            "name",
        ],
        Duration::from_secs(30),
        |out| !out.trim().is_empty(),
    );
    assert_eq!(names.trim(), "node/node-1");
    let got = c.kubectl_ok(&["get", "node", "node-1", "-o", "jsonpath={.metadata.labels.tier}/{.metadata.labels.zone}/{.metadata.labels.kubernetes\\.io/hostname}"]);
    assert_eq!(got, "edge//node-1");
    let table = c.kubectl_ok(&["get", "node", "node-1", "--no-headers"]);
    assert_eq!(
        table.split_whitespace().nth(2),
        Some("control-plane"),
        "{table}"
    );
}

#[test]
fn label_and_taint_a_node() {
    let c = TestCluster::start();
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n";
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], node)
            .status
            .success()
    );
    assert_eq!(
        c.kubectl_ok(&["label", "node", "node1", "env=production"])
            .trim(),
        "node/node1 labeled"
    );
    assert_eq!(
        c.kubectl_ok(&["taint", "nodes", "node1", "dedicated=database:NoSchedule"])
            .trim(),
        "node/node1 tainted"
    );
    let got = c.kubectl_ok(&["get", "node", "node1", "-o", "jsonpath={.metadata.labels.env} {.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}"]);
    assert_eq!(got, "production dedicated=database:NoSchedule");
    // Removing the taint (the `-` form) goes through the same patch path.
    assert!(
        c.kubectl_ok(&["taint", "nodes", "node1", "dedicated:NoSchedule-"])
            .contains("untainted")
    );
    assert_eq!(
        c.kubectl_ok(&["get", "node", "node1", "-o", "jsonpath={.spec.taints}"]),
        ""
    );
    let nodes = c.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        nodes
            .lines()
            .next()
            .unwrap_or_default()
            .contains("INTERNAL-IP"),
        "{nodes}"
    );
}

#[test]
fn scale_and_delete() {
    let c = TestCluster::start();
    assert!(
        c.kubectl_stdin(
            &["apply", "-f", "-"],
            &deployment(1, "registry.local/hello:1")
        )
        .status
        .success()
    );
    assert_eq!(
        c.kubectl_ok(&["scale", "deployment", "web", "--replicas=5"])
            .trim(),
        "deployment.apps/web scaled"
    );
    assert_eq!(
        c.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );

    c.kubectl_ok(&["create", "configmap", "doomed", "--from-literal=a=b"]);
    assert_eq!(
        c.kubectl_ok(&["delete", "configmap", "doomed"]).trim(),
        "configmap \"doomed\" deleted"
    );
    let out = c.kubectl(&["get", "configmap", "doomed"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("configmaps \"doomed\" not found"));
    assert!(
        c.kubectl_ok(&["delete", "deployment", "web"])
            .contains("deleted")
    );
    assert!(
        c.kubectl_ok(&["get", "deployments"]).is_empty(),
        "no deployments remain"
    );
}

#[test]
fn events_sorted_by_creation() {
    let c = TestCluster::start();
    let event = |name: &str, reason: &str| {
        format!(
            "apiVersion: v1\nkind: Event\nmetadata: {{name: {name}}}\ninvolvedObject: {{kind: Pod, name: p1, namespace: default}}\nreason: {reason}\nmessage: {reason} happened\ntype: Normal\nsource: {{component: test}}\n"
        )
    };
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], &event("ev-b", "Second"))
            .status
            .success()
    );
    // creationTimestamp has one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        c.kubectl_stdin(&["apply", "-f", "-"], &event("ev-a", "Third"))
            .status
            .success()
    );
    let out = c.kubectl_ok(&["get", "events", "--sort-by=.metadata.creationTimestamp"]);
    let header = out.lines().next().unwrap_or_default();
    for col in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(col), "{header}");
    }
    let second = out.find("Second").expect("first event listed");
    let third = out.find("Third").expect("second event listed");
    assert!(second < third, "events not in creation order:\n{out}");
    assert!(out.contains("pod/p1"), "{out}");
}
