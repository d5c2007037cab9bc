//! Kubernetes-shaped traffic on ConfigMaps through the real API of every
//! member: clients that create, update and delete with resourceVersion
//! preconditions (about 75/15/10 of writes) and read, and a list+watch
//! client on every member. Everything they see is recorded in a
//! [`History`].
//!
//! The members listen only inside the test's network namespaces, so each
//! client thread first moves itself into its member's namespace: the
//! sockets it opens (on a current-thread runtime) live there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::hosts::Members;

use super::history::{Call, Event, EventType, History, List, NEVER, Nanos, Op, Ret, Seen, Stream};

/// How to reach one member.
#[derive(Clone)]
pub struct Member {
    pub url: String,
    pub netns: String,
}

/// What every client needs: the members, the cluster CA and a token.
#[derive(Clone)]
pub struct Api {
    pub members: Vec<Member>,
    pub ca_pem: Vec<u8>,
    pub token: String,
    /// The run's time zero.
    pub t0: Instant,
}

const PATH: &str = "/api/v1/namespaces/default/configmaps";
/// Shared by all clients, so that their preconditions collide.
const KEYS: usize = 12;
/// A client gives up on a request after this: its outcome is unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

impl Api {
    /// The members of `m`, with its CA and admin token; time zero is now.
    pub fn of(m: &Members) -> Api {
        let read = |p: &str| std::fs::read(m.dirs[0].join(p)).expect(p);
        Api {
            members: (0..m.dirs.len())
                .map(|i| Member {
                    url: m.url(i),
                    netns: m.hosts.hosts[i].netns.clone(),
                })
                .collect(),
            ca_pem: read("pki/ca.crt"),
            token: String::from_utf8(read("tokens/admin"))
                .unwrap()
                .trim()
                .to_string(),
            t0: Instant::now(),
        }
    }

    fn now(&self) -> Nanos {
        self.t0.elapsed().as_nanos() as Nanos
    }

    /// Moves this thread into member `m`'s namespace and builds a client.
    pub fn client(&self, m: usize) -> (tokio::runtime::Runtime, reqwest::Client) {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.members[m].netns))
            .expect("open the member's namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the member's namespace");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem).unwrap())
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        (rt, http)
    }
}

fn seen(obj: &Value) -> Option<Seen> {
    Some(Seen {
        key: obj.pointer("/metadata/name")?.as_str()?.to_string(),
        rv: obj
            .pointer("/metadata/resourceVersion")?
            .as_str()?
            .parse()
            .ok()?,
        op: obj.pointer("/data/op")?.as_str()?.parse().ok()?,
    })
}

fn reason(body: &Value) -> &str {
    body.get("reason").and_then(Value::as_str).unwrap_or("")
}

