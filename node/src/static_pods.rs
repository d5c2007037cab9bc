//! Static pods (kubelet's `--pod-manifest-path`): one Pod manifest per file
//! in a directory. The agent keeps a mirror pod in the API for each,
//! `{name}-{node}`, bound to this node, and the ordinary pod loop runs it.
//! Changing a file replaces its pod; removing it deletes the pod; deleting
//! the mirror pod through the API only brings it back.
//!
//! Unlike kubelet, the pod runs through its mirror, so static pods need the
//! API server; Weft's control plane does not run as static pods.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use weft_api::k8s_openapi::api::core::v1::Pod;

pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";

/// The manifests in `dir` by file name; files that do not parse are
/// reported and skipped, as kubelet does.
pub fn read_dir(dir: &Path) -> BTreeMap<String, Result<Pod, String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let manifest = [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x));
        if name.starts_with('.') || !manifest {
            continue;
        }
        let parsed = std::fs::read_to_string(e.path())
            .map_err(|err| err.to_string())
            .and_then(|text| serde_yaml::from_str::<Pod>(&text).map_err(|err| err.to_string()));
        out.insert(name, parsed);
    }
    out
}

/// The mirror pod of a manifest on `node`.
pub fn mirror(manifest: &Pod, node: &str) -> Result<Pod, String> {
    let mut pod = manifest.clone();
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is required")?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(manifest)
        .map_err(|e| e.to_string())?
        .hash(&mut h);
    let hash = format!("{:016x}", h.finish());
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata.namespace = Some(
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
    );
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(MIRROR_ANNOTATION.into(), hash.clone());
    annotations.insert(HASH_ANNOTATION.into(), hash);
    annotations.insert(SOURCE_ANNOTATION.into(), "file".into());
    pod.metadata.resource_version = None;
    pod.metadata.uid = None;
    pod.status = None;
    pod.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
    Ok(pod)
}

/// What to change so the API holds exactly the mirrors of `desired`.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Pod>,
    /// (namespace, name)
    pub delete: Vec<(String, String)>,
}

/// Compares wanted mirrors with this node's existing mirror pods: a
/// missing one is created, a stale one (other hash, or no manifest) deleted.
/// A pod being deleted is left to finish before its replacement is created.
pub fn plan(desired: &[Pod], existing: &[Pod]) -> Plan {
    let key = |p: &Pod| {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    let hash = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION).cloned())
    };
    let mut out = Plan::default();
    for want in desired {
        match existing.iter().find(|e| key(e) == key(want)) {
            None => out.create.push(want.clone()),
            Some(e) if hash(e) != hash(want) && e.metadata.deletion_timestamp.is_none() => {
                out.delete.push(key(e))
            }
            Some(_) => {}
        }
    }
    for e in existing {
        if hash(e).is_some()
            && e.metadata.deletion_timestamp.is_none()
            && !desired.iter().any(|d| key(d) == key(e))
        {
            out.delete.push(key(e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, image: &str) -> Pod {
        serde_json::from_value(
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": image}]}}),
        )
        .unwrap()
    }

    #[test]
    fn mirrors_are_named_annotated_and_bound() {
        let m = mirror(&manifest("web", "r/a:1"), "node-1").unwrap();
        assert_eq!(m.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(m.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            m.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-1")
        );
        let a = m.metadata.annotations.unwrap();
        assert_eq!(a[SOURCE_ANNOTATION], "file");
        assert_eq!(a[MIRROR_ANNOTATION], a[HASH_ANNOTATION]);
        assert!(
            mirror(&Pod::default(), "n").is_err(),
            "a manifest needs a name"
        );
    }

    #[test]
    fn plans_create_replace_and_remove() {
        let v1 = mirror(&manifest("web", "r/a:1"), "n").unwrap();
        let v2 = mirror(&manifest("web", "r/a:2"), "n").unwrap();
        let other = mirror(&manifest("gone", "r/a:1"), "n").unwrap();
        let mut plain = manifest("api-made", "r/a:1");
        plain.metadata.namespace = Some("default".into());

        assert_eq!(
            plan(std::slice::from_ref(&v1), &[]).create,
            vec![v1.clone()]
        );
        assert_eq!(
            plan(std::slice::from_ref(&v1), std::slice::from_ref(&v1)),
            Plan::default()
        );
        assert_eq!(
            plan(std::slice::from_ref(&v2), std::slice::from_ref(&v1)).delete,
            vec![("default".to_string(), "web-n".to_string())],
            "a changed manifest replaces its pod"
        );
        assert_eq!(
            plan(std::slice::from_ref(&v1), &[v1.clone(), other, plain]).delete,
            vec![("default".to_string(), "gone-n".to_string())],
            "mirrors without a manifest go; pods made through the API stay"
        );
    }

    #[test]
    fn reads_manifest_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: app, image: r/a:1}]}\n").unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "spec: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(dir.path().join(".web.yaml.swp"), "ignored").unwrap();
        let read = read_dir(dir.path());
        assert_eq!(read.len(), 2);
        assert_eq!(
            read["web.yaml"].as_ref().unwrap().metadata.name.as_deref(),
            Some("web")
        );
        assert!(read["bad.yaml"].is_err());
    }
}
