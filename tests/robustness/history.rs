//! What a robustness run records: every client call with its outcome and
//! its real-time interval, every list, and every watch stream. A run saves
//! its history as JSON when a check fails, so the checks can be replayed on
//! it (`WEFT_ROBUSTNESS_REPLAY=FILE`).

use serde::{Deserialize, Serialize};

/// Nanoseconds since the run started.
pub type Nanos = u64;
/// An op that got no definite answer may take effect at any later time.
pub const NEVER: Nanos = Nanos::MAX;

/// A client call on one object (a ConfigMap named `key`). Writes carry a
/// unique `op` id in the object's data, so any later observation of the
/// object (a read, a list, a watch event) tells which write made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Create { key: String, op: u64 },
    Update { key: String, op: u64, expected: u64 },
    Delete { key: String, expected: u64 },
    Get { key: String },
}

impl Call {
    pub fn key(&self) -> &str {
        match self {
            Call::Create { key, .. }
            | Call::Update { key, .. }
            | Call::Delete { key, .. }
            | Call::Get { key } => key,
        }
    }

    pub fn write_id(&self) -> Option<u64> {
        match self {
            Call::Create { op, .. } | Call::Update { op, .. } => Some(*op),
            _ => None,
        }
    }
}

/// A call's outcome. `Unknown` is a timeout, a 5xx or a broken connection:
/// a write may or may not have been applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// A create or update applied at this resourceVersion.
    Written(u64),
    Deleted,
    AlreadyExists,
    Conflict,
    NotFound,
    /// A get found the object at this resourceVersion.
    Found(u64),
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub client: usize,
    /// Which member the client sent it to (0-based).
    pub member: usize,
    pub call: Call,
    pub ret: Ret,
    pub start: Nanos,
    /// [`NEVER`] for `Unknown`.
    pub end: Nanos,
}

/// One object as a read showed it: its name, resourceVersion and the id
/// of the write that made it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seen {
    pub key: String,
    pub rv: u64,
    pub op: u64,
}

/// A successful list: its resourceVersion and items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct List {
    pub member: usize,
    pub start: Nanos,
    pub end: Nanos,
    pub rv: u64,
    pub items: Vec<Seen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// A watch event. For a deletion, `rv` is the deletion's revision and `op`
/// the write that made the deleted object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventType,
    pub obj: Seen,
}

/// One watch request's stream: it started after `from` (a list's or the
/// last seen resourceVersion) and delivered `events` until it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stream {
    pub watcher: usize,
    pub member: usize,
    pub from: u64,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub seed: u64,
    pub scenario: String,
    pub ops: Vec<Op>,
    pub lists: Vec<List>,
    pub streams: Vec<Stream>,
    /// Each member's list once traffic stopped and the cluster healed.
    pub finals: Vec<List>,
}
