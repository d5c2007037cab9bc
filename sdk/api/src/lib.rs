//! Weft API types. Kubernetes-compatible: the built-in kinds are k8s-openapi's,
//! re-exported; Weft adds the resource table and `Status` errors. No I/O here.

pub mod quantity;
pub mod resources;
pub mod status;

pub use k8s_openapi;
pub use resources::{RESOURCES, Resource, Subresource};
pub use status::{Cause, Status};

/// This machine's architecture as Kubernetes names it (Go's GOARCH).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Kubernetes' default imagePullPolicy for an image: `Always` for `:latest` or
/// no tag (and no digest), else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or("");
    if !image.contains('@') && (!last.contains(':') || last.ends_with(":latest")) {
        "Always"
    } else {
        "IfNotPresent"
    }
}