/// One traffic client pinned to member `member`, until `until`.
pub fn client(api: Api, id: usize, member: usize, seed: u64, until: Instant) -> Vec<Op> {
    let (rt, http) = api.client(member);
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let base = &api.members[member].url;
    let auth = format!("Bearer {}", api.token);
    let mut ops = Vec::new();
    let mut next_id = 0u64;
    rt.block_on(async {
        // One request: its status and JSON body, or None for no answer.
        let send = |req: reqwest::RequestBuilder| {
            let auth = auth.clone();
            async move {
                let resp = req
                    .header("Authorization", auth)
                    .timeout(REQUEST_TIMEOUT)
                    .send()
                    .await
                    .ok()?;
                let status = resp.status();
                let body: Value = resp.json().await.ok()?;
                Some((status, body))
            }
        };
        while Instant::now() < until {
            let key = format!("k{:02}", rng.random_range(0..KEYS));
            let url = format!("{base}{PATH}/{key}");
            let roll = rng.random_range(0..100);
            // Updates and deletes read the object first, for its resourceVersion.
            let mut current = None;
            if roll >= 75 {
                let start = api.now();
                let got = send(http.get(&url)).await;
                let ret = match &got {
                    Some((StatusCode::OK, b)) => match seen(b) {
                        Some(s) => {
                            current = Some(s.rv);
                            Ret::Found(s.rv)
                        }
                        None => Ret::Unknown,
                    },
                    Some((StatusCode::NOT_FOUND, _)) => Ret::NotFound,
                    _ => Ret::Unknown,
                };
                let call = Call::Get { key: key.clone() };
                record(&api, &mut ops, (id, member), call, ret, start).await;
                if current.is_none() {
                    continue;
                }
            }
            next_id += 1;
            let op_id = (id as u64 + 1) * 1_000_000 + next_id;
            let (call, req) = match (roll, current) {
                (0..75, _) => (
                    Call::Create {
                        key: key.clone(),
                        op: op_id,
                    },
                    http.post(format!("{base}{PATH}")).json(&json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": key}, "data": {"op": op_id.to_string()}})),
                ),
                (75..90, Some(rv)) => (
                    Call::Update {
                        key: key.clone(),
                        op: op_id,
                        expected: rv,
                    },
                    http.put(&url).json(&json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": key, "resourceVersion": rv.to_string()},
                        "data": {"op": op_id.to_string()}})),
                ),
                (_, Some(rv)) => (
                    Call::Delete {
                        key: key.clone(),
                        expected: rv,
                    },
                    http.delete(&url).json(&json!({
                        "kind": "DeleteOptions", "apiVersion": "v1",
                        "preconditions": {"resourceVersion": rv.to_string()}})),
                ),
                _ => unreachable!("updates and deletes have a resourceVersion"),
            };
            let start = api.now();
            let got = send(req).await;
            let ret = match (&call, &got) {
                (Call::Delete { .. }, Some((StatusCode::OK, _))) => Ret::Deleted,
                (_, Some((StatusCode::OK | StatusCode::CREATED, b))) => match seen(b) {
                    Some(s) => Ret::Written(s.rv),
                    None => Ret::Unknown,
                },
                (_, Some((StatusCode::NOT_FOUND, _))) => Ret::NotFound,
                (_, Some((StatusCode::CONFLICT, b))) if reason(b) == "AlreadyExists" => {
                    Ret::AlreadyExists
                }
                (_, Some((StatusCode::CONFLICT, _))) => Ret::Conflict,
                _ => Ret::Unknown,
            };
            record(&api, &mut ops, (id, member), call, ret, start).await;
        }
    });
    ops
}

