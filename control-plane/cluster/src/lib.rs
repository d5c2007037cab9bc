//! The control plane's shared vocabulary: object accessors, the cache and
//! its [`Snapshot`], the [`Action`]s reconciles return and the [`Writer`]
//! that carries them out. The scheduler and the controllers depend on
//! this, never on each other or on the API server and store.

pub mod actions;
pub mod cache;
pub mod keys;
pub mod objects;
pub mod time;

pub use actions::{Action, NodeFit, Outcome, Writer, execute, res};
pub use cache::{Cache, Change, Snapshot, object_rev};
