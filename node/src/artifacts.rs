//! Wasm artifacts from OCI registries: pull (verified, cached by digest,
//! honouring imagePullPolicy) and push (`weft push`).
//!
//! Accepted layouts: the CNCF Wasm OCI artifact (one `application/wasm`
//! layer, config `application/vnd.wasm.config.v0+json`), the older
//! `application/vnd.wasm.content.layer.v1+wasm` layer, and a single-layer image
//! whose layer is a bare `.wasm` file. Anything else is "not a Wasm artifact",
//! which is how the runtime choice (Wasm or containerd) is made later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{IMAGE_LAYER_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use weft_api::k8s_openapi::api::core::v1::Secret;

use crate::keyed_lock::KeyedLock;

pub const WASM_MEDIA_TYPE: &str = "application/wasm";
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
const WASM_MAGIC: &[u8] = b"\0asm";

/// Kubernetes' imagePullPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy a container states, or Kubernetes' default for its image.
    pub fn for_container(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ if weft_api::default_pull_policy(image) == "Always" => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Why an artifact could not be had; the message is what the pod's status shows.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// `ErrImagePull`: the registry refused or failed (its message included).
    #[error("failed to pull {image}: {message}")]
    Pull { image: String, message: String },
    /// `ErrImageNeverPull`: policy Never and not cached.
    #[error("image {0:?} is not present with pull policy of Never")]
    NeverPull(String),
    #[error("invalid image reference {image:?}: {message}")]
    InvalidReference { image: String, message: String },
    /// The image is an ordinary container image (runs in containerd, not Wasm).
    #[error("{0} is not a Wasm artifact")]
    NotWasm(String),
    #[error("digest mismatch for {image}: registry said {expected}, content is {actual}")]
    DigestMismatch {
        image: String,
        expected: String,
        actual: String,
    },
    #[error("artifact cache at {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PullError {
    /// The container waiting reason Kubernetes users know.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::NeverPull(_) => "ErrImageNeverPull",
            PullError::InvalidReference { .. } => "InvalidImageName",
            _ => "ErrImagePull",
        }
    }
}

/// A Wasm artifact on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `sha256:...` of the Wasm bytes (the layer digest).
    pub digest: String,
    pub path: PathBuf,
}

pub fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Whether a registry host is on this machine (plain HTTP is allowed only there).
fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map_or(registry, |(h, _)| h)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn client_for(reference: &Reference) -> Client {
    // rustls needs one process-wide crypto provider; ring is the one Weft builds.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        ..Default::default()
    })
}

pub(crate) fn parse(image: &str) -> Result<Reference, PullError> {
    image
        .parse()
        .map_err(|e: oci_client::ParseError| PullError::InvalidReference {
            image: image.into(),
            message: e.to_string(),
        })
}

/// The fully qualified name of an image (`busybox` is `docker.io/library/busybox:latest`).
pub fn normalize(image: &str) -> Result<String, PullError> {
    Ok(parse(image)?.whole())
}

/// Registry credentials for `image` from the pod's `imagePullSecrets`
/// (`kubernetes.io/dockerconfigjson` or `.dockercfg`), matched by registry
/// host; anonymous when none matches.
pub fn auth_for(image: &str, secrets: &[Secret]) -> RegistryAuth {
    use base64::Engine;
    let Ok(reference) = parse(image) else {
        return RegistryAuth::Anonymous;
    };
    let registry = reference.resolve_registry().to_string();
    let host_of = |key: &str| -> String {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        if k == "index.docker.io" {
            "index.docker.io".into()
        } else {
            k.to_string()
        }
    };
    for secret in secrets {
        let data = secret.data.clone().unwrap_or_default();
        let auths = if let Some(b) = data.get(".dockerconfigjson") {
            serde_json::from_slice::<serde_json::Value>(&b.0)
                .ok()
                .map(|v| v["auths"].clone())
        } else {
            data.get(".dockercfg")
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.0).ok())
        };
        let Some(serde_json::Value::Object(auths)) = auths else {
            continue;
        };
        for (key, entry) in auths {
            if host_of(&key) != registry {
                continue;
            }
            let field = |f: &str| entry[f].as_str().unwrap_or_default().to_string();
            let (mut user, mut pass) = (field("username"), field("password"));
            if user.is_empty()
                && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(field("auth"))
                && let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':')
            {
                (user, pass) = (u.to_string(), p.to_string());
            }
            if !user.is_empty() {
                return RegistryAuth::Basic(user, pass);
            }
        }
    }
    RegistryAuth::Anonymous
}

/// Local, digest-addressed artifact storage plus the reference → digest map.
pub struct ArtifactStore {
    dir: PathBuf,
    /// One pull per reference at a time (single flight).
    pulls: KeyedLock,
}

