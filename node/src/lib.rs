//! The Weft node agent (kubelet's role): artifacts, the workload runtimes
//! behind one trait, and the agent loop that runs the pods bound to its node.

pub mod agent;
pub mod artifacts;
pub mod containerd;
pub mod env;
pub mod http;
pub mod keyed_lock;
pub mod logs;
pub mod podnet;
pub mod probes;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod static_pods;
pub mod volumes;
pub mod wasm;
pub mod workload;
