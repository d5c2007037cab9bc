//! API discovery (aggregated v2 and legacy) and the OpenAPI v3 documents
//! kubectl needs, all generated from the one resource table.

use serde_json::{Value, json};
use weft_api::resources::ALL_VERBS;
use weft_api::{RESOURCES, Resource};

pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client accepts aggregated discovery (kubectl ≥ 1.26 does).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.contains("g=apidiscovery.k8s.io") && accept.contains("as=APIGroupDiscoveryList")
}

/// The groups in discovery order, core ("") first.
fn groups() -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

fn in_group(group: &str) -> impl Iterator<Item = &'static Resource> + '_ {
    RESOURCES.iter().filter(move |r| r.group == group)
}

fn scope(r: &Resource) -> &'static str {
    if r.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_resource(r: &Resource) -> Value {
    let subs: Vec<Value> = r
        .subresources
        .iter()
        .map(|s| {
            let (g, v, k) = r.subresource_kind(s);
            json!({"subresource": s.name, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": s.verbs})
        })
        .collect();
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": scope(r),
        "singularResource": r.singular,
        "verbs": ALL_VERBS,
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        v["subresources"] = Value::Array(subs);
    }
    v
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> = in_group(group).map(aggregated_resource).collect();
    let mut g =
        json!({"versions": [{"version": "v1", "freshness": "Current", "resources": resources}]});
    g["metadata"] = if group.is_empty() {
        json!({"creationTimestamp": null})
    } else {
        json!({"name": group, "creationTimestamp": null})
    };
    g
}

/// `/api` (core=true) or `/apis` as an APIGroupDiscoveryList.
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|g| g.is_empty() == core)
        .map(aggregated_group)
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Legacy `/api`.
pub fn legacy_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_entry(group: &str) -> Value {
    let gv = format!("{group}/v1");
    json!({"name": group, "versions": [{"groupVersion": gv, "version": "v1"}],
           "preferredVersion": {"groupVersion": gv, "version": "v1"}})
}

/// Legacy `/apis`.
pub fn legacy_groups() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(group_entry)
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/{group}`.
pub fn legacy_group(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| {
        let mut g = group_entry(group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

/// Legacy `/api/v1` or `/apis/{group}/v1`: an APIResourceList.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if version != "v1" || !groups().contains(&group) {
        return None;
    }
    let mut resources = Vec::new();
    for r in in_group(group) {
        let mut main = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                              "kind": r.kind, "verbs": ALL_VERBS});
        if !r.short_names.is_empty() {
            main["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            main["categories"] = json!(r.categories);
        }
        resources.push(main);
        for s in r.subresources {
            let (g, v, k) = r.subresource_kind(s);
            let mut sub = json!({"name": format!("{}/{}", r.plural, s.name), "singularName": "", "namespaced": r.namespaced,
                                 "kind": k, "verbs": s.verbs});
            if g != r.group {
                sub["group"] = json!(g);
                sub["version"] = json!(v);
            }
            resources.push(sub);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn gv_key(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

/// The per-group-version OpenAPI v3 document: one PATCH operation per kind,
/// carrying its GVK and the `fieldValidation` parameter. That is what makes
/// `kubectl apply` validate server-side instead of downloading OpenAPI v2.
pub fn openapi_gv(group: &str) -> Option<Value> {
    if !groups().contains(&group) {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for r in in_group(group) {
        let path = if r.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                gv_key(group),
                r.plural
            )
        } else {
            format!("/{}/{}/{{name}}", gv_key(group), r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            {"name": "force", "in": "query", "schema": {"type": "boolean"}},
        ]);
        let op = |action: &str| {
            json!({"operationId": format!("{action}{}", r.kind), "parameters": params,
            "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
            "responses": {"200": {"description": "OK"}}})
        };
        paths.insert(path, json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths}),
    )
}

/// FNV-1a, for cache-busting hashes of the generated documents.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for g in groups() {
        let doc = openapi_gv(g).expect("group is served");
        let hash = format!("{:016X}", fnv(doc.to_string().as_bytes()));
        paths.insert(
            gv_key(g),
            json!({"serverRelativeURL": format!("/openapi/v3/{}?hash={hash}", gv_key(g))}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_core_has_pods_with_short_names() {
        let api = aggregated(true);
        assert_eq!(api["items"].as_array().unwrap().len(), 1);
        let pods = api["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap()
            .clone();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["scope"], "Namespaced");
        let apis = aggregated(false);
        assert!(
            apis["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["metadata"]["name"] == "apps")
        );
    }

    #[test]
    fn openapi_has_patch_with_field_validation_per_kind() {
        let index = openapi_index();
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc = openapi_gv("apps").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(openapi_gv("nope").is_none());
    }

    #[test]
    fn legacy_lists_subresources() {
        let l = resource_list("apps", "v1").unwrap();
        assert!(
            l["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "deployments/scale" && r["group"] == "autoscaling")
        );
        assert!(resource_list("apps", "v2").is_none());
    }
}
