//! Watch: where a watch starts (a revision still in the window, or the
//! current state as synthetic ADDED events) and which events it sees.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;
use weft_api::Status;

use super::{ListOptions, Registry, Target};
use crate::selectors::{FieldSelector, LabelSelector};
use weft_store::{Event, EventType, Expired, Feed};

/// Which events of the store a watcher sees.
pub struct Filter {
    prefix: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches(o) && self.fields.matches(o)
    }

    /// The event type this watcher sees, if any: objects that start or stop
    /// matching the selectors are ADDED or DELETED, as in Kubernetes.
    pub fn classify(&self, e: &Event) -> Option<EventType> {
        if !e.key.starts_with(&self.prefix) {
            return None;
        }
        let now = self.matches(&e.object);
        let before = e.prev.as_deref().is_some_and(|p| self.matches(p));
        match e.kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => before.then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }
}

/// A watch, ready to stream.
pub struct Watch {
    /// The current state, sent first as ADDED (no revision given, or
    /// `sendInitialEvents`).
    pub initial: Vec<Value>,
    /// The revision the events continue after.
    pub from: u64,
    pub filter: Filter,
    /// The backlog after `from` and the live feed, or 410 if `from` has
    /// left the window.
    pub events: Result<(Vec<Arc<Event>>, broadcast::Receiver<Feed>), Expired>,
}

impl Registry {
    pub fn watch(
        &self,
        t: &Target,
        o: ListOptions,
        send_initial_events: bool,
    ) -> Result<Watch, Status> {
        let res = t.res;
        let rv = o
            .resource_version
            .as_deref()
            .filter(|s| !s.is_empty() && *s != "0");
        // Without a revision (or with sendInitialEvents) the watch starts with the
        // current state as synthetic ADDED events, then continues from that snapshot.
        let mut initial = Vec::new();
        let from = match rv {
            Some(rv) if !send_initial_events => rv.parse::<u64>().map_err(|_| {
                Status::bad_request(format!(
                    "invalid resourceVersion {rv:?}: must be a decimal revision"
                ))
            })?,
            _ => {
                let (rev, items, _) = self.collect(t, &o.labels, &o.fields, None, None)?;
                initial = items;
                rev
            }
        };
        let ns = if res.namespaced {
            t.namespace.as_deref()
        } else {
            None
        };
        Ok(Watch {
            initial,
            from,
            filter: Filter {
                prefix: weft_store::prefix(res.group, res.plural, ns),
                labels: o.labels,
                fields: o.fields,
            },
            events: self.store.watch(from),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(kind: EventType, labels: Value, prev: Option<Value>) -> Event {
        Event::new(
            2,
            kind,
            "\0pods\0default\0p".into(),
            Arc::new(json!({"metadata": {"name": "p", "labels": labels}})),
            prev.map(|p| Arc::new(json!({"metadata": {"name": "p", "labels": p}}))),
        )
    }

    #[test]
    fn selector_transitions() {
        let f = Filter {
            prefix: "\0pods\0default\0".into(),
            labels: LabelSelector::parse("app=web").unwrap(),
            fields: FieldSelector::default(),
        };
        let web = json!({"app": "web"});
        let other = json!({"app": "db"});
        assert_eq!(
            f.classify(&ev(EventType::Added, web.clone(), None)),
            Some(EventType::Added)
        );
        assert_eq!(f.classify(&ev(EventType::Added, other.clone(), None)), None);
        assert_eq!(
            f.classify(&ev(EventType::Modified, web.clone(), Some(other.clone()))),
            Some(EventType::Added)
        );
        assert_eq!(
            f.classify(&ev(EventType::Modified, other.clone(), Some(web.clone()))),
            Some(EventType::Deleted)
        );
        assert_eq!(
            f.classify(&ev(EventType::Deleted, web.clone(), Some(web.clone()))),
            Some(EventType::Deleted)
        );
        let elsewhere = Filter {
            prefix: "\0pods\0other\0".into(),
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        };
        assert_eq!(elsewhere.classify(&ev(EventType::Added, web, None)), None);
    }
}
