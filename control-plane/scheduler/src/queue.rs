//! The scheduling queue: active (by priority, then arrival), backoff (after
//! a failed attempt) and unschedulable (until the cluster changes, or five
//! minutes pass), as kube-scheduler's PriorityQueue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Where {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    /// Popped and being scheduled or bound.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    place: Where,
    priority: i64,
    attempts: u32,
    last_attempt: Option<Instant>,
}

pub struct SchedulingQueue {
    active: BinaryHeap<(i64, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, String)>>,
    pods: HashMap<String, Entry>,
    seq: u64,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_unschedulable: Duration,
}

impl Default for SchedulingQueue {
    fn default() -> Self {
        SchedulingQueue {
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            pods: HashMap::new(),
            seq: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable: Duration::from_secs(300),
        }
    }
}

impl SchedulingQueue {
    fn push_active(&mut self, key: &str) {
        let Some(e) = self.pods.get_mut(key) else {
            return;
        };
        e.place = Where::Active;
        self.seq += 1;
        self.active
            .push((e.priority, Reverse(self.seq), key.to_string()));
    }

    /// A pending pod appeared or its spec changed.
    pub fn add(&mut self, key: &str, priority: i64) {
        match self.pods.get_mut(key) {
            Some(e) => {
                e.priority = priority;
                if matches!(e.place, Where::Unschedulable(_)) {
                    self.push_active(key);
                }
            }
            None => {
                self.pods.insert(
                    key.to_string(),
                    Entry {
                        place: Where::Active,
                        priority,
                        attempts: 0,
                        last_attempt: None,
                    },
                );
                self.push_active(key);
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.pods.remove(key);
    }

    pub fn contains(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    /// The highest-priority active pod.
    pub fn pop(&mut self) -> Option<String> {
        while let Some((_, _, key)) = self.active.pop() {
            if let Some(e) = self.pods.get_mut(&key)
                && e.place == Where::Active
            {
                e.place = Where::InFlight;
                e.attempts += 1;
                e.last_attempt = Some(Instant::now());
                return Some(key);
            }
        }
        None
    }

    pub fn len_active(&self) -> usize {
        self.pods
            .values()
            .filter(|e| e.place == Where::Active)
            .count()
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(self.max_backoff)
    }

    /// No node fits: wait for a cluster change.
    pub fn unschedulable(&mut self, key: &str) {
        if let Some(e) = self.pods.get_mut(key) {
            e.place = Where::Unschedulable(Instant::now());
        }
    }

    /// An error (such as a failed bind): retry after the pod's backoff.
    pub fn backoff(&mut self, key: &str) {
        let Some(attempts) = self.pods.get(key).map(|e| e.attempts) else {
            return;
        };
        let until = Instant::now() + self.backoff_for(attempts);
        if let Some(e) = self.pods.get_mut(key) {
            e.place = Where::Backoff(until);
        }
        self.backoff.push(Reverse((until, key.to_string())));
    }

    /// The cluster changed (a node, or a pod went away): unschedulable pods
    /// get another try, after their backoff.
    pub fn move_all(&mut self) {
        let now = Instant::now();
        let keys: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| matches!(e.place, Where::Unschedulable(_)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let (attempts, last) = {
                let e = &self.pods[&k];
                (e.attempts, e.last_attempt.unwrap_or(now))
            };
            let until = last + self.backoff_for(attempts);
            if until <= now {
                self.push_active(&k);
            } else if let Some(e) = self.pods.get_mut(&k) {
                e.place = Where::Backoff(until);
                self.backoff.push(Reverse((until, k)));
            }
        }
    }

    /// Moves pods whose backoff ended (or that waited too long as unschedulable) to active.
    pub fn flush(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((until, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((until, key))) = self.backoff.pop() else {
                break;
            };
            if self
                .pods
                .get(&key)
                .is_some_and(|e| e.place == Where::Backoff(until))
            {
                self.push_active(&key);
            }
        }
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, e)| matches!(e.place, Where::Unschedulable(t) if now.duration_since(t) >= self.max_unschedulable))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.push_active(&k);
        }
    }

    /// When `flush` next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let backoff = self.backoff.peek().map(|Reverse((t, _))| *t);
        let unsched = self
            .pods
            .values()
            .filter_map(|e| match e.place {
                Where::Unschedulable(t) => Some(t + self.max_unschedulable),
                _ => None,
            })
            .min();
        backoff.into_iter().chain(unsched).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn priority_then_arrival_order() {
        let mut q = SchedulingQueue::default();
        q.add("low", 0);
        q.add("high", 100);
        q.add("low2", 0);
        assert_eq!(q.pop().as_deref(), Some("high"));
        assert_eq!(q.pop().as_deref(), Some("low"));
        assert_eq!(q.pop().as_deref(), Some("low2"));
        assert_eq!(q.pop(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_waits_for_a_change_then_backs_off() {
        let mut q = SchedulingQueue::default();
        q.add("p", 0);
        assert_eq!(q.pop().as_deref(), Some("p"));
        q.unschedulable("p");
        q.flush();
        assert_eq!(q.pop(), None, "parked until something changes");
        q.move_all();
        assert_eq!(q.pop(), None, "still within its 1 s backoff");
        tokio::time::advance(Duration::from_millis(1100)).await;
        q.flush();
        assert_eq!(q.pop().as_deref(), Some("p"));
        // A spec change re-activates at once.
        q.unschedulable("p");
        q.add("p", 0);
        assert_eq!(q.pop().as_deref(), Some("p"));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_exponentially_and_long_waits_flush() {
        let mut q = SchedulingQueue::default();
        q.add("p", 0);
        q.pop();
        q.backoff("p"); // first attempt: 1 s
        tokio::time::advance(Duration::from_millis(1100)).await;
        q.flush();
        assert_eq!(q.pop().as_deref(), Some("p"));
        q.backoff("p"); // second attempt: 2 s
        tokio::time::advance(Duration::from_millis(1500)).await;
        q.flush();
        assert_eq!(q.pop(), None);
        tokio::time::advance(Duration::from_millis(600)).await;
        q.flush();
        assert_eq!(q.pop().as_deref(), Some("p"));
        q.unschedulable("p");
        tokio::time::advance(Duration::from_secs(301)).await;
        q.flush();
        assert_eq!(
            q.pop().as_deref(),
            Some("p"),
            "unschedulable pods are retried after 5 minutes"
        );
    }
}
