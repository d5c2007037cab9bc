//! `meta.k8s.io/v1 Table` rendering for `kubectl get`: the columns
//! kube-apiserver prints, priority 1 for the `-o wide` extras.

use jiff::Timestamp;
use serde_json::{Value, json};

/// Whether a request's Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

/// Kubernetes' `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        return if dy == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{dy}d", h / 24 / 365)
        };
    }
    format!("{}y", h / 24 / 365)
}

fn age(ts: Option<&Value>, now: Timestamp) -> String {
    ts.and_then(Value::as_str)
        .and_then(|s| s.parse::<Timestamp>().ok())
        .map(|t| human_duration(now.as_second() - t.as_second()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

fn col(name: &str, ty: &str, priority: u8, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn containers_images(template_spec: &Value) -> (String, String) {
    let cs: Vec<&Value> = template_spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    (
        cs.iter()
            .map(|c| s(c, "/name"))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(c, "/image"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match s(e, "/operator") {
            "Exists" => s(e, "/key").to_string(),
            "DoesNotExist" => format!("!{}", s(e, "/key")),
            op => format!(
                "{} {} ({})",
                s(e, "/key"),
                op.to_lowercase(),
                vals.join(",")
            ),
        });
    }
    or_none(parts.join(","))
}

fn map_selector(sel: Option<&Value>) -> String {
    or_none(
        sel.and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn pod_status_reason(p: &Value) -> String {
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = s(p, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(p, "/status/phase").to_string();
    }
    for cs in p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(r) = cs
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = r.to_string();
        }
    }
    or_none(reason).replace("<none>", "Pending")
}

fn pod_cells(p: &Value, now: Timestamp) -> Vec<Value> {
    let statuses: Vec<&Value> = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let total = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
    let gates = p
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or("<none>".to_string(), |g| {
            let met = g
                .iter()
                .filter(|gate| {
                    let ty = s(gate, "/conditionType");
                    p.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|c| s(c, "/type") == ty && s(c, "/status") == "True")
                })
                .count();
            format!("{met}/{}", g.len())
        });
    vec![
        json!(s(p, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(pod_status_reason(p)),
        json!(restarts.to_string()),
        json!(age(p.pointer("/metadata/creationTimestamp"), now)),
        json!(or_none(s(p, "/status/podIP").to_string())),
        json!(or_none(s(p, "/spec/nodeName").to_string())),
        json!(or_none(s(p, "/status/nominatedNodeName").to_string())),
        json!(gates),
    ]
}

fn service_ports(svc: &Value) -> String {
    or_none(
        svc.pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let node_port = p
                    .get("nodePort")
                    .and_then(Value::as_i64)
                    .map(|np| format!(":{np}"))
                    .unwrap_or_default();
                format!("{}{node_port}/{}", n(p, "/port"), s(p, "/protocol"))
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| match s(c, "/status") {
            "True" => "Ready",
            _ => "NotReady",
        })
        .unwrap_or("Unknown");
    let mut out = ready.to_string();
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        out.push_str(",SchedulingDisabled");
    }
    out
}

fn node_roles(node: &Value) -> String {
    let roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    or_none(roles.join(","))
}

fn node_address(node: &Value, ty: &str) -> String {
    or_none(
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| s(a, "/type") == ty)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_default(),
    )
}

fn endpoints_summary(ep: &Value) -> String {
    let mut out = Vec::new();
    for subset in ep
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| n(p, "/port"))
            .collect();
        for a in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if ports.is_empty() {
                out.push(s(a, "/ip").to_string());
            }
            for p in &ports {
                out.push(format!("{}:{p}", s(a, "/ip")));
            }
        }
    }
    let more = out.len().saturating_sub(3);
    let mut shown = out.into_iter().take(3).collect::<Vec<_>>().join(",");
    if more > 0 {
        shown.push_str(&format!(" + {more} more..."));
    }
    or_none(shown)
}

