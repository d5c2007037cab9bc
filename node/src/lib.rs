//! The Weft node agent (kubelet's role). This crate grows with the node-agent
//! issue; today it holds the artifact pipeline the agent and `weft push` share.

pub mod artifacts;
