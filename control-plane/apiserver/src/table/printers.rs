//! One printer per kind: its columns and the cells of one object side by
//! side, as kube-apiserver's printers (pkg/printers/internalversion) have
//! them. Adding a kind is one entry in [`PRINTERS`].

use jiff::Timestamp;
use serde_json::{Value, json};

use super::format::{
    containers_images, endpoints_summary, event_object, map_selector, node_address, node_roles,
    node_status, pod_cidrs, pod_status_reason, selector_string, service_ports,
};
use super::{Col, age, col, human_duration, n, or_none, s};

/// Where a pod-template workload keeps its template: its printer ends with
/// the `-o wide` Containers, Images and Selector columns they all share.
pub(super) struct Template {
    spec: &'static str,
    selector: &'static str,
}

pub(super) struct Printer {
    pub kind: &'static str,
    /// The kind's own columns; a template's wide columns follow them.
    own: &'static [Col],
    own_cells: fn(&Value, Timestamp) -> Vec<Value>,
    pub template: Option<Template>,
}

impl Printer {
    pub fn columns(&self) -> Vec<&'static Col> {
        let wide: &'static [Col] = if self.template.is_some() {
            TEMPLATE
        } else {
            &[]
        };
        self.own.iter().chain(wide).collect()
    }

    pub fn cells(&self, o: &Value, now: Timestamp) -> Vec<Value> {
        let mut cells = (self.own_cells)(o, now);
        if let Some(t) = &self.template {
            let spec = o.pointer(t.spec).unwrap_or(&Value::Null);
            let (containers, images) = containers_images(spec);
            cells.extend([
                json!(containers),
                json!(images),
                json!(selector_string(o.pointer(t.selector))),
            ]);
        }
        cells
    }
}

/// The printer of `kind`; kinds without one print Name and Age.
pub(super) fn of(kind: &str) -> &'static Printer {
    PRINTERS.iter().find(|p| p.kind == kind).unwrap_or(&DEFAULT)
}

