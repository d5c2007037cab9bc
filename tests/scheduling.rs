//! The scheduler end to end: three node agents on loopback, real kubectl,
//! and the hello Wasm sample from a loopback registry.

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::time::Duration;

use common::TestCluster;
use common::registry::Registry;

/// Phases of the pods matching `selector`, one word each.
fn phases(c: &TestCluster, selector: &str) -> Vec<String> {
    c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={.items[*].status.phase}",
    ])
    .split_whitespace()
    .map(String::from)
    .collect()
}

fn pod(name: &str, image: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{test: {name}}}}}\nspec:\n  runtimeClassName: wasm\n{spec_extra}  containers:\n  - name: app\n    image: {image}\n    ports: [{{containerPort: 8080}}]\n"
    )
}

/// Waits for pod `name` to stay Pending with exactly `message` as its scheduling failure.
fn assert_unschedulable(c: &TestCluster, name: &str, message: &str) {
    c.wait_until(
        &[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        Duration::from_secs(30),
        |m| m == message,
    );
    let describe = c.kubectl_ok(&["describe", "pod", name]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    assert!(describe.contains(message), "{describe}");
    assert_eq!(
        c.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );
}

#[test]
fn placement_follows_affinity_taints_selectors_and_resources() {
    let registry = Registry::start();
    let image = common::push(&registry, &guests::sample("hello"), "samples/hello:1");
    let c = TestCluster::with_nodes(3, &[]);

    // Required anti-affinity on hostname: one per node, the other three wait.
    c.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: spread}}\nspec:\n  replicas: 6\n  selector: {{matchLabels: {{app: spread}}}}\n  template:\n    metadata: {{labels: {{app: spread}}}}\n    spec:\n      runtimeClassName: wasm\n      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {{matchLabels: {{app: spread}}}}\n            topologyKey: kubernetes.io/hostname\n      containers:\n      - name: app\n        image: {image}\n        ports: [{{containerPort: 8080}}]\n"
    ));
    c.wait_until(
        &[
            "get",
            "pods",
            "-l",
            "app=spread",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        Duration::from_secs(60),
        |out| {
            let p: Vec<&str> = out.split_whitespace().collect();
            p.len() == 6
                && p.iter().filter(|x| **x == "Running").count() == 3
                && p.iter().filter(|x| **x == "Pending").count() == 3
        },
    );
    let nodes = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=spread",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    let mut nodes: Vec<&str> = nodes.split_whitespace().collect();
    nodes.sort();
    assert_eq!(
        nodes,
        vec!["node-1", "node-2", "node-3"],
        "one replica per host"
    );
    let pending = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=spread",
        "--field-selector",
        "status.phase=Pending",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    for name in pending.split_whitespace() {
        assert_unschedulable(
            &c,
            name,
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
        );
    }
    // Deleting the Deployment cascades to its ReplicaSet and pods.
    c.kubectl_ok(&["delete", "deployment", "spread"]);
    c.wait_until(
        &["get", "replicasets,pods", "-l", "app=spread", "-o", "name"],
        Duration::from_secs(60),
        |o| o.trim().is_empty(),
    );

    // Taints with tolerations, and node selectors.
    c.kubectl_ok(&["taint", "nodes", "node-2", "dedicated=database:NoSchedule"]);
    c.kubectl_ok(&["label", "nodes", "node-3", "disk=ssd"]);
    c.apply(&pod("tolerant", &image, "  nodeSelector: {kubernetes.io/hostname: node-2}\n  tolerations:\n  - {key: dedicated, operator: Equal, value: database, effect: NoSchedule}\n"));
    c.apply(&pod("ssd", &image, "  nodeSelector: {disk: ssd}\n"));
    c.apply(&pod(
        "intolerant",
        &image,
        "  nodeSelector: {kubernetes.io/hostname: node-2}\n",
    ));
    for (name, node) in [("tolerant", "node-2"), ("ssd", "node-3")] {
        c.wait_until(
            &[
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.spec.nodeName} {.status.phase}",
            ],
            Duration::from_secs(30),
            |o| o == format!("{node} Running"),
        );
    }
    assert_unschedulable(
        &c,
        "intolerant",
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: database}, 2 node(s) didn't match Pod's node affinity/selector.",
    );
    // Removing the taint lets the waiting pod in.
    c.kubectl_ok(&["taint", "nodes", "node-2", "dedicated=database:NoSchedule-"]);
    c.wait_until(
        &[
            "get",
            "pod",
            "intolerant",
            "-o",
            "jsonpath={.spec.nodeName}",
        ],
        Duration::from_secs(30),
        |o| o == "node-2",
    );

    // Requests no node can meet.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: huge}}\nspec:\n  runtimeClassName: wasm\n  containers:\n  - name: app\n    image: {image}\n    resources: {{requests: {{cpu: \"100\"}}}}\n"
    ));
    assert_unschedulable(&c, "huge", "0/3 nodes are available: 3 Insufficient cpu.");
    assert_eq!(phases(&c, "test=tolerant"), vec!["Running"]);
}
