//! Weft's control plane, assembled: one member ([`member`]) binds, opens the
//! Raft-replicated store, serves the Kubernetes-compatible API and runs the
//! scheduler and the controllers while it leads. Each component is a crate
//! of its own (docs/architecture.md); they are re-exported here under their
//! component names.

pub mod member;

pub use weft_apiserver as apiserver;
pub use weft_cluster as cluster;
pub use weft_controllers as controllers;
pub use weft_scheduler as scheduler;
pub use weft_store as store;

pub use member::{ControlPlane, ControlPlaneConfig, StartError};
