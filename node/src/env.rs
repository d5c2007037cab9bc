//! A container's environment as Kubernetes builds it: `envFrom` first, then
//! `env` (later entries win), with `valueFrom` resolved from ConfigMaps,
//! Secrets and the pod's own fields. Shared by every workload runtime.

use std::collections::{BTreeMap, HashMap};

use weft_api::k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

/// `CreateContainerConfigError`: a referenced object or key is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What env resolution may look up: the pod's ConfigMaps and Secrets.
pub trait Sources {
    fn config_map(&self, name: &str) -> Option<&ConfigMap>;
    fn secret(&self, name: &str) -> Option<&Secret>;
}

/// ConfigMaps and Secrets fetched for one pod, by name.
#[derive(Default)]
pub struct Fetched {
    pub config_maps: HashMap<String, ConfigMap>,
    pub secrets: HashMap<String, Secret>,
    /// The pod's `imagePullSecrets` that exist.
    pub pull_secrets: Vec<Secret>,
}

impl Sources for Fetched {
    fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps.get(name)
    }
    fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }
}

/// Names of the ConfigMaps and Secrets a container's env refers to.
pub fn references(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &vf.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

fn field(pod: &Pod, path: &str) -> Option<String> {
    match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.podIP" => pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => pod.status.as_ref().and_then(|s| s.host_ip.clone()),
        p => {
            let (map, key) = p
                .strip_prefix("metadata.labels['")
                .map(|k| ("labels", k))
                .or_else(|| {
                    p.strip_prefix("metadata.annotations['")
                        .map(|k| ("annotations", k))
                })?;
            let key = key.strip_suffix("']")?;
            let m = if map == "labels" {
                pod.metadata.labels.as_ref()
            } else {
                pod.metadata.annotations.as_ref()
            };
            m.and_then(|m| m.get(key).cloned())
        }
    }
}

/// The container's environment, `HOSTNAME` (the pod name) first, as Kubernetes sets it.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    sources: &dyn Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = BTreeMap::from([(
        "HOSTNAME".to_string(),
        pod.metadata.name.clone().unwrap_or_default(),
    )]);
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        if let Some(r) = &f.config_map_ref {
            match sources.config_map(&r.name) {
                Some(cm) => env.extend(
                    cm.data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (format!("{prefix}{k}"), v.clone())),
                ),
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &f.secret_ref {
            match sources.secret(&r.name) {
                Some(s) => {
                    for k in s.data.iter().flat_map(|d| d.keys()) {
                        env.insert(
                            format!("{prefix}{k}"),
                            secret_value(s, k).unwrap_or_default(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(vf)) => {
                if let Some(r) = &vf.config_map_key_ref {
                    let v = sources
                        .config_map(&r.name)
                        .and_then(|cm| cm.data.as_ref()?.get(&r.key).cloned());
                    if v.is_none() && r.optional != Some(true) {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in ConfigMap {}",
                            r.key, r.name
                        )));
                    }
                    v
                } else if let Some(r) = &vf.secret_key_ref {
                    let v = sources
                        .secret(&r.name)
                        .and_then(|s| secret_value(s, &r.key));
                    if v.is_none() && r.optional != Some(true) {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in Secret {}",
                            r.key, r.name
                        )));
                    }
                    v
                } else {
                    vf.field_ref
                        .as_ref()
                        .map(|fr| field(pod, &fr.field_path).unwrap_or_default())
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            env.insert(e.name.clone(), v);
        }
    }
    Ok(env.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sources() -> Fetched {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "cfg"}, "data": {"GREETING": "Hi", "MODE": "fast"}}),
        )
        .unwrap();
        let s: Secret = serde_json::from_value(
            json!({"metadata": {"name": "creds"}, "data": {"TOKEN": "czNjcjN0"}}),
        )
        .unwrap();
        Fetched {
            config_maps: HashMap::from([("cfg".into(), cm)]),
            secrets: HashMap::from([("creds".into(), s)]),
            pull_secrets: Vec::new(),
        }
    }

    fn pod(container: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p1", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [container]}}),
        )
        .unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    #[test]
    fn env_from_config_maps_secrets_and_fields() {
        let (p, c) = pod(json!({"name": "c", "image": "i",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [{"name": "MODE", "value": "safe"},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "GREETING"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}]}));
        let env: BTreeMap<_, _> = resolve(&p, &c, &sources()).unwrap().into_iter().collect();
        assert_eq!(env["HOSTNAME"], "p1");
        assert_eq!(env["CFG_GREETING"], "Hi");
        assert_eq!(env["GREETING"], "Hi");
        assert_eq!(env["MODE"], "safe");
        assert_eq!(env["TOKEN"], "s3cr3t");
        assert_eq!(env["NODE"], "n1");
        assert_eq!(env["APP"], "web");
    }

    #[test]
    fn missing_references_are_config_errors_unless_optional() {
        let (p, c) = pod(
            json!({"name": "c", "image": "i", "envFrom": [{"configMapRef": {"name": "nope"}}]}),
        );
        assert_eq!(
            resolve(&p, &c, &sources()).unwrap_err(),
            ConfigError("configmap \"nope\" not found".into())
        );
        let (p, c) = pod(
            json!({"name": "c", "image": "i", "envFrom": [{"secretRef": {"name": "nope", "optional": true}}]}),
        );
        assert!(resolve(&p, &c, &sources()).is_ok());
        let (p, c) = pod(
            json!({"name": "c", "image": "i", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MISSING"}}}]}),
        );
        assert!(
            resolve(&p, &c, &sources())
                .unwrap_err()
                .0
                .contains("MISSING")
        );
        let (cms, secrets) = references(&c);
        assert_eq!((cms, secrets), (vec!["cfg".to_string()], vec![]));
    }
}
