//! Controllers end to end with real kubectl: Deployments that heal, roll
//! out and roll back; node failure and eviction; DaemonSets; Jobs and
//! CronJobs running Wasm commands; namespace cleanup.

mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;

use std::time::Duration;

use common::TestCluster;
use common::registry::Registry;

const MINUTE: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: u32, image: &str, pod_extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      runtimeClassName: wasm\n{pod_extra}      containers:\n      - name: app\n        image: {image}\n        ports: [{{containerPort: 8080}}]\n"
    )
}

/// Names of the running, not terminating, ready pods with this label.
fn ready_pods(c: &TestCluster, selector: &str) -> Vec<String> {
    let out = c.kubectl_ok(&["get", "pods", "-l", selector, "-o",
        "jsonpath={range .items[*]}{.metadata.name},{.metadata.deletionTimestamp},{.status.conditions[?(@.type==\"Ready\")].status},{.spec.nodeName}{\"\\n\"}{end}"]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() == 4 && f[1].is_empty() && f[2] == "True")
                .then(|| format!("{}@{}", f[0], f[3]))
        })
        .collect()
}

fn rollout_status(c: &TestCluster, what: &str) {
    let out = c.kubectl(&["rollout", "status", what, "--timeout=60s"]);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"),
        "rollout status {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deployments_heal_roll_out_roll_back_and_namespaces_empty() {
    let registry = Registry::start();
    let v1 = common::push(&registry, &guests::sample("hello"), "samples/hello:1");
    let v2 = common::push(&registry, &guests::sample("hello"), "samples/hello:2");
    let c = TestCluster::with_nodes(3, &[]);

    c.apply(&deployment("web", 3, &v1, ""));
    rollout_status(&c, "deployment/web");
    let before = ready_pods(&c, "app=web");
    assert_eq!(before.len(), 3, "{before:?}");

    // A deleted pod is replaced.
    let victim = before[0].split('@').next().unwrap().to_string();
    c.kubectl_ok(&["delete", "pod", &victim, "--wait=false"]);
    c.wait_until(
        &["get", "pods", "-l", "app=web", "-o", "name"],
        MINUTE,
        |o| !o.contains(&format!("pod/{victim}\n")) || o.is_empty(),
    );
    let after = c.wait_until(
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        MINUTE,
        |o| o == "3",
    );
    assert_eq!(after, "3");
    assert!(
        !ready_pods(&c, "app=web")
            .iter()
            .any(|p| p.starts_with(&format!("{victim}@")))
    );

    // A rolling image update completes, then rolls back.
    c.kubectl_ok(&["set", "image", "deployment/web", &format!("app={v2}")]);
    rollout_status(&c, "deployment/web");
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ]),
        "2"
    );
    let images = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert!(images.split_whitespace().all(|i| i == v2), "{images}");
    assert_eq!(
        c.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"])
            .lines()
            .count(),
        2,
        "old ReplicaSet kept for history"
    );
    let undo = c.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    assert!(undo.contains("rolled back"), "{undo}");
    rollout_status(&c, "deployment/web");
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        v1
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ]),
        "3"
    );
    c.wait_until(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
        MINUTE,
        |o| o.split_whitespace().count() == 3 && o.split_whitespace().all(|i| i == v1),
    );

    // Scale through the scale subresource.
    c.kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    c.wait_until(
        &["get", "pods", "-l", "app=web", "-o", "name"],
        MINUTE,
        |o| o.lines().count() == 1,
    );

    // Events record what the controllers did.
    let events = c.kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
    for reason in ["ScalingReplicaSet", "SuccessfulCreate", "Scheduled"] {
        assert!(events.contains(reason), "no {reason} event in {events}");
    }

    // Deleting a namespace empties it, then removes it.
    c.kubectl_ok(&["create", "namespace", "scratch"]);
    c.apply(&deployment("web", 2, &v1, "").replace(
        "metadata: {name: web}",
        "metadata: {name: web, namespace: scratch}",
    ));
    c.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "scratch",
        "--from-literal=a=b",
    ]);
    c.wait_until(
        &["get", "pods", "-n", "scratch", "-o", "name"],
        MINUTE,
        |o| o.lines().count() == 2,
    );
    let del = c.kubectl(&["delete", "namespace", "scratch", "--timeout=60s"]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    let gone = c.kubectl(&["get", "namespace", "scratch"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
}

#[test]
fn node_failure_evicts_and_daemonsets_cover_every_node() {
    let registry = Registry::start();
    let image = common::push(&registry, &guests::sample("hello"), "samples/hello:1");
    let mut c = TestCluster::with_nodes(3, &["--node-monitor-grace-period", "4s"]);

    // A DaemonSet covers every node, and a node that joins later gets its pod.
    let ds = format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      runtimeClassName: wasm\n      containers:\n      - name: app\n        image: {image}\n"
    );
    c.apply(&ds);
    let on = |c: &TestCluster| {
        let mut n: Vec<String> = ready_pods(c, "app=agent")
            .iter()
            .map(|p| p.split('@').nth(1).unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    c.wait_until(
        &[
            "get",
            "daemonset",
            "agent",
            "-o",
            "jsonpath={.status.numberReady}",
        ],
        MINUTE,
        |o| o == "3",
    );
    assert_eq!(on(&c), vec!["node-1", "node-2", "node-3"]);
    c.add_node("node-4");
    c.wait_until(
        &[
            "get",
            "daemonset",
            "agent",
            "-o",
            "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}",
        ],
        MINUTE,
        |o| o == "4/4",
    );
    assert_eq!(on(&c), vec!["node-1", "node-2", "node-3", "node-4"]);

    // Pods that tolerate an unreachable node for 2 s, spread over the nodes.
    let tolerate = "      tolerations:\n      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}\n";
    c.apply(&deployment("web", 4, &image, tolerate));
    rollout_status(&c, "deployment/web");
    let placed = ready_pods(&c, "app=web");
    assert!(
        placed.iter().any(|p| p.ends_with("@node-4")),
        "spread puts one on node-4: {placed:?}"
    );

    // node-4's agent dies: the node goes Unknown and tainted, its pod is evicted and replaced elsewhere.
    c.kill_node("node-4");
    c.wait_until(
        &[
            "get",
            "node",
            "node-4",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        MINUTE,
        |o| o == "Unknown",
    );
    let taints = c.kubectl_ok(&[
        "get",
        "node",
        "node-4",
        "-o",
        "jsonpath={.spec.taints[*].key}",
    ]);
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    c.wait_until(
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        MINUTE,
        |_| {
            let pods = ready_pods(&c, "app=web");
            pods.len() == 4 && pods.iter().all(|p| !p.ends_with("@node-4"))
        },
    );
    let events = c.kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
    assert!(events.contains("NodeNotReady"), "{events}");
}

#[test]
fn jobs_complete_fail_and_cronjobs_fire() {
    let registry = Registry::start();
    let image = common::push(&registry, &guests::sample("job"), "samples/job:1");
    let c = TestCluster::with_nodes(3, &[]);
    let job = |name: &str, extra_env: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  completions: 3\n  parallelism: 2\n  backoffLimit: 1\n  template:\n    spec:\n      runtimeClassName: wasm\n      restartPolicy: Never\n      containers:\n      - name: step\n        image: {image}\n        args: [\"--item\", \"x\"]\n{extra_env}"
        )
    };
    c.apply(&job("batch", ""));
    let done = c.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/batch",
        "--timeout=60s",
    ]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        c.kubectl_ok(&["get", "job", "batch", "-o", "jsonpath={.status.succeeded}"]),
        "3"
    );
    let phases = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "job-name=batch",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(
        phases
            .split_whitespace()
            .filter(|p| *p == "Succeeded")
            .count(),
        3,
        "{phases}"
    );
    let exit = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "job-name=batch",
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].state.terminated.reason}",
    ]);
    assert_eq!(exit, "Completed");

    // Exit code 3 on every try: two failures exceed backoffLimit 1.
    c.apply(&job(
        "broken",
        "        env: [{name: EXIT_CODE, value: \"3\"}]\n",
    ));
    let failed = c.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/broken",
        "--timeout=60s",
    ]);
    assert!(
        failed.status.success(),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "job",
            "broken",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}"
        ]),
        "BackoffLimitExceeded"
    );
    // wasi:cli 0.2's exit carries only success or failure, so code 3 reads as 1.
    let term = c.kubectl_ok(&["get", "pods", "-l", "job-name=broken", "-o", "jsonpath={.items[0].status.containerStatuses[0].state.terminated.exitCode} {.items[0].status.phase}"]);
    assert_eq!(term, "1 Failed");

    // A CronJob every minute creates a Job that completes.
    c.apply(&format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: tick}}\nspec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          runtimeClassName: wasm\n          restartPolicy: Never\n          containers:\n          - name: step\n            image: {image}\n"
    ));
    let owned = c.wait_until(&["get", "jobs", "-o", "jsonpath={range .items[*]}{.metadata.ownerReferences[0].name}:{.status.succeeded}{\"\\n\"}{end}"], Duration::from_secs(90), |o| o.lines().any(|l| l == "tick:1"));
    assert!(owned.contains("tick:1"));
    assert!(
        !c.kubectl_ok(&[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.lastScheduleTime}"
        ])
        .is_empty()
    );
}
