//! The checks of a robustness run, as etcd's robustness tests make them:
//! linearizability of every object's history (Wing & Gong's search with
//! Lowe's memoization, as porcupine does it), revisions that follow real
//! time, watch guarantees (ordered, unique, atomic, reliable, resumable),
//! no acknowledged write lost, no phantom write, and lists that show
//! exactly the state at their resourceVersion.
//!
//! An op with no definite answer (`Ret::Unknown`) may have been applied at
//! any time after it was called. Writes name themselves in the object they
//! write, so where any read, list or watch saw such a write its outcome is
//! patched in (`Written(rv)`, still open-ended); where nothing saw it, it is
//! dropped, as etcd's checker drops failed writes that never persisted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::history::{Call, Event, EventType, History, NEVER, Op, Ret, Seen};

/// Every check; an empty list means the history passed.
pub fn check(h: &History) -> Vec<String> {
    let mut v = Vec::new();
    let ops = patch(h);
    for (key, ops) in by_key(&ops) {
        if let Err(e) = linearizable(&ops) {
            v.push(format!("object {key}: not linearizable: {e}"));
        }
    }
    revisions_follow_real_time(&ops, &mut v);
    let log = watch_log(h, &mut v);
    acknowledged_writes_in_log(&ops, &log, &mut v);
    log_replays(&ops, &log, &mut v);
    lists_match_log(h, &ops, &log, &mut v);
    finals_agree(h, &log, &mut v);
    v
}

/// Resolves unknown writes from what was observed, and drops reads without
/// an answer and writes that nothing ever saw.
fn patch(h: &History) -> Vec<Op> {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let lists = h.lists.iter().chain(&h.finals).flat_map(|l| &l.items);
    let events = h
        .streams
        .iter()
        .flat_map(|s| &s.events)
        .filter(|e| e.kind != EventType::Deleted);
    for s in lists.chain(events.map(|e| &e.obj)) {
        // An object's rv is that of its write, except in a deletion event.
        seen.entry(s.op).or_insert(s.rv);
    }
    h.ops
        .iter()
        .filter_map(|op| {
            if op.ret != Ret::Unknown {
                return Some(op.clone());
            }
            match &op.call {
                Call::Get { .. } => None,
                Call::Delete { .. } => Some(op.clone()),
                Call::Create { op: id, .. } | Call::Update { op: id, .. } => {
                    seen.get(id).map(|&rv| Op {
                        ret: Ret::Written(rv),
                        end: NEVER,
                        ..op.clone()
                    })
                }
            }
        })
        .collect()
}

fn by_key(ops: &[Op]) -> BTreeMap<String, Vec<Op>> {
    let mut m: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in ops {
        m.entry(op.call.key().to_string())
            .or_default()
            .push(op.clone());
    }
    m
}

/// One object's state in the model: its resourceVersion if it exists, and
/// the highest resourceVersion it ever had (they only grow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Obj {
    cur: Option<u64>,
    last: u64,
}

/// The model's step: the states `op` may lead to from `s` (none: `op`
/// cannot happen in `s`). Only an unknown delete has two.
fn step(s: Obj, op: &Op) -> Vec<Obj> {
    let present_other = |exp: u64| s.cur.is_some() && s.cur != Some(exp);
    let ok = match (&op.call, &op.ret) {
        (Call::Create { .. }, Ret::Written(rv)) if s.cur.is_none() && *rv > s.last => {
            return vec![Obj {
                cur: Some(*rv),
                last: *rv,
            }];
        }
        (Call::Update { expected, .. }, Ret::Written(rv))
            if s.cur == Some(*expected) && *rv > s.last =>
        {
            return vec![Obj {
                cur: Some(*rv),
                last: *rv,
            }];
        }
        (Call::Delete { expected, .. }, Ret::Deleted) if s.cur == Some(*expected) => {
            return vec![Obj {
                cur: None,
                last: s.last,
            }];
        }
        (Call::Delete { expected, .. }, Ret::Unknown) => {
            let mut out = vec![s];
            if s.cur == Some(*expected) {
                out.push(Obj {
                    cur: None,
                    last: s.last,
                });
            }
            return out;
        }
        (Call::Create { .. }, Ret::AlreadyExists) => s.cur.is_some(),
        (Call::Update { expected, .. } | Call::Delete { expected, .. }, Ret::Conflict) => {
            present_other(*expected)
        }
        (Call::Update { .. } | Call::Delete { .. } | Call::Get { .. }, Ret::NotFound) => {
            s.cur.is_none()
        }
        (Call::Get { .. }, Ret::Found(rv)) => s.cur == Some(*rv),
        _ => false,
    };
    if ok { vec![s] } else { vec![] }
}

