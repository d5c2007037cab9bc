//! Pod volumes on the node: configMap and secret volumes written out as
//! files (read-only, as Kubernetes mounts them), emptyDir as a fresh
//! directory. Each runtime mounts them its own way (Wasm: WASI preopens).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weft_api::k8s_openapi::api::core::v1::{KeyToPath, Pod};

use crate::env::{ConfigError, Sources};

/// A volume ready on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub path: PathBuf,
    /// configMap and secret volumes are always read-only.
    pub read_only: bool,
}

/// Names of the ConfigMaps and Secrets the pod's volumes use.
pub fn references(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
    }
    (cms, secrets)
}

/// Writes `data` (key → bytes) into `dir`, honouring `items` (a subset of keys at chosen paths).
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    what: &str,
) -> Result<(), ConfigError> {
    let io = |e: std::io::Error| ConfigError(format!("writing volume {}: {e}", dir.display()));
    let files: Vec<(String, &Vec<u8>)> = match items {
        Some(items) => items
            .iter()
            .map(|i| {
                data.get(&i.key)
                    .map(|v| (i.path.clone(), v))
                    .ok_or_else(|| ConfigError(format!("{what}: no key {:?}", i.key)))
            })
            .collect::<Result<_, _>>()?,
        None => data.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (rel, bytes) in files {
        if rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(ConfigError(format!("{what}: invalid path {rel:?}")));
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
    }
    Ok(())
}

/// Materialises every volume of `pod` under `root` (the pod's own directory).
pub fn prepare(
    pod: &Pod,
    sources: &impl Sources,
    root: &Path,
) -> Result<BTreeMap<String, Volume>, ConfigError> {
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = root.join(&v.name);
        let io = |e: std::io::Error| ConfigError(format!("volume {}: {e}", v.name));
        let read_only = if let Some(cm) = &v.config_map {
            let data = match sources.config_map(&cm.name) {
                Some(c) => {
                    let mut d: BTreeMap<String, Vec<u8>> = c
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect();
                    d.extend(
                        c.binary_data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.0.clone())),
                    );
                    d
                }
                None if cm.optional == Some(true) => BTreeMap::new(),
                None => return Err(ConfigError(format!("configmap \"{}\" not found", cm.name))),
            };
            // Rewritten each start, so an updated ConfigMap shows on restart.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(io)?;
            write_keys(
                &dir,
                &data,
                cm.items.as_ref(),
                &format!("configmap {:?}", cm.name),
            )?;
            true
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = match sources.secret(&name) {
                Some(sec) => {
                    let mut d: BTreeMap<String, Vec<u8>> = sec
                        .string_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect();
                    d.extend(
                        sec.data
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.0.clone())),
                    );
                    d
                }
                None if s.optional == Some(true) => BTreeMap::new(),
                None => return Err(ConfigError(format!("secret \"{name}\" not found"))),
            };
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(io)?;
            write_keys(&dir, &data, s.items.as_ref(), &format!("secret {name:?}"))?;
            true
        } else if v.empty_dir.is_some() {
            // An emptyDir lives as long as the pod: kept across container restarts.
            std::fs::create_dir_all(&dir).map_err(io)?;
            false
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: only configMap, secret and emptyDir volumes are supported",
                v.name
            )));
        };
        out.insert(
            v.name.clone(),
            Volume {
                path: dir,
                read_only,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Fetched;

    #[test]
    fn config_maps_secrets_and_empty_dirs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "volumes": [
                {"name": "cfg", "configMap": {"name": "app"}},
                {"name": "picked", "configMap": {"name": "app", "items": [{"key": "a", "path": "sub/renamed"}]}},
                {"name": "creds", "secret": {"secretName": "s"}},
                {"name": "scratch", "emptyDir": {}},
            ]}}))
        .unwrap();
        let mut f = Fetched::default();
        f.config_maps.insert(
            "app".into(),
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "app"}, "data": {"a": "1", "b": "2"}}),
            )
            .unwrap(),
        );
        f.secrets.insert(
            "s".into(),
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "s"}, "data": {"token": "c2VjcmV0"}}),
            )
            .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let vols = prepare(&pod, &f, dir.path()).unwrap();
        let read = |v: &str, p: &str| std::fs::read_to_string(vols[v].path.join(p)).unwrap();
        assert_eq!(read("cfg", "a"), "1");
        assert_eq!(read("cfg", "b"), "2");
        assert_eq!(read("picked", "sub/renamed"), "1");
        assert!(!vols["picked"].path.join("b").exists());
        assert_eq!(read("creds", "token"), "secret");
        assert!(vols["cfg"].read_only && vols["creds"].read_only && !vols["scratch"].read_only);
        assert!(vols["scratch"].path.is_dir());
        assert_eq!(
            references(&pod),
            (vec!["app".to_string(), "app".into()], vec!["s".to_string()])
        );

        f.secrets.clear();
        let err = prepare(&pod, &f, dir.path()).unwrap_err();
        assert_eq!(err.0, "secret \"s\" not found");
    }
}
