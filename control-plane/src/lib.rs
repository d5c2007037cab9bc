//! Weft's control plane: the Kubernetes-compatible API server over a
//! Raft-replicated rocksdb store, with the scheduler and controllers.

pub mod apiserver;
pub mod cache;
pub mod controllers;
pub mod leader;
pub mod local;
pub mod scheduler;
pub mod store;
pub mod time;
