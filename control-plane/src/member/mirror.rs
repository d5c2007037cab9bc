//! Feeds the controllers' and scheduler's [`Cache`] from the store: a full
//! list, then the store's watch, relisting whenever the watch falls behind
//! or the store resets (a snapshot install).

use std::time::Duration;

use tokio::sync::{broadcast, watch as signal};
use tokio::task::JoinHandle;

use weft_cluster::Cache;
use weft_store::{Event, EventType, Feed, Store};

/// A cache that mirrors `store` until `stop` fires, and the task feeding it.
pub fn start(store: Store, stop: signal::Receiver<bool>) -> (Cache, JoinHandle<()>) {
    let cache = Cache::default();
    let feed = tokio::spawn(run(cache.clone(), store, stop));
    (cache, feed)
}

fn apply(cache: &Cache, e: &Event) {
    let new = (e.kind != EventType::Deleted).then(|| e.object.clone());
    cache.apply(&e.key, e.revision, new);
}

async fn run(cache: Cache, store: Store, mut stop: signal::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        // Subscribe first, then list: events that race the list are
        // skipped by their revision in `Cache::apply`.
        let from = store.revision();
        let Ok((backlog, mut live)) = store.watch(from) else {
            continue;
        };
        let items = match store.list("", None, None) {
            Ok((_, items, _)) => items,
            Err(e) => {
                tracing::warn!("cache list: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        cache.relist(items);
        let mut rev = from;
        for e in backlog {
            apply(&cache, &e);
            rev = e.revision;
        }
        cache.caught_up(rev);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                msg = live.recv() => match msg {
                    Ok(Feed::Event(e)) => {
                        apply(&cache, &e);
                        cache.caught_up(e.revision);
                    }
                    Ok(Feed::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}