fn event_object(e: &Value) -> String {
    format!(
        "{}/{}",
        s(e, "/involvedObject/kind").to_lowercase(),
        s(e, "/involvedObject/name")
    )
}

/// Column definitions and the cells of one object, per kind.
fn columns(kind: &str) -> Vec<Value> {
    // The `-o wide` columns every pod-template workload shares.
    let template_cols = [
        col(
            "Containers",
            "string",
            1,
            "Names of each container in the template.",
        ),
        col(
            "Images",
            "string",
            1,
            "Images referenced by each container in the template.",
        ),
        col("Selector", "string", 1, "Label selector for pods."),
    ];
    let with_template = |mut cols: Vec<Value>| {
        cols.extend(template_cols.iter().cloned());
        cols
    };
    let name = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age_col = col(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match kind {
        "Pod" => vec![
            name,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted.",
            ),
            age_col,
            col("IP", "string", 1, "IP address allocated to the pod."),
            col("Node", "string", 1, "Name of the Node this pod runs on."),
            col(
                "Nominated Node",
                "string",
                1,
                "Name of the Node nominated by the scheduler.",
            ),
            col("Readiness Gates", "string", 1, "Pod readiness gates."),
        ],
        "Deployment" => with_template(vec![
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age_col,
        ]),
        "ReplicaSet" => with_template(vec![
            name,
            col("Desired", "integer", 0, "Number of desired pods."),
            col("Current", "integer", 0, "Number of actual running pods."),
            col("Ready", "integer", 0, "Number of ready pods."),
            age_col,
        ]),
        "DaemonSet" => with_template(vec![
            name,
            col(
                "Desired",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod.",
            ),
            col(
                "Current",
                "integer",
                0,
                "The number of nodes running at least one daemon pod.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "The number of nodes running the daemon pod with a Ready condition.",
            ),
            col(
                "Up-to-date",
                "integer",
                0,
                "The number of nodes running the updated daemon pod.",
            ),
            col(
                "Available",
                "integer",
                0,
                "The number of nodes with an available daemon pod.",
            ),
            col(
                "Node Selector",
                "string",
                0,
                "Node selector of the pod template.",
            ),
            age_col,
        ]),
        "Service" => vec![
            name,
            col("Type", "string", 0, "The type of the service."),
            col("Cluster-IP", "string", 0, "The cluster IP of the service."),
            col("External-IP", "string", 0, "External IPs of the service."),
            col("Port(s)", "string", 0, "Ports exposed by the service."),
            age_col,
            col("Selector", "string", 1, "Pods selected by the service."),
        ],
        "Node" => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age_col,
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col("Internal-IP", "string", 1, "Internal IP of the node."),
            col("External-IP", "string", 1, "External IP of the node."),
            col("OS-Image", "string", 1, "OS image reported by the node."),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel version reported by the node.",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "Container runtime reported by the node.",
            ),
        ],
        "Namespace" => vec![
            name,
            col("Status", "string", 0, "The status of the namespace"),
            age_col,
        ],
        "ConfigMap" => vec![name, col("Data", "string", 0, "Number of keys."), age_col],
        "Secret" => vec![
            name,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "string", 0, "Number of items in the secret"),
            age_col,
        ],
        "ServiceAccount" => vec![
            name,
            col("Secrets", "string", 0, "Number of secrets."),
            age_col,
        ],
        "Endpoints" => vec![
            name,
            col("Endpoints", "string", 0, "Endpoints of the service."),
            age_col,
        ],
        "EndpointSlice" => vec![
            name,
            col("AddressType", "string", 0, "The type of addresses."),
            col("Ports", "string", 0, "Ports in the slice."),
            col("Endpoints", "string", 0, "Endpoint addresses."),
            age_col,
        ],
        "Job" => with_template(vec![
            name,
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The completion status of the job.",
            ),
            col(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            age_col,
        ]),
        "CronJob" => with_template(vec![
            name,
            col("Schedule", "string", 0, "The schedule."),
            col("Timezone", "string", 0, "The time zone."),
            col(
                "Suspend",
                "boolean",
                0,
                "Whether the cron job is suspended.",
            ),
            col("Active", "integer", 0, "Active jobs."),
            col("Last Schedule", "string", 0, "When the job last ran."),
            age_col,
        ]),
        "Lease" => vec![
            name,
            col("Holder", "string", 0, "The holder of the lease."),
            age_col,
        ],
        "RuntimeClass" => vec![
            name,
            col("Handler", "string", 0, "The runtime handler."),
            age_col,
        ],
        "Event" => vec![
            col("Last Seen", "string", 0, "Time of the last occurrence."),
            col("Type", "string", 0, "Type of this event."),
            col("Reason", "string", 0, "Why the event happened."),
            col("Object", "string", 0, "The object the event is about."),
            col(
                "Subobject",
                "string",
                1,
                "The part of the object the event is about.",
            ),
            col("Source", "string", 1, "The component reporting the event."),
            col("Message", "string", 0, "A human-readable description."),
            col("First Seen", "string", 1, "Time of the first occurrence."),
            col("Count", "string", 1, "How many times it occurred."),
            col("Name", "string", 1, "The event's name."),
        ],
        _ => vec![name, age_col],
    }
}