impl ArtifactStore {
    pub fn new(dir: PathBuf) -> Result<ArtifactStore, PullError> {
        for sub in ["blobs", "refs"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| PullError::Cache { path: p, source })?;
        }
        Ok(ArtifactStore {
            dir,
            pulls: KeyedLock::default(),
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs")
            .join(format!("{}.wasm", digest.replace(':', "-")))
    }

    fn ref_path(&self, image: &str) -> PathBuf {
        // The reference itself can hold '/' and ':'; its hash names the file.
        self.dir
            .join("refs")
            .join(sha256(image.as_bytes()).replace(':', "-"))
    }

    /// The artifact `image` resolved to when last pulled, if still on disk.
    pub fn cached(&self, image: &str) -> Option<Pulled> {
        let digest = std::fs::read_to_string(self.ref_path(image)).ok()?;
        let path = self.blob_path(digest.trim());
        path.exists().then(|| Pulled {
            digest: digest.trim().to_string(),
            path,
        })
    }

    /// Makes `image` available locally as its policy says. Pulls of one
    /// reference are single-flight: whoever waited for a pull in flight
    /// takes its result, whatever the policy.
    pub async fn pull(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &RegistryAuth,
    ) -> Result<Pulled, PullError> {
        let reference = parse(image)?;
        if policy != PullPolicy::Always
            && let Some(p) = self.cached(image)
        {
            return Ok(p);
        }
        if policy == PullPolicy::Never {
            return Err(PullError::NeverPull(image.to_string()));
        }
        let held = self.pulls.lock(image).await;
        if (held.waited || policy != PullPolicy::Always)
            && let Some(p) = self.cached(image)
        {
            return Ok(p);
        }
        let client = client_for(&reference);
        let accepted = vec![
            WASM_MEDIA_TYPE,
            WASM_LAYER_MEDIA_TYPE,
            IMAGE_LAYER_MEDIA_TYPE,
            "application/octet-stream",
        ];
        let data = client
            .pull(&reference, auth, accepted)
            .await
            .map_err(|e| PullError::Pull {
                image: image.into(),
                message: e.to_string(),
            })?;
        let [layer] = data.layers.as_slice() else {
            return Err(PullError::NotWasm(format!(
                "{image} ({} layers)",
                data.layers.len()
            )));
        };
        if !layer.data.starts_with(WASM_MAGIC) {
            return Err(PullError::NotWasm(image.to_string()));
        }
        let actual = sha256(&layer.data);
        let expected = data
            .manifest
            .as_ref()
            .and_then(|m| m.layers.first())
            .map(|l| l.digest.clone())
            .unwrap_or_else(|| actual.clone());
        if expected != actual {
            return Err(PullError::DigestMismatch {
                image: image.into(),
                expected,
                actual,
            });
        }
        let path = self.blob_path(&actual);
        if !path.exists() {
            write_atomically(&path, &layer.data)?;
        }
        write_atomically(&self.ref_path(image), actual.as_bytes())?;
        Ok(Pulled {
            digest: actual,
            path,
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    let io = |source| PullError::Cache {
        path: path.to_path_buf(),
        source,
    };
    // Unique per write: two pulls of one digest under other names may write at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Publishes a `.wasm` file as a CNCF Wasm OCI artifact; returns its layer digest.
pub async fn push(file: &Path, image: &str, auth: &RegistryAuth) -> Result<String, PullError> {
    let reference = parse(image)?;
    let bytes = std::fs::read(file).map_err(|source| PullError::Cache {
        path: file.to_path_buf(),
        source,
    })?;
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(PullError::NotWasm(file.display().to_string()));
    }
    let digest = sha256(&bytes);
    let mut annotations = BTreeMap::new();
    if let Some(name) = file.file_name().and_then(|n| n.to_str()) {
        annotations.insert(
            "org.opencontainers.image.title".to_string(),
            name.to_string(),
        );
    }
    let layer = ImageLayer::new(bytes, WASM_MEDIA_TYPE.to_string(), Some(annotations));
    let config = Config::new(
        br#"{"architecture":"wasm","os":"wasip2"}"#.to_vec(),
        WASM_CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    client_for(&reference)
        .push(&reference, &[layer], config, auth, None)
        .await
        .map_err(|e| PullError::Pull {
            image: image.into(),
            message: e.to_string(),
        })?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secrets_match_the_registry() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64::Engine::encode(&base64::engine::general_purpose::STANDARD,
                r#"{"auths": {"https://reg.example:5000": {"auth": "dTpw"}, "other.example": {"username": "a", "password": "b"}}}"#)}}))
        .unwrap();
        let auth = |image| match auth_for(image, std::slice::from_ref(&secret)) {
            RegistryAuth::Basic(u, p) => format!("{u}:{p}"),
            _ => "anonymous".into(),
        };
        assert_eq!(auth("reg.example:5000/app:1"), "u:p");
        assert_eq!(auth("other.example/x/y:2"), "a:b");
        assert_eq!(auth("third.example/app:1"), "anonymous");
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        assert_eq!(
            PullPolicy::for_container(None, "reg/app"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_container(None, "reg/app:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_container(None, "127.0.0.1:5000/app:1"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::for_container(None, "reg/app@sha256:abc"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::for_container(Some("Never"), "reg/app"),
            PullPolicy::Never
        );
    }

    #[test]
    fn only_loopback_registries_get_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[tokio::test]
    async fn never_policy_without_cache_is_err_image_never_pull() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path().into()).unwrap();
        let e = store
            .pull(
                "127.0.0.1:1/app:1",
                PullPolicy::Never,
                &RegistryAuth::Anonymous,
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "ErrImageNeverPull");
        let e = store
            .pull("UPPER CASE!", PullPolicy::Always, &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "InvalidImageName");
    }
}
