//! The resources Weft serves: one static table drives routing, discovery,
//! OpenAPI, and the CLI's name resolution, so they cannot disagree.

/// A subresource and the kind it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// (group, version, kind) of the subresource's body.
    pub kind: (&'static str, &'static str, &'static str),
    pub verbs: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
}

pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

const STATUS: Subresource = Subresource {
    name: "status",
    kind: ("", "", ""), // same kind as the parent, filled in by `subresource_kind`
    verbs: &["get", "patch", "update"],
};
const SCALE: Subresource = Subresource {
    name: "scale",
    kind: ("autoscaling", "v1", "Scale"),
    verbs: &["get", "patch", "update"],
};

// One positional row per resource keeps the table readable at a glance.
#[allow(clippy::too_many_arguments)]
const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
) -> Resource {
    Resource {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories,
        subresources,
    }
}

/// Every served resource, in discovery order.
pub static RESOURCES: &[Resource] = &[
    res(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        &[],
        &[
            STATUS,
            Subresource {
                name: "finalize",
                kind: ("", "v1", "Namespace"),
                verbs: &["update"],
            },
        ],
    ),
    res(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        &["all"],
        &[
            STATUS,
            Subresource {
                name: "binding",
                kind: ("", "v1", "Binding"),
                verbs: &["create"],
            },
            Subresource {
                name: "eviction",
                kind: ("policy", "v1", "Eviction"),
                verbs: &["create"],
            },
            Subresource {
                name: "log",
                kind: ("", "v1", "Pod"),
                verbs: &["get"],
            },
        ],
    ),
    res(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        &[],
        &[STATUS],
    ),
    res(
        "",
        "v1",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        &["all"],
        &[STATUS],
    ),
    res(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        &[],
        &[],
    ),
    res(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        &[],
        &[],
    ),
    res("", "v1", "Secret", "secrets", "secret", true, &[], &[], &[]),
    res(
        "",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        &[],
        &[],
    ),
    res(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        &[],
        &[],
    ),
    res(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        &["all"],
        &[STATUS, SCALE],
    ),
    res(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        &["all"],
        &[STATUS, SCALE],
    ),
    res(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        &["all"],
        &[STATUS],
    ),
    res(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        true,
        &[],
        &["all"],
        &[STATUS],
    ),
    res(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
        &["all"],
        &[STATUS],
    ),
    res(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        &[],
        &[],
    ),
    res(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        &[],
        &[],
    ),
    res(
        "node.k8s.io",
        "v1",
        "RuntimeClass",
        "runtimeclasses",
        "runtimeclass",
        false,
        &[],
        &[],
        &[],
    ),
];

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// URL prefix of the group-version: `/api/v1` or `/apis/apps/v1`.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// Collection URL, optionally within a namespace.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => {
                format!("{}/namespaces/{ns}/{}", self.gv_path(), self.plural)
            }
            _ => format!("{}/{}", self.gv_path(), self.plural),
        }
    }

    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether `status` is owned by a subresource (so the main resource ignores status writes).
    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }

    /// The kind a subresource's body has; `status` shares the parent's kind.
    pub fn subresource_kind(
        &self,
        sub: &Subresource,
    ) -> (&'static str, &'static str, &'static str) {
        if sub.kind.2.is_empty() {
            (self.group, self.version, self.kind)
        } else {
            sub.kind
        }
    }
}

/// Finds a resource by its group-version and plural name (the URL's view).
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by apiVersion and kind (the manifest's view).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Resolves what a user types (`po`, `pods`, `pod`, `deployments.apps`, `Deployment`).
pub fn resolve(name: &str) -> Option<&'static Resource> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower, None),
    };
    RESOURCES.iter().find(|r| {
        group.as_deref().is_none_or(|g| g == r.group)
            && (r.plural == base
                || r.singular == base
                || r.kind.eq_ignore_ascii_case(&base)
                || r.short_names.contains(&base.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_short_and_qualified_names() {
        assert_eq!(resolve("po").unwrap().plural, "pods");
        assert_eq!(resolve("deploy").unwrap().group, "apps");
        assert_eq!(resolve("deployments.apps").unwrap().kind, "Deployment");
        assert_eq!(resolve("Service").unwrap().plural, "services");
        assert!(resolve("deployments.batch").is_none());
        assert!(resolve("nonsense").is_none());
    }

    #[test]
    fn paths() {
        let pods = by_plural("", "v1", "pods").unwrap();
        assert_eq!(
            pods.object_path(Some("default"), "x"),
            "/api/v1/namespaces/default/pods/x"
        );
        let nodes = by_kind("v1", "Node").unwrap();
        assert_eq!(nodes.object_path(Some("ignored"), "n1"), "/api/v1/nodes/n1");
        let deploy = by_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(deploy.collection_path(None), "/apis/apps/v1/deployments");
        assert_eq!(
            deploy
                .subresource_kind(deploy.subresource("scale").unwrap())
                .2,
            "Scale"
        );
        assert_eq!(
            deploy
                .subresource_kind(deploy.subresource("status").unwrap())
                .2,
            "Deployment"
        );
    }
}
