//! Weft API types. Kubernetes-compatible: the built-in kinds are k8s-openapi's,
//! re-exported; Weft adds the resource table and `Status` errors. No I/O here.

pub mod resources;
pub mod status;

pub use k8s_openapi;
pub use resources::{RESOURCES, Resource, Subresource};
pub use status::{Cause, Status};