/// Every state the set `states` may be in after `op`.
fn step_all(states: &BTreeSet<Obj>, op: &Op) -> BTreeSet<Obj> {
    states.iter().flat_map(|&s| step(s, op)).collect()
}

/// Wing & Gong's search for a linearization of one object's ops, with
/// Lowe's cache of (ops linearized, state) pairs already explored. Entries
/// are the ops' calls and returns in time order, in a doubly linked list
/// from which linearized ops are lifted out (and put back on backtrack).
fn linearizable(ops: &[Op]) -> Result<(), String> {
    let n = ops.len();
    if n == 0 {
        return Ok(());
    }
    // Entry 2i is op i's call, 2i+1 its return; node 2n is the head.
    let mut order: Vec<usize> = (0..2 * n).collect();
    // At equal times calls come first: such ops count as concurrent.
    order.sort_by_key(|&e| {
        let op = &ops[e / 2];
        if e % 2 == 0 {
            (op.start, 0)
        } else {
            (op.end, 1)
        }
    });
    let head = 2 * n;
    let mut next = vec![usize::MAX; 2 * n + 1];
    let mut prev = vec![usize::MAX; 2 * n + 1];
    let mut last = head;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        for x in [e, e + 1] {
            let (p, nx) = (prev[x], next[x]);
            next[p] = nx;
            if nx != usize::MAX {
                prev[nx] = p;
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        for x in [e + 1, e] {
            let (p, nx) = (prev[x], next[x]);
            next[p] = x;
            if nx != usize::MAX {
                prev[nx] = x;
            }
        }
    };

    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut state: BTreeSet<Obj> = [Obj { cur: None, last: 0 }].into();
    let mut cache: HashSet<(Vec<u64>, BTreeSet<Obj>)> = HashSet::new();
    let mut stack: Vec<(usize, BTreeSet<Obj>)> = Vec::new();
    let mut longest = 0;
    let mut cur = next[head];
    while next[head] != usize::MAX {
        if cur % 2 == 0 {
            let i = cur / 2;
            let after = step_all(&state, &ops[i]);
            if !after.is_empty() {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), after.clone())) {
                    stack.push((cur, std::mem::replace(&mut state, after)));
                    linearized = lin;
                    longest = longest.max(stack.len());
                    lift(&mut next, &mut prev, cur);
                    cur = next[head];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // A return reached before its op was linearized: backtrack.
            let Some((e, s)) = stack.pop() else {
                return Err(format!(
                    "no order of its {n} ops fits (at most {longest} linearized); ops by start:\n{}",
                    describe(ops)
                ));
            };
            state = s;
            linearized[e / 2 / 64] &= !(1 << (e / 2 % 64));
            unlift(&mut next, &mut prev, e);
            cur = next[e];
        }
    }
    Ok(())
}