/// Records a call that `client` sent to `member`; one without an answer
/// may take effect any time later, and is followed by a pause (the member
/// may be down: retry soon, not in a tight loop).
async fn record(
    api: &Api,
    ops: &mut Vec<Op>,
    (client, member): (usize, usize),
    call: Call,
    ret: Ret,
    start: Nanos,
) {
    let unknown = ret == Ret::Unknown;
    let end = if unknown { NEVER } else { api.now() };
    ops.push(Op {
        client,
        member,
        call,
        ret,
        start,
        end,
    });
    if unknown {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lists the ConfigMaps on `member`: None if it did not answer with a list.
async fn list(api: &Api, http: &reqwest::Client, member: usize) -> Option<List> {
    let start = api.now();
    let resp = http
        .get(format!("{}{PATH}", api.members[member].url))
        .bearer_auth(&api.token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    let rv = body
        .pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()?;
    let items = body
        .get("items")?
        .as_array()?
        .iter()
        .filter_map(seen)
        .collect();
    Some(List {
        member,
        start,
        end: api.now(),
        rv,
        items,
    })
}

/// What the list+watch clients record.
#[derive(Default)]
pub struct Observed {
    pub lists: Vec<List>,
    pub streams: Vec<Stream>,
}

/// A list+watch client on `member`, as an informer is: list, then watch
/// from the list's revision; when the watch ends, resume from the last
/// revision seen; on 410 Gone, list again. Until `until`.
pub fn watcher(api: Api, id: usize, member: usize, until: Instant, out: Arc<Mutex<Observed>>) {
    let (rt, http) = api.client(member);
    rt.block_on(async {
        let mut from: Option<u64> = None;
        while Instant::now() < until {
            let rv = match from {
                Some(rv) => rv,
                None => match list(&api, &http, member).await {
                    Some(l) => {
                        let rv = l.rv;
                        out.lock().unwrap().lists.push(l);
                        rv
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            let mut stream = Stream {
                watcher: id,
                member,
                from: rv,
                events: Vec::new(),
            };
            let gone = watch(&api, &http, member, rv, until, &mut stream.events).await;
            from = match (gone, stream.events.last()) {
                (true, _) => None,
                (false, Some(e)) => Some(e.obj.rv),
                (false, None) => Some(rv),
            };
            out.lock().unwrap().streams.push(stream);
            if !gone {
                // The member may be down or cut off: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}

/// One watch request from `rv`; true if the server answered 410 Gone.
async fn watch(
    api: &Api,
    http: &reqwest::Client,
    member: usize,
    rv: u64,
    until: Instant,
    events: &mut Vec<Event>,
) -> bool {
    let url = format!(
        "{}{PATH}?watch=1&resourceVersion={rv}&allowWatchBookmarks=false",
        api.members[member].url
    );
    let sent = tokio::time::timeout(
        REQUEST_TIMEOUT,
        http.get(url).bearer_auth(&api.token).send(),
    )
    .await;
    let Ok(Ok(mut resp)) = sent else { return false };
    if resp.status() == StatusCode::GONE {
        return true;
    }
    if resp.status() != StatusCode::OK {
        return false;
    }
    let mut buf = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        // A member that stopped answering (SIGSTOP, cut off) sends nothing:
        // a watch silent for a while is dropped and resumed.
        let wait = left.min(Duration::from_secs(3));
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(wait, resp.chunk()).await else {
            return false;
        };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let kind = match ev.get("type").and_then(Value::as_str) {
                Some("ADDED") => EventType::Added,
                Some("MODIFIED") => EventType::Modified,
                Some("DELETED") => EventType::Deleted,
                // 410 inside the stream (a compacted revision): relist.
                Some("ERROR") => {
                    return ev.pointer("/object/code").and_then(Value::as_u64) == Some(410);
                }
                _ => continue,
            };
            if let Some(obj) = ev.get("object").and_then(seen) {
                events.push(Event { kind, obj });
            }
        }
    }
}

/// Runs `clients` traffic clients (spread over the members) and a watcher
/// per member until `until`, returning what they recorded.
pub fn run(api: &Api, seed: u64, clients: usize, until: Instant) -> History {
    let observed = Arc::new(Mutex::new(Observed::default()));
    let n = api.members.len();
    let watchers: Vec<_> = (0..n)
        .map(|m| {
            let (api, out) = (api.clone(), observed.clone());
            // Watchers outlive the traffic a little, to see its last events.
            std::thread::spawn(move || watcher(api, m, m, until + Duration::from_secs(2), out))
        })
        .collect();
    // Let every watch open before the first write.
    std::thread::sleep(Duration::from_millis(500));
    let traffic: Vec<_> = (0..clients)
        .map(|c| {
            let api = api.clone();
            std::thread::spawn(move || client(api, c, c % n, seed, until))
        })
        .collect();
    let mut h = History {
        seed,
        ..Default::default()
    };
    for t in traffic {
        h.ops.extend(t.join().expect("a traffic client panicked"));
    }
    for w in watchers {
        w.join().expect("a watcher panicked");
    }
    let o = std::mem::take(&mut *observed.lock().unwrap());
    h.lists = o.lists;
    h.streams = o.streams;
    h
}

/// Every member's list once the cluster healed (retried until it answers).
pub fn finals(api: &Api) -> Vec<List> {
    (0..api.members.len())
        .map(|m| {
            let api = api.clone();
            std::thread::spawn(move || {
                let (rt, http) = api.client(m);
                rt.block_on(async {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        if let Some(l) = list(&api, &http, m).await {
                            return l;
                        }
                        assert!(Instant::now() < deadline, "member {} never listed", m + 1);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("final list"))
        .collect()
}
