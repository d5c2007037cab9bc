//! Three control-plane members on three hosts (network namespaces of the
//! test's own), driven by real kubectl against each member's own address:
//! any member serves the whole API, with the same revisions everywhere.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::hosts::Members;

fn configmap(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  from: {name}\n")
}

#[test]
fn kubectl_against_every_member_of_three_hosts() {
    let mut m = Members::start(3);
    for i in 0..3 {
        assert_eq!(
            m.kubectl_ok(i, &["get", "--raw", "/readyz"]),
            "ok",
            "member {}",
            i + 1
        );
    }

    // A watch on every member, printing name and resourceVersion per event.
    let (tx, rx) = mpsc::channel::<(usize, String, String)>();
    let mut watches = Vec::new();
    for i in 0..3 {
        let mut child = m
            .kubectl_cmd(i, &["get", "configmaps", "--watch", "--output-watch-events", "-o"])
            .arg(r#"jsonpath={.type} {.object.metadata.name} {.object.metadata.resourceVersion}{"\n"}"#)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl watch");
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [ty, name, rv] = f[..] {
                    let _ = tx.send((i, format!("{ty} {name}"), rv.to_string()));
                }
            }
        });
        watches.push(child);
    }
    // kubectl's watch opens after its initial list: give all three a moment.
    std::thread::sleep(Duration::from_secs(2));

    // A write through each member; the answer's resourceVersion is the
    // object's revision on every member, read linearizably at once.
    let mut written = BTreeMap::new();
    for i in 0..3 {
        let name = format!("from-member-{}", i + 1);
        let rv = m.kubectl_stdin(
            i,
            &[
                "apply",
                "-f",
                "-",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            &configmap(&name),
        );
        for j in 0..3 {
            let got = m.kubectl_ok(
                j,
                &[
                    "get",
                    "configmap",
                    &name,
                    "-o",
                    "jsonpath={.metadata.resourceVersion} {.data.from}",
                ],
            );
            assert_eq!(
                got,
                format!("{rv} {name}"),
                "{name} read on member {}",
                j + 1
            );
        }
        written.insert(format!("ADDED {name}"), rv);
    }
    // A delete through a member that did not write the object.
    m.kubectl_ok(1, &["delete", "configmap", "from-member-1"]);
    for j in 0..3 {
        let out = m.kubectl(j, &["get", "configmap", "from-member-1"]);
        assert!(
            !out.status.success(),
            "deleted object still read on member {}",
            j + 1
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    }

    // Every watch saw every write with the same resourceVersion, and the delete.
    let mut seen: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); 3];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.iter().any(|s| {
        !written.keys().all(|k| s.contains_key(k)) || !s.contains_key("DELETED from-member-1")
    }) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, event, rv)) => {
                seen[i].insert(event, rv);
            }
            Err(_) => panic!("watches incomplete after 20 s: {seen:?}, want {written:?}"),
        }
    }
    for (i, s) in seen.iter().enumerate() {
        for (event, rv) in &written {
            assert_eq!(&s[event], rv, "{event} on member {}'s watch", i + 1);
        }
    }
    for mut w in watches {
        let _ = w.kill();
        let _ = w.wait();
    }

    // SIGKILL the member running the scheduler and controllers: a survivor
    // that Raft elects takes the controller Lease within moments, not after
    // the dead holder's 15 s lease runs out.
    let lease = [
        "get",
        "lease",
        "-n",
        "kube-system",
        "weft-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ];
    let first = m.kubectl_ok(0, &lease);
    let dead: usize = first
        .rsplit("member-")
        .next()
        .and_then(|n| n.parse().ok())
        .expect("identity host/member-N");
    let survivor = if dead == 1 { 1 } else { 0 };
    m.kill(dead - 1);
    let killed = Instant::now();
    loop {
        let out = m.kubectl(survivor, &lease);
        let now = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !now.is_empty() && now != first {
            eprintln!(
                "controller lease moved from {first} to {now} {:?} after the SIGKILL",
                killed.elapsed()
            );
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the lease still names {first} 5 s after its holder was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fourth member joins a running cluster (as a learner, then a voter),
/// serves reads that include every object written before it joined, and
/// `weft member remove` takes it out while the cluster keeps serving. A
/// token that pins another CA is refused first, and with two of three
/// members gone the last one's /readyz fails.
#[test]
fn a_fourth_member_joins_and_is_removed() {
    let mut m = Members::start_of(4, 3);
    let manifest: String = (0..20)
        .map(|k| format!("{}---\n", configmap(&format!("before-join-{k}"))))
        .collect();
    m.kubectl_stdin(0, &["apply", "-f", "-"], &manifest);

    // The token's CA hash with one digit changed: the joiner must not trust
    // the CA the cluster serves, and says why.
    let token = m.token();
    let digit = if token.as_bytes()[3] == b'0' {
        "1"
    } else {
        "0"
    };
    let forged = format!("K10{digit}{}", &token[4..]);
    let log = m.try_join(3, &forged).expect_err("a forged token joined");
    assert!(
        log.contains("does not match the CA hash in the join token"),
        "{log}"
    );
    assert!(
        !m.dirs[3].join("pki").exists(),
        "the refused joiner kept secrets"
    );

    m.join(3);
    let names = m.kubectl_ok(3, &["get", "configmaps", "-o", "name"]);
    for k in 0..20 {
        assert!(
            names.contains(&format!("configmap/before-join-{k}\n")),
            "member 4 lacks before-join-{k}: {names}"
        );
    }
    // It also takes writes, forwarded to the leader.
    m.kubectl_stdin(3, &["apply", "-f", "-"], &configmap("from-member-4"));

    let list = m.weft(1, &["member", "list"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{list}");
    assert_eq!(
        rows.iter().filter(|r| r[2] == "leader").count(),
        1,
        "{list}"
    );
    let fourth = rows.iter().find(|r| r[0] == "4").expect("member 4 listed");
    assert_eq!(fourth[1], m.url(3));
    assert_eq!(fourth[2], "voter", "{list}");

    assert_eq!(
        m.weft(2, &["member", "remove", "4"]).trim(),
        "member 4 removed"
    );
    let list = m.weft(0, &["member", "list"]);
    assert_eq!(list.lines().count(), 1 + 3, "{list}");
    assert!(!list.lines().any(|l| l.starts_with("4 ")), "{list}");
    m.kill(3);
    for i in 0..3 {
        assert_eq!(m.kubectl_ok(i, &["get", "--raw", "/readyz"]), "ok");
    }
    m.kubectl_stdin(1, &["apply", "-f", "-"], &configmap("after-removal"));
    let got = m.kubectl_ok(
        2,
        &[
            "get",
            "configmap",
            "after-removal",
            "-o",
            "jsonpath={.data.from}",
        ],
    );
    assert_eq!(got, "after-removal");

    // Kill the leader and one more: the survivor knows no leader, and its
    // /readyz says so (kubectl gets an error, not ok).
    let leader = m.leader(0).expect("a leader listed");
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    for i in (0..3).filter(|&i| i != survivor) {
        m.kill(i);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = m.kubectl(survivor, &["get", "--raw", "/readyz"]);
        if !out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member {} still ready 15 s after losing its quorum",
            survivor + 1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A node agent given every member moves to another one when its member
/// dies: its Lease keeps being renewed and its Node stays Ready.
#[test]
fn a_node_agent_moves_to_another_member_when_its_member_dies() {
    let mut m = Members::start(3);
    m.spawn_agent(2, "agent-3", &[0, 1, 2]);
    m.kubectl_ok(
        1,
        &[
            "wait",
            "--for=condition=Ready",
            "node/agent-3",
            "--timeout=60s",
        ],
    );
    let renewed = |m: &Members| {
        let out = m.kubectl(
            1,
            &[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                "agent-3",
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The agent talks to member 1 first; kill it.
    m.kill(0);
    let killed = Instant::now();
    let mut seen = vec![renewed(&m)];
    while seen.len() < 4 {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the node's Lease was renewed only at {seen:?} in the 20 s after its member died"
        );
        let now = renewed(&m);
        if !now.is_empty() && seen.last() != Some(&now) {
            seen.push(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "Lease renewals after the kill: {seen:?} ({:?})",
        killed.elapsed()
    );
    let ready = m.kubectl_ok(
        1,
        &[
            "get",
            "node",
            "agent-3",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ],
    );
    assert_eq!(ready, "True");
}

/// Five members survive two deaths (the leader's among them): writes go on.
/// With a third gone the two left are no quorum: a write through either,
/// the leader that lost its quorum included, is answered 503 at once
/// (kubectl's log shows each response), and kubectl, which retries a 503
/// that carries Retry-After, gives up within its retries: never a hang.
#[test]
fn five_members_survive_two_deaths_and_refuse_writes_without_quorum() {
    let mut m = Members::start(5);
    let first = m.leader(0).expect("a leader");
    let other = (first + 1) % 5;
    m.kill(first);
    m.kill(other);
    let alive: Vec<usize> = (0..5).filter(|&i| i != first && i != other).collect();
    for (n, &i) in alive.iter().enumerate() {
        m.kubectl_stdin(
            i,
            &["apply", "-f", "-"],
            &configmap(&format!("three-of-five-{n}")),
        );
    }
    // A `weft` client given a dead member first moves on to the next.
    let servers = format!("{},{}", m.url(first), m.url(alive[0]));
    let list = m.weft(alive[0], &["member", "--server", &servers, "list"]);
    assert_eq!(list.lines().count(), 1 + 5, "{list}");
    // Kill a follower of the new leader: the leader is left with one follower.
    let leader = m.leader(alive[0]).expect("a new leader");
    assert!(alive.contains(&leader), "the leader {leader} is a survivor");
    let third = *alive.iter().find(|&&i| i != leader).unwrap();
    m.kill(third);
    let left: Vec<usize> = alive.into_iter().filter(|&i| i != third).collect();
    // Past the leader's quorum timeout (2.5 × the 150 ms election timeout).
    std::thread::sleep(Duration::from_secs(1));
    for i in left {
        let role = if i == leader { "leader" } else { "follower" };
        let started = Instant::now();
        let out = m
            .kubectl_cmd(
                i,
                &["create", "configmap", &format!("no-quorum-{i}"), "-v=6"],
            )
            .stdin(Stdio::null())
            .output()
            .expect("kubectl");
        let took = started.elapsed();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a write committed without a quorum");
        // client-go logs "POST https://… 503 Service Unavailable in N milliseconds".
        let answers: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("POST") && l.contains("503 Service Unavailable in"))
            .filter_map(|l| {
                l.rsplit(" in ")
                    .next()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        eprintln!(
            "write through the {role} (member {}) without quorum: {} answers of 503 in {answers:?} ms, kubectl gave up after {took:?}: {}",
            i + 1,
            answers.len(),
            log.lines().last().unwrap_or("")
        );
        assert!(!answers.is_empty(), "no 503 from the {role}:\n{log}");
        assert!(
            answers.iter().all(|&ms| ms < 1000),
            "the {role} took {answers:?} ms to answer"
        );
        assert!(took < Duration::from_secs(20), "kubectl was held {took:?}");
        assert!(
            log.contains("no quorum"),
            "the error does not say why:\n{log}"
        );
    }
}
