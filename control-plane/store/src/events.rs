//! The watch window: the last N committed changes, kept in memory and fanned
//! out to watchers. Like etcd after compaction, a watch from a revision older
//! than the window gets "Expired" and the client relists.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change. Every revision has exactly one event.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: u64,
    pub kind: EventType,
    pub key: String,
    /// The object after the change; for a deletion, its last state.
    pub object: Arc<Value>,
    /// The object before the change (None for a creation). Watches with
    /// selectors need it to turn "stopped matching" into DELETED.
    pub prev: Option<Arc<Value>>,
    /// `object` serialised once, shared by every watcher that sends it as is.
    pub encoded: OnceLock<bytes::Bytes>,
}

impl Event {
    pub fn new(
        revision: u64,
        kind: EventType,
        key: String,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) -> Self {
        Event {
            revision,
            kind,
            key,
            object,
            prev,
            encoded: OnceLock::new(),
        }
    }

    /// The JSON of `object`, serialised on first use.
    pub fn object_json(&self) -> &bytes::Bytes {
        self.encoded
            .get_or_init(|| serde_json::to_vec(&*self.object).unwrap_or_default().into())
    }
}

/// What a live subscriber receives.
#[derive(Debug, Clone)]
pub enum Feed {
    Event(Arc<Event>),
    /// The state was replaced wholesale (snapshot install): every watch must relist.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    pub requested: u64,
    /// The oldest revision a watch may still start from.
    pub oldest: u64,
}

pub struct EventLog {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Feed>,
    capacity: usize,
}

struct Inner {
    events: VecDeque<Arc<Event>>,
    /// Every event with revision <= compacted is gone from the window.
    compacted: u64,
}

/// How many events a slow watcher may fall behind before it is cut off (and relists).
const SUBSCRIBER_BUFFER: usize = 16 * 1024;

impl EventLog {
    pub fn new(capacity: usize, current_revision: u64) -> Self {
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        EventLog {
            inner: Mutex::new(Inner {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                compacted: current_revision,
            }),
            tx,
            capacity: capacity.max(1),
        }
    }

    /// Appends committed events (in revision order) and wakes watchers.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("event log poisoned");
        for e in events {
            let e = Arc::new(e);
            inner.events.push_back(e.clone());
            if inner.events.len() > self.capacity
                && let Some(old) = inner.events.pop_front()
            {
                inner.compacted = old.revision;
            }
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(Feed::Event(e));
        }
    }

    /// Drops the whole window at `revision` (after a snapshot install).
    pub fn reset(&self, revision: u64) {
        let mut inner = self.inner.lock().expect("event log poisoned");
        inner.events.clear();
        inner.compacted = revision;
        let _ = self.tx.send(Feed::Reset);
    }

    /// Everything after `from` that is still in the window, plus a live feed
    /// that continues exactly where the backlog ends.
    pub fn subscribe(
        &self,
        from: u64,
    ) -> Result<(Vec<Arc<Event>>, broadcast::Receiver<Feed>), Expired> {
        // Subscribing under the same lock that `publish` takes means no event
        // can fall between the backlog and the live feed.
        let inner = self.inner.lock().expect("event log poisoned");
        if from < inner.compacted {
            return Err(Expired {
                requested: from,
                oldest: inner.compacted,
            });
        }
        let start = inner.events.partition_point(|e| e.revision <= from);
        let backlog = inner.events.range(start..).cloned().collect();
        Ok((backlog, self.tx.subscribe()))
    }

    pub fn compacted(&self) -> u64 {
        self.inner.lock().expect("event log poisoned").compacted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: u64) -> Event {
        Event::new(
            revision,
            EventType::Added,
            format!("k{revision}"),
            Arc::new(Value::Null),
            None,
        )
    }

    #[test]
    fn backlog_then_live_without_gap() {
        let log = EventLog::new(10, 0);
        log.publish((1..=5).map(ev).collect());
        let (backlog, mut rx) = log.subscribe(3).unwrap();
        assert_eq!(
            backlog.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![4, 5]
        );
        log.publish(vec![ev(6)]);
        match rx.try_recv().unwrap() {
            Feed::Event(e) => assert_eq!(e.revision, 6),
            Feed::Reset => panic!("unexpected reset"),
        }
    }

    #[test]
    fn window_is_bounded_and_old_revisions_expire() {
        let log = EventLog::new(3, 0);
        log.publish((1..=10).map(ev).collect());
        assert_eq!(log.compacted(), 7);
        assert_eq!(
            log.subscribe(6).unwrap_err(),
            Expired {
                requested: 6,
                oldest: 7
            }
        );
        let (backlog, _) = log.subscribe(7).unwrap();
        assert_eq!(backlog.len(), 3);
    }

    #[test]
    fn reset_expires_everything_before() {
        let log = EventLog::new(10, 0);
        log.publish((1..=3).map(ev).collect());
        log.reset(50);
        assert!(log.subscribe(3).is_err());
        assert!(log.subscribe(50).unwrap().0.is_empty());
    }
}