fn describe(ops: &[Op]) -> String {
    let mut ops: Vec<&Op> = ops.iter().collect();
    ops.sort_by_key(|o| o.start);
    ops.iter()
        .map(|o| {
            let end = if o.end == NEVER {
                "∞".into()
            } else {
                format!("{:.3}ms", o.end as f64 / 1e6)
            };
            format!(
                "  [{:.3}ms, {end}] client {} via member {}: {:?} -> {:?}",
                o.start as f64 / 1e6,
                o.client,
                o.member + 1,
                o.call,
                o.ret
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes acknowledged with a resourceVersion: each revision is one write's,
/// and a write that finished before another started has the lower one.
fn revisions_follow_real_time(ops: &[Op], v: &mut Vec<String>) {
    let mut writes: Vec<(u64, &Op)> = ops
        .iter()
        .filter_map(|o| match o.ret {
            Ret::Written(rv) => Some((rv, o)),
            _ => None,
        })
        .collect();
    writes.sort_by_key(|w| w.0);
    for w in writes.windows(2) {
        if w[0].0 == w[1].0 {
            v.push(format!(
                "two writes acknowledged at revision {}: {:?} and {:?}",
                w[0].0, w[0].1.call, w[1].1.call
            ));
        }
    }
    // With writes in revision order, a later revision must not have ended
    // before an earlier one started: compare with the latest start so far.
    let mut latest_start: Option<(u64, &Op)> = None;
    for &(rv, o) in &writes {
        if let Some((rv0, o0)) = latest_start
            && o.end < o0.start
        {
            v.push(format!(
                "revision {rv} ({:?}) ended before revision {rv0} ({:?}) started",
                o.call, o0.call
            ));
        }
        if latest_start.is_none_or(|(_, l)| o.start > l.start) {
            latest_start = Some((rv, o));
        }
    }
}

/// Merges every watch stream into one log by revision, checking that each
/// stream is ordered and unique, that streams agree on what each revision
/// was (atomic: one revision, one event), and that no stream skipped an
/// event that another delivered within its span (reliable; a resumed
/// stream starts at the last revision its watcher saw, so this is also
/// resumable).
fn watch_log(h: &History, v: &mut Vec<String>) -> BTreeMap<u64, Event> {
    let mut log: BTreeMap<u64, Event> = BTreeMap::new();
    for s in &h.streams {
        let mut last = s.from;
        for e in &s.events {
            if e.obj.rv <= last {
                v.push(format!(
                    "watcher {} on member {}: revision {} after {last} (not ordered or not unique)",
                    s.watcher,
                    s.member + 1,
                    e.obj.rv
                ));
            }
            last = last.max(e.obj.rv);
            match log.get(&e.obj.rv) {
                Some(other) if other != e => v.push(format!(
                    "revision {} is {:?} on one watch and {:?} on another",
                    e.obj.rv, other, e
                )),
                _ => {
                    log.insert(e.obj.rv, e.clone());
                }
            }
        }
    }
    for s in &h.streams {
        let Some(end) = s.events.last().map(|e| e.obj.rv) else {
            continue;
        };
        let got: BTreeSet<u64> = s.events.iter().map(|e| e.obj.rv).collect();
        let missed: Vec<u64> = log
            .range(s.from + 1..=end)
            .map(|(rv, _)| *rv)
            .filter(|rv| !got.contains(rv))
            .collect();
        if !missed.is_empty() {
            v.push(format!(
                "watcher {} on member {} (from {}) missed revisions {missed:?}",
                s.watcher,
                s.member + 1,
                s.from
            ));
        }
    }
    log
}

/// Every acknowledged write is in the watch log at its revision, and every
/// acknowledged delete removed the version it named.
fn acknowledged_writes_in_log(ops: &[Op], log: &BTreeMap<u64, Event>, v: &mut Vec<String>) {
    let mut deleted: HashSet<(&str, u64)> = HashSet::new();
    let mut last_rv: HashMap<&str, u64> = HashMap::new();
    for e in log.values() {
        if e.kind == EventType::Deleted
            && let Some(&rv) = last_rv.get(e.obj.key.as_str())
        {
            deleted.insert((e.obj.key.as_str(), rv));
        }
        last_rv.insert(&e.obj.key, e.obj.rv);
    }
    for o in ops {
        match (&o.call, &o.ret) {
            (call, Ret::Written(rv)) => match log.get(rv) {
                Some(e) if Some(e.obj.op) == call.write_id() && e.kind != EventType::Deleted => {}
                other => v.push(format!(
                    "acknowledged write {call:?} at revision {rv} is not in the watch log (there: {other:?})"
                )),
            },
            (Call::Delete { key, expected }, Ret::Deleted)
                if !deleted.contains(&(key.as_str(), *expected)) =>
            {
                v.push(format!(
                    "acknowledged delete of {key} at {expected} is not in the watch log"
                ));
            }
            _ => {}
        }
    }
}

/// The log replays: every event's write was made by a client (no phantom
/// writes), ADDED only for an absent object, MODIFIED and DELETED only for
/// a present one.
fn log_replays(ops: &[Op], log: &BTreeMap<u64, Event>, v: &mut Vec<String>) {
    let writes: HashMap<u64, &Call> = ops
        .iter()
        .filter_map(|o| o.call.write_id().map(|id| (id, &o.call)))
        .collect();
    let mut present: HashSet<&str> = HashSet::new();
    for (rv, e) in log {
        let key = e.obj.key.as_str();
        if writes.get(&e.obj.op).is_none_or(|c| c.key() != key) {
            v.push(format!("revision {rv}: {e:?} was written by no client"));
        }
        let fits = match e.kind {
            EventType::Added => present.insert(key),
            EventType::Modified => present.contains(key),
            EventType::Deleted => present.remove(key),
        };
        if !fits {
            v.push(format!(
                "revision {rv}: {e:?} does not follow the object's previous events"
            ));
        }
    }
}

/// The objects at revision `rv`, replayed from the log.
fn state_at(log: &BTreeMap<u64, Event>, rv: u64) -> Vec<Seen> {
    let mut objs: BTreeMap<&str, &Seen> = BTreeMap::new();
    for e in log.range(..=rv).map(|(_, e)| e) {
        if e.kind == EventType::Deleted {
            objs.remove(e.obj.key.as_str());
        } else {
            objs.insert(&e.obj.key, &e.obj);
        }
    }
    objs.into_values().cloned().collect()
}

/// A list is fresh (its revision covers every write acknowledged before it
/// was sent) and shows exactly the state at its revision.
fn lists_match_log(h: &History, ops: &[Op], log: &BTreeMap<u64, Event>, v: &mut Vec<String>) {
    let covered = h.streams.iter().map(|s| s.from).min().unwrap_or(u64::MAX);
    for l in h.lists.iter().chain(&h.finals) {
        let newest_before = ops
            .iter()
            .filter(|o| o.end < l.start)
            .filter_map(|o| match o.ret {
                Ret::Written(rv) => Some(rv),
                _ => None,
            })
            .max();
        if let Some(w) = newest_before.filter(|&w| w > l.rv) {
            v.push(format!(
                "stale list on member {}: revision {} though revision {w} was acknowledged before it was sent",
                l.member + 1,
                l.rv
            ));
        }
        if l.rv >= covered && sorted(&l.items) != state_at(log, l.rv) {
            v.push(format!(
                "list on member {} at revision {} shows {:?}, the watch log {:?}",
                l.member + 1,
                l.rv,
                sorted(&l.items),
                state_at(log, l.rv)
            ));
        }
    }
}

fn sorted(items: &[Seen]) -> Vec<Seen> {
    let mut s = items.to_vec();
    s.sort();
    s
}

/// Every member ends with the same objects, and they are the log's.
fn finals_agree(h: &History, log: &BTreeMap<u64, Event>, v: &mut Vec<String>) {
    let end = state_at(log, u64::MAX);
    for l in &h.finals {
        if sorted(&l.items) != end {
            v.push(format!(
                "member {} ends with {:?}, the watch log with {end:?}",
                l.member + 1,
                sorted(&l.items)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{List, Stream};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn op(client: usize, call: Call, ret: Ret, start: u64, end: u64) -> Op {
        Op {
            client,
            member: 0,
            call,
            ret,
            start,
            end,
        }
    }

    fn key() -> String {
        "k".into()
    }

    #[test]
    fn concurrent_ops_may_take_either_order() {
        // A get overlapping a create may see the object or not.
        let ops = vec![
            op(
                0,
                Call::Create { key: key(), op: 1 },
                Ret::Written(5),
                0,
                10,
            ),
            op(1, Call::Get { key: key() }, Ret::NotFound, 1, 9),
            op(2, Call::Get { key: key() }, Ret::Found(5), 2, 8),
        ];
        assert_eq!(linearizable(&ops), Ok(()));
    }

    #[test]
    fn a_read_after_a_write_must_see_it() {
        let ops = vec![
            op(
                0,
                Call::Create { key: key(), op: 1 },
                Ret::Written(5),
                0,
                10,
            ),
            op(1, Call::Get { key: key() }, Ret::NotFound, 11, 12),
        ];
        assert!(linearizable(&ops).is_err());
    }

    #[test]
    fn an_unknown_delete_may_or_may_not_apply() {
        let create = op(0, Call::Create { key: key(), op: 1 }, Ret::Written(5), 0, 1);
        let del = op(
            1,
            Call::Delete {
                key: key(),
                expected: 5,
            },
            Ret::Unknown,
            2,
            NEVER,
        );
        for seen in [Ret::Found(5), Ret::NotFound] {
            let get = op(2, Call::Get { key: key() }, seen, 3, 4);
            assert_eq!(linearizable(&[create.clone(), del.clone(), get]), Ok(()));
        }
    }

    /// A simulated linearizable store under `clients` concurrent clients:
    /// each op takes effect at one instant inside its interval. Returns the
    /// history and the watch stream of every revision.
    fn simulate(seed: u64, clients: usize, steps: usize) -> History {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys = ["a", "b", "c"];
        let mut objs: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut rv = 10;
        let mut events = Vec::new();
        let mut ops = Vec::new();
        let mut open: Vec<Option<(Call, u64, u64)>> = vec![None; clients];
        let mut next_op = 1;
        for t in 0..steps as u64 {
            let c = rng.random_range(0..clients);
            // Each client alternates: call, then (later) take effect and return.
            match open[c].take() {
                None => {
                    let k = keys[rng.random_range(0..keys.len())].to_string();
                    let cur = objs.get(k.as_str()).map(|o| o.0).unwrap_or(1);
                    let call = match rng.random_range(0..4) {
                        0 => Call::Create {
                            key: k,
                            op: next_op,
                        },
                        1 => Call::Update {
                            key: k,
                            op: next_op,
                            expected: cur,
                        },
                        2 => Call::Delete {
                            key: k,
                            expected: cur,
                        },
                        _ => Call::Get { key: k },
                    };
                    next_op += 1;
                    open[c] = Some((call, t * 10, 0));
                }
                Some((call, start, _)) => {
                    let k: &'static str = keys.iter().find(|k| **k == call.key()).unwrap();
                    let cur = objs.get(k).copied();
                    let mut write = |kind, id: u64, objs: &mut BTreeMap<&str, (u64, u64)>| {
                        rv += 1;
                        let seen = Seen {
                            key: k.into(),
                            rv,
                            op: id,
                        };
                        events.push(Event { kind, obj: seen });
                        if kind == EventType::Deleted {
                            objs.remove(k);
                        } else {
                            objs.insert(k, (rv, id));
                        }
                        rv
                    };
                    let ret = match (&call, cur) {
                        (Call::Create { op, .. }, None) => {
                            Ret::Written(write(EventType::Added, *op, &mut objs))
                        }
                        (Call::Create { .. }, Some(_)) => Ret::AlreadyExists,
                        (Call::Update { op, expected, .. }, Some((r, _))) if r == *expected => {
                            Ret::Written(write(EventType::Modified, *op, &mut objs))
                        }
                        (Call::Delete { expected, .. }, Some((r, id))) if r == *expected => {
                            write(EventType::Deleted, id, &mut objs);
                            Ret::Deleted
                        }
                        (Call::Update { .. } | Call::Delete { .. }, Some(_)) => Ret::Conflict,
                        (Call::Get { .. }, Some((r, _))) => Ret::Found(r),
                        (_, None) => Ret::NotFound,
                    };
                    ops.push(op(c, call, ret, start, t * 10 + 5));
                }
            }
        }
        let finals = vec![List {
            member: 0,
            start: steps as u64 * 10,
            end: steps as u64 * 10 + 1,
            rv,
            items: objs
                .iter()
                .map(|(k, (r, id))| Seen {
                    key: k.to_string(),
                    rv: *r,
                    op: *id,
                })
                .collect(),
        }];
        let streams = vec![Stream {
            watcher: 0,
            member: 0,
            from: 10,
            events,
        }];
        History {
            seed,
            ops,
            streams,
            finals,
            ..Default::default()
        }
    }

    #[test]
    fn simulated_linearizable_histories_pass() {
        for seed in 0..20 {
            let h = simulate(seed, 4, 400);
            assert_eq!(check(&h), Vec::<String>::new(), "seed {seed}");
        }
    }

    /// The checker can fail: a read that returns an older version after a
    /// newer one was acknowledged (a stale read) is a violation.
    #[test]
    fn a_seeded_stale_read_is_a_violation() {
        for seed in 0..20 {
            let mut h = simulate(seed, 4, 400);
            // The first get that found a version replaced by an update that
            // had returned before the get was sent.
            let stale = h.ops.iter().enumerate().find_map(|(i, g)| {
                let Ret::Found(rv) = g.ret else { return None };
                h.ops.iter().find_map(|w| match (&w.call, &w.ret) {
                    (Call::Update { key, expected, .. }, Ret::Written(_))
                        if *key == g.call.key() && *expected < rv && w.end < g.start =>
                    {
                        Some((i, *expected))
                    }
                    _ => None,
                })
            });
            let (i, old) = stale.expect("the simulation made such a read");
            h.ops[i].ret = Ret::Found(old);
            let v = check(&h);
            assert!(
                v.iter().any(|e| e.contains("not linearizable")),
                "seed {seed}: the stale read went unreported: {v:?}"
            );
        }
    }

    #[test]
    fn watch_gaps_reorders_and_lost_writes_are_violations() {
        let h = simulate(7, 3, 300);
        assert!(h.streams[0].events.len() > 10);
        // A second watcher that missed one event.
        let mut gap = h.clone();
        let mut s = gap.streams[0].clone();
        s.watcher = 1;
        s.events.remove(5);
        gap.streams.push(s);
        assert!(
            check(&gap).iter().any(|e| e.contains("missed revisions")),
            "gap"
        );
        // Two events swapped.
        let mut swapped = h.clone();
        swapped.streams[0].events.swap(3, 4);
        assert!(
            check(&swapped).iter().any(|e| e.contains("not ordered")),
            "order"
        );
        // An acknowledged write that no watch delivered.
        let mut lost = h.clone();
        let last_write = lost.streams[0]
            .events
            .iter()
            .rposition(|e| e.kind == EventType::Added)
            .unwrap();
        lost.streams[0].events.remove(last_write);
        assert!(
            check(&lost)
                .iter()
                .any(|e| e.contains("not in the watch log")),
            "lost"
        );
    }
}
