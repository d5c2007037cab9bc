//! Weft's control plane: the Kubernetes-compatible API server over a
//! Raft-replicated rocksdb store, with the scheduler and controllers.

pub mod apiserver;
pub use weft_cluster as cluster;
pub use weft_controllers as controllers;
pub mod member;
pub use weft_scheduler as scheduler;
pub use weft_store as store;

pub use member::{ControlPlane, ControlPlaneConfig, StartError};
