//! Single flight by key: one pull of an artifact or image at a time on a
//! node. The pods that wait for a pull in flight then find its result in
//! the cache, so ten pods of one uncached image make one pull.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct KeyedLock {
    /// Only keys someone holds or waits for are alive here.
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// Held while the work for its key runs.
pub struct Held {
    _guard: OwnedMutexGuard<()>,
    /// Whether another holder ran first, while this one waited: its result
    /// (a fresh pull) is what this one may use.
    pub waited: bool,
}

impl KeyedLock {
    pub async fn lock(&self, key: &str) -> Held {
        let lock = {
            let mut locks = self.locks.lock().expect("keyed lock map");
            locks.retain(|_, l| l.strong_count() > 0);
            match locks.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        match lock.clone().try_lock_owned() {
            Ok(g) => Held {
                _guard: g,
                waited: false,
            },
            Err(_) => Held {
                _guard: lock.lock_owned().await,
                waited: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_holder_per_key_and_waiters_know_they_waited() {
        let locks = Arc::new(KeyedLock::default());
        let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
            tasks.spawn(async move {
                let held = locks.lock("reg/app:1").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                held.waited
            });
        }
        let waited: Vec<bool> = tasks.join_all().await;
        assert_eq!(most.load(Ordering::SeqCst), 1, "one holder at a time");
        assert_eq!(
            waited.iter().filter(|w| !**w).count(),
            1,
            "only the first did not wait"
        );
        // Another key is not held up by this one.
        let a = locks.lock("a").await;
        let b = tokio::time::timeout(Duration::from_millis(1), locks.lock("b")).await;
        assert!(b.is_ok() && !a.waited);
        drop((a, b));
        assert!(
            locks
                .locks
                .lock()
                .unwrap()
                .values()
                .all(|l| l.strong_count() == 0)
        );
    }
}