const NAME: Col = col(
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
const AGE: Col = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
const TEMPLATE: &[Col] = &[
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
const POD_TEMPLATE: Option<Template> = Some(Template {
    spec: "/spec/template/spec",
    selector: "/spec/selector",
});

static DEFAULT: Printer = Printer {
    kind: "",
    own: &[NAME, AGE],
    own_cells: |o, now| vec![name(o), created(o, now)],
    template: None,
};

pub(super) static PRINTERS: &[Printer] = &[
    Printer {
        kind: "Pod",
        own: &[
            NAME,
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
            AGE,
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
        own_cells: pod_cells,
        template: None,
    },
    Printer {
        kind: "Deployment",
        own: &[
            NAME,
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
            AGE,
        ],
        own_cells: |o, now| {
            vec![
                name(o),
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                )),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                created(o, now),
            ]
        },
        template: POD_TEMPLATE,
    },
    Printer {
        kind: "ReplicaSet",
        own: &[
            NAME,
            col("Desired", "integer", 0, "Number of desired pods."),
            col("Current", "integer", 0, "Number of actual running pods."),
            col("Ready", "integer", 0, "Number of ready pods."),
            AGE,
        ],
        own_cells: |o, now| {
            vec![
                name(o),
                json!(n(o, "/spec/replicas")),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                created(o, now),
            ]
        },
        template: POD_TEMPLATE,
    },
    Printer {
        kind: "DaemonSet",
        own: &[
            NAME,
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
            AGE,
        ],
        own_cells: |o, now| {
            vec![
                name(o),
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(map_selector(o.pointer("/spec/template/spec/nodeSelector"))),
                created(o, now),
            ]
        },
        template: POD_TEMPLATE,
    },
    Printer {
        kind: "Service",
        own: &[
            NAME,
            col("Type", "string", 0, "The type of the service."),
            col("Cluster-IP", "string", 0, "The cluster IP of the service."),
            col("External-IP", "string", 0, "External IPs of the service."),
            col("Port(s)", "string", 0, "Ports exposed by the service."),
            AGE,
            col("Selector", "string", 1, "Pods selected by the service."),
        ],
        own_cells: service_cells,
        template: None,
    },
    Printer {
        kind: "Node",
        own: &[
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
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
            // Weft's own (Kubernetes has no such column): where each
            // node's pod IPs come from, next to its address.
            col(
                "Pod-CIDRs",
                "string",
                1,
                "The pod IP ranges allocated to the node.",
            ),
        ],
        own_cells: |o, now| {
            vec![
                name(o),
                json!(node_status(o)),
                json!(node_roles(o)),
                created(o, now),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(node_address(o, "InternalIP")),
                json!(node_address(o, "ExternalIP")),
                json!(or_none(s(o, "/status/nodeInfo/osImage").into())),
                json!(or_none(s(o, "/status/nodeInfo/kernelVersion").into())),
                json!(or_none(
                    s(o, "/status/nodeInfo/containerRuntimeVersion").into()
                )),
                json!(or_none(pod_cidrs(o))),
            ]
        },
        template: None,
    },
    Printer {
        kind: "Namespace",
        own: &[
            NAME,
            col("Status", "string", 0, "The status of the namespace"),
            AGE,
        ],
        own_cells: |o, now| vec![name(o), json!(s(o, "/status/phase")), created(o, now)],
        template: None,
    },
    Printer {
        kind: "ConfigMap",
        own: &[NAME, col("Data", "string", 0, "Number of keys."), AGE],
        own_cells: |o, now| {
            let count = len_object(o, "data") + len_object(o, "binaryData");
            vec![name(o), json!(count.to_string()), created(o, now)]
        },
        template: None,
    },
    Printer {
        kind: "Secret",
        own: &[
            NAME,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "string", 0, "Number of items in the secret"),
            AGE,
        ],
        own_cells: |o, now| {
            vec![
                name(o),
                json!(s(o, "/type")),
                json!(len_object(o, "data").to_string()),
                created(o, now),
            ]
        },
        template: None,
    },
    Printer {
        kind: "ServiceAccount",
        own: &[NAME, col("Secrets", "string", 0, "Number of secrets."), AGE],
        own_cells: |o, now| {
            let secrets = o
                .get("secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![name(o), json!(secrets.to_string()), created(o, now)]
        },
        template: None,
    },
    Printer {
        kind: "Endpoints",
        own: &[
            NAME,
            col("Endpoints", "string", 0, "Endpoints of the service."),
            AGE,
        ],
        own_cells: |o, now| vec![name(o), json!(endpoints_summary(o)), created(o, now)],
        template: None,
    },
    Printer {
        kind: "EndpointSlice",
        own: &[
            NAME,
            col("AddressType", "string", 0, "The type of addresses."),
            col("Ports", "string", 0, "Ports in the slice."),
            col("Endpoints", "string", 0, "Endpoint addresses."),
            AGE,
        ],
        own_cells: endpoint_slice_cells,
        template: None,
    },
    Printer {
        kind: "Job",
        own: &[
            NAME,
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
            AGE,
        ],
        own_cells: job_cells,
        template: POD_TEMPLATE,
    },
    Printer {
        kind: "CronJob",
        own: &[
            NAME,
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
            AGE,
        ],
        own_cells: |o, now| {
            let last =
                age(o.pointer("/status/lastScheduleTime"), now).replace("<unknown>", "<none>");
            vec![
                name(o),
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
                created(o, now),
            ]
        },
        template: Some(Template {
            spec: "/spec/jobTemplate/spec/template/spec",
            selector: "/spec/jobTemplate/spec/selector",
        }),
    },
    Printer {
        kind: "Lease",
        own: &[
            NAME,
            col("Holder", "string", 0, "The holder of the lease."),
            AGE,
        ],
        own_cells: |o, now| {
            vec![
                name(o),
                json!(s(o, "/spec/holderIdentity")),
                created(o, now),
            ]
        },
        template: None,
    },
    Printer {
        kind: "RuntimeClass",
        own: &[
            NAME,
            col("Handler", "string", 0, "The runtime handler."),
            AGE,
        ],
        own_cells: |o, now| vec![name(o), json!(s(o, "/handler")), created(o, now)],
        template: None,
    },
    Printer {
        kind: "Event",
        own: &[
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
        own_cells: event_cells,
        template: None,
    },
];

fn name(o: &Value) -> Value {
    json!(s(o, "/metadata/name"))
}

fn created(o: &Value, now: Timestamp) -> Value {
    json!(age(o.pointer("/metadata/creationTimestamp"), now))
}

fn len_object(o: &Value, field: &str) -> usize {
    o.get(field)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

fn service_cells(o: &Value, now: Timestamp) -> Vec<Value> {
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
        name(o),
        json!(ty),
        json!(or_none(s(o, "/spec/clusterIP").to_string())),
        json!(external),
        json!(service_ports(o)),
        created(o, now),
        json!(map_selector(o.pointer("/spec/selector"))),
    ]
}

fn endpoint_slice_cells(o: &Value, now: Timestamp) -> Vec<Value> {
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
        name(o),
        json!(s(o, "/addressType")),
        json!(or_none(ports.join(","))),
        json!(or_none(addrs.join(","))),
        created(o, now),
    ]
}

fn job_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let completions = o
        .pointer("/spec/completions")
        .and_then(Value::as_i64)
        .map_or_else(|| "1".into(), |c| c.to_string());
    let has = |t: &str| {
        o.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
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
    let time = |ptr: &str| {
        o.pointer(ptr)
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
    };
    let end = time("/status/completionTime").unwrap_or(now);
    let duration = time("/status/startTime")
        .map(|st| human_duration(end.as_second() - st.as_second()))
        .unwrap_or_default();
    vec![
        name(o),
        json!(status),
        json!(format!("{}/{completions}", n(o, "/status/succeeded"))),
        json!(duration),
        created(o, now),
    ]
}

fn event_cells(o: &Value, now: Timestamp) -> Vec<Value> {
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
        name(o),
    ]
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
