//! Weft's control plane: the Kubernetes-compatible API server over a
//! Raft-replicated rocksdb store.

pub mod apiserver;
pub mod store;