fn cells(kind: &str, o: &Value, now: Timestamp) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let a = json!(age(o.pointer("/metadata/creationTimestamp"), now));
    let tspec = o
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    let (cs, imgs) = containers_images(&tspec);
    let sel = selector_string(o.pointer("/spec/selector"));
    match kind {
        "Pod" => pod_cells(o, now),
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                n(o, "/spec/replicas")
            )),
            json!(n(o, "/status/updatedReplicas")),
            json!(n(o, "/status/availableReplicas")),
            a,
            json!(cs),
            json!(imgs),
            json!(sel),
        ],
        "ReplicaSet" => vec![
            name,
            json!(n(o, "/spec/replicas")),
            json!(n(o, "/status/replicas")),
            json!(n(o, "/status/readyReplicas")),
            a,
            json!(cs),
            json!(imgs),
            json!(sel),
        ],
        "DaemonSet" => vec![
            name,
            json!(n(o, "/status/desiredNumberScheduled")),
            json!(n(o, "/status/currentNumberScheduled")),
            json!(n(o, "/status/numberReady")),
            json!(n(o, "/status/updatedNumberScheduled")),
            json!(n(o, "/status/numberAvailable")),
            json!(map_selector(o.pointer("/spec/template/spec/nodeSelector"))),
            a,
            json!(cs),
            json!(imgs),
            json!(sel),
        ],
        "Service" => {
            let ty = s(o, "/spec/type");
            let external = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|i| i.iter().map(|x| s(x, "/ip")).collect::<Vec<_>>().join(","))
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| {
                    if ty == "LoadBalancer" {
                        "<pending>".into()
                    } else {
                        "<none>".into()
                    }
                });
            vec![
                name,
                json!(ty),
                json!(or_none(s(o, "/spec/clusterIP").to_string())),
                json!(external),
                json!(service_ports(o)),
                a,
                json!(map_selector(o.pointer("/spec/selector"))),
            ]
        }
        "Node" => vec![
            name,
            json!(node_status(o)),
            json!(node_roles(o)),
            a,
            json!(s(o, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(o, "InternalIP")),
            json!(node_address(o, "ExternalIP")),
            json!(or_none(s(o, "/status/nodeInfo/osImage").into())),
            json!(or_none(s(o, "/status/nodeInfo/kernelVersion").into())),
            json!(or_none(
                s(o, "/status/nodeInfo/containerRuntimeVersion").into()
            )),
        ],
        "Namespace" => vec![name, json!(s(o, "/status/phase")), a],
        "ConfigMap" => {
            let count = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(count.to_string()), a]
        }
        "Secret" => vec![
            name,
            json!(s(o, "/type")),
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
                    .to_string()
            ),
            a,
        ],
        "ServiceAccount" => vec![
            name,
            json!(
                o.get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string()
            ),
            a,
        ],
        "Endpoints" => vec![name, json!(endpoints_summary(o)), a],
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| n(p, "/port").to_string())
                .collect();
            let addrs: Vec<&str> = o
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                })
                .collect();
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(or_none(ports.join(","))),
                json!(or_none(addrs.join(","))),
                a,
            ]
        }
        "Job" => {
            let completions = o
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .map_or_else(|| "1".into(), |c| c.to_string());
            let conditions: Vec<&Value> = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect();
            let has = |t: &str| {
                conditions
                    .iter()
                    .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let start = o
                .pointer("/status/startTime")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok());
            let end = o
                .pointer("/status/completionTime")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(now);
            let duration = start
                .map(|st| human_duration(end.as_second() - st.as_second()))
                .unwrap_or_default();
            vec![
                name,
                json!(status),
                json!(format!("{}/{completions}", n(o, "/status/succeeded"))),
                json!(duration),
                a,
                json!(cs),
                json!(imgs),
                json!(sel),
            ]
        }
        "CronJob" => {
            let jt = o
                .pointer("/spec/jobTemplate/spec/template/spec")
                .cloned()
                .unwrap_or(Value::Null);
            let (cs, imgs) = containers_images(&jt);
            let last =
                age(o.pointer("/status/lastScheduleTime"), now).replace("<unknown>", "<none>");
            vec![
                name,
                json!(s(o, "/spec/schedule")),
                json!(or_none(s(o, "/spec/timeZone").into())),
                json!(
                    o.pointer("/spec/suspend")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                ),
                json!(
                    o.pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                ),
                json!(last),
                a,
                json!(cs),
                json!(imgs),
                json!(selector_string(
                    o.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        "Lease" => vec![name, json!(s(o, "/spec/holderIdentity")), a],
        "RuntimeClass" => vec![name, json!(s(o, "/handler")), a],
        "Event" => {
            let last = o
                .get("lastTimestamp")
                .filter(|v| !v.is_null())
                .or_else(|| o.get("eventTime"))
                .or_else(|| o.pointer("/metadata/creationTimestamp"));
            let first = o
                .get("firstTimestamp")
                .filter(|v| !v.is_null())
                .or_else(|| o.get("eventTime"));
            let source = s(o, "/source/component").to_string();
            let source = if source.is_empty() {
                s(o, "/reportingComponent").to_string()
            } else {
                source
            };
            vec![
                json!(age(last, now)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(event_object(o)),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(o, "/message")),
                json!(age(first, now)),
                json!(
                    o.get("count")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                        .to_string()
                ),
                json!(s(o, "/metadata/name")),
            ]
        }
        _ => vec![name, a],
    }
}

/// Row object for `includeObject`: full, metadata only (default), or none.
fn row_object(o: &Value, include: &str) -> Value {
    match include {
        "Object" => o.clone(),
        "None" => Value::Null,
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
        }
    }
}

/// A Table of `objects`.
pub fn render(
    kind: &str,
    objects: &[&Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include: &str,
    with_columns: bool,
) -> Value {
    let now = Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": cells(kind, o, now), "object": row_object(o, include)}))
        .collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    let mut t =
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": rows});
    if with_columns {
        t["columnDefinitions"] = Value::Array(columns(kind));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn every_kind_has_one_cell_per_column() {
        let o = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        for r in weft_api::RESOURCES {
            assert_eq!(
                columns(r.kind).len(),
                cells(r.kind, &o, Timestamp::now()).len(),
                "{}",
                r.kind
            );
        }
    }

    #[test]
    fn pod_row() {
        let p = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "127.1.0.5",
                       "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = render("Pod", &[&p], "7", None, "Metadata", true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "127.1.0.5");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
