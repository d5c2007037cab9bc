//! Backups, restore and recovery (docs/ha.md): `weft snapshot save` from a
//! live three-member cluster restored into a new one, a wiped member caught
//! up by snapshot install, a survivor of quorum loss reset into a new
//! cluster, and the scheduled backups of one member.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use common::hosts::Members;
use common::{TestCluster, weft};
use serde_json::Value;

fn configmaps(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {prefix}{i}\ndata:\n  i: \"{i}\"\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Objects of `json` (a kubectl list) by kind/namespace/name.
fn by_key(json: &str) -> BTreeMap<String, Value> {
    let list: Value = serde_json::from_str(json).expect("kubectl -o json");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            let key = format!(
                "{}/{}/{}",
                o["kind"].as_str().unwrap_or(""),
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or("")
            );
            (key, o.clone())
        })
        .collect()
}

fn revision_of(o: &Value) -> u64 {
    o["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("resourceVersion")
}

/// A list's resourceVersion: the store's revision when it was read.
const LIST_ONE: &str = "/api/v1/configmaps?limit=1";

fn list_revision(json: &str) -> u64 {
    let list: Value = serde_json::from_str(json).expect("a list");
    revision_of(&list)
}

/// What the restore is compared on: user objects, not the new cluster's
/// own (its CA bundle differs by design).
fn comparable(key: &str) -> bool {
    !key.ends_with("/kube-root-ca.crt")
}

#[test]
fn a_backup_of_a_live_cluster_restores_into_a_new_one() {
    let m = Members::start(3);
    m.kubectl_stdin(0, &["apply", "-f", "-"], &configmaps("base-", 20));
    m.kubectl_ok(0, &["create", "namespace", "team-a"]);
    m.kubectl_ok(
        1,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "team-a",
            "--from-literal=k=v",
        ],
    );

    // A writer on host 2 keeps creating ConfigMaps through member 2 while
    // the backup is taken; each acknowledged name is printed.
    let tmp = tempfile::tempdir().unwrap();
    let acked = tmp.path().join("acked");
    let script = format!(
        "for i in $(seq 1 400); do {} --cache-dir {} create configmap live-$i >/dev/null 2>&1 && echo live-$i; done",
        common::kubectl_path().display(),
        tmp.path().join("cache").display()
    );
    let mut writer = m
        .hosts
        .command(1, "sh")
        .args(["-c", &script])
        .env("KUBECONFIG", m.dirs[1].join("kubeconfig"))
        .stdout(std::fs::File::create(&acked).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("writer");
    std::thread::sleep(Duration::from_secs(2));
    let acked_before: BTreeSet<String> = std::fs::read_to_string(&acked)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let file = tmp.path().join("cluster.snap");
    let saved = m.weft(2, &["snapshot", "save", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(1));
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(
        acked_before.len() >= 3,
        "the writer was writing: {acked_before:?}"
    );
    let snap_rev: u64 = saved
        .split("at revision ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {saved:?}"));

    let kinds = "configmaps,secrets,namespaces";
    let old_json = m.kubectl_ok(0, &["get", kinds, "-A", "-o", "json"]);
    let old = by_key(&old_json);
    let old_list_rv = list_revision(&m.kubectl_ok(0, &["get", "--raw", LIST_ONE]));
    assert!(
        old.values().any(|o| revision_of(o) > snap_rev),
        "writes continued past the backup's revision {snap_rev}"
    );

    // Restore into a new data directory and start it.
    let restored = tmp.path().join("restored");
    let out = weft(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = TestCluster::start_in(&restored);
    let new = by_key(&c.kubectl_ok(&["get", kinds, "-A", "-o", "json"]));

    // The new cluster holds exactly the old one's objects as of the backup.
    for (key, o) in old.iter().filter(|(k, _)| comparable(k)) {
        if revision_of(o) <= snap_rev {
            assert_eq!(new.get(key), Some(o), "{key} as of the backup");
        } else {
            assert!(!new.contains_key(key), "{key} was written after the backup");
        }
    }
    for key in new.keys().filter(|k| comparable(k)) {
        assert!(old.contains_key(key), "{key} was not in the old cluster");
    }
    for name in &acked_before {
        assert!(
            new.contains_key(&format!("ConfigMap/default/{name}")),
            "{name} was acknowledged before the backup began"
        );
    }

    // A client of the old cluster resuming its watch is told to relist.
    let watch = c.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/configmaps?watch=1&resourceVersion={old_list_rv}&timeoutSeconds=2"),
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&watch.stdout),
        String::from_utf8_lossy(&watch.stderr)
    );
    assert!(
        said.contains("410"),
        "an old resourceVersion is gone: {said}"
    );
    let relisted = list_revision(&c.kubectl_ok(&["get", "--raw", LIST_ONE]));
    assert!(
        relisted > old_list_rv,
        "revisions moved forward: {relisted} > {old_list_rv}"
    );
    // And the restored cluster takes writes.
    c.kubectl_ok(&["create", "configmap", "after-restore"]);
}

#[test]
fn a_wiped_member_catches_up_by_snapshot_install() {
    // A snapshot every 20 entries; the log keeps only 2 beyond it.
    let mut m = Members::start_with(3, 3, &["--snapshot-count", "20"]);
    // Each object is one Raft entry: kubectl applies them one by one.
    m.kubectl_stdin(0, &["apply", "-f", "-"], &configmaps("c-", 60));
    let leader = m.leader(0).expect("a leader");
    let wiped = (leader + 1) % 3;
    m.kill(wiped);
    m.wipe(wiped);
    m.kubectl_stdin(leader, &["apply", "-f", "-"], &configmaps("d-", 30));
    let token = m.token();
    let via = (wiped + 1) % 3;
    if let Err(log) = m.try_join_via(wiped, via, &token) {
        panic!("the wiped member did not rejoin; log:\n{log}");
    }
    m.wait_ready(wiped);
    let metrics = m.kubectl_ok(wiped, &["get", "--raw", "/metrics"]);
    let installed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_raft_snapshots_installed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no install counter in:\n{metrics}"));
    assert!(installed >= 1.0, "the wiped member installed a snapshot");
    let built = m.kubectl_ok(leader, &["get", "--raw", "/metrics"]);
    assert!(
        built
            .lines()
            .any(|l| l.starts_with("weft_raft_snapshots_built_total ") && !l.ends_with(" 0")),
        "the leader built snapshots"
    );
    let names = m.kubectl_ok(wiped, &["get", "configmaps", "-o", "name"]);
    for want in [
        "configmap/c-0",
        "configmap/c-59",
        "configmap/d-0",
        "configmap/d-29",
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} on the wiped member"
        );
    }
}

#[test]
fn a_survivor_of_quorum_loss_is_reset_into_a_new_cluster_with_every_write() {
    let mut m = Members::start(3);
    let leader = m.leader(0).expect("a leader");
    let survivor = (leader + 1) % 3;
    // Acknowledged writes through the leader, then two members die at once:
    // the survivor may hold the last entries without word of their commit.
    m.kubectl_stdin(leader, &["apply", "-f", "-"], &configmaps("acked-", 25));
    for i in (0..3).filter(|&i| i != survivor) {
        m.kill(i);
    }
    // Without a quorum the survivor cannot write.
    let refused = m.kubectl(
        survivor,
        &["create", "configmap", "no-quorum", "--request-timeout=5s"],
    );
    assert!(!refused.status.success(), "no write without a quorum");

    m.kill(survivor);
    m.spawn_member(survivor, &["--cluster-reset"]);
    m.wait_ready(survivor);
    assert!(
        m.log(survivor).contains("cluster reset"),
        "the reset is logged"
    );
    let names = m.kubectl_ok(survivor, &["get", "configmaps", "-o", "name"]);
    for i in 0..25 {
        let want = format!("configmap/acked-{i}");
        assert!(
            names.lines().any(|l| l == want),
            "{want} survived the reset"
        );
    }
    m.kubectl_ok(survivor, &["create", "configmap", "after-reset"]);

    // A fresh member (a dead one's host, its data wiped) joins the new cluster.
    let fresh = (survivor + 1) % 3;
    m.wipe(fresh);
    let token = std::fs::read_to_string(m.dirs[survivor].join("token")).unwrap();
    if let Err(log) = m.try_join_via(fresh, survivor, token.trim()) {
        panic!("a fresh member did not join; log:\n{log}");
    }
    m.wait_ready(fresh);
    let listed = m.weft(survivor, &["member", "list"]);
    assert_eq!(
        listed.lines().count(),
        3,
        "header and two members:\n{listed}"
    );
    let names = m.kubectl_ok(fresh, &["get", "configmaps", "-o", "name"]);
    let fresh_names = names.clone();

    // The third member comes back with the old cluster's data and a higher
    // term: the new cluster refuses its Raft messages (another cluster id),
    // so it neither takes over nor rolls back the new cluster's log.
    let stale = (survivor + 2) % 3;
    m.restart(stale);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        m.leader(survivor),
        Some(survivor),
        "the survivor still leads"
    );
    assert_eq!(m.weft(survivor, &["member", "list"]).lines().count(), 3);
    m.kubectl_ok(survivor, &["create", "configmap", "after-stale"]);
    // Even with no leader lease to shield it (its leader restarting), the
    // new cluster does not vote for the stale member.
    m.kill(survivor);
    m.restart(survivor);
    m.wait_ready(survivor);
    std::thread::sleep(Duration::from_secs(2));
    let leader = m.leader(fresh);
    assert!(
        leader == Some(survivor) || leader == Some(fresh),
        "the new cluster leads itself: {leader:?}"
    );
    for i in [survivor, fresh] {
        let names = m.kubectl_ok(i, &["get", "configmaps", "-o", "name"]);
        assert!(
            names.contains("configmap/after-stale") && names.contains("configmap/acked-3"),
            "member {}: {names}",
            i + 1
        );
    }
    assert!(
        m.log(survivor).contains("another cluster") || m.log(fresh).contains("another cluster"),
        "the stale member was refused; stale log:\n{}\nfresh log:\n{}",
        m.log(stale),
        m.log(fresh)
    );
    let names = fresh_names;
    assert!(
        names.contains("configmap/acked-24") && names.contains("configmap/after-reset"),
        "the fresh member has the cluster's objects:\n{names}\nlog:\n{}",
        m.log(fresh)
    );
}

#[test]
fn scheduled_backups_are_kept_to_their_retention_and_bad_files_are_refused() {
    let mut c =
        TestCluster::start_with(&["--snapshot-interval", "1s", "--snapshot-retention", "2"]);
    c.kubectl_ok(&["create", "configmap", "kept"]);
    std::thread::sleep(Duration::from_millis(3500));
    // Stopped, so that no backup is saved or pruned while the test looks.
    c.stop();
    let dir = c.dir.join("snapshots");
    let ls = weft(&["snapshot", "ls", "--snapshot-dir", dir.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert_eq!(
        listed.lines().count(),
        3,
        "a header and two backups:\n{listed}"
    );
    let newest = listed
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();

    // The newest scheduled backup restores, with the ConfigMap in it.
    let tmp = tempfile::tempdir().unwrap();
    let good = dir.join(newest);
    let out = weft(&[
        "snapshot",
        "restore",
        good.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("ok").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One flipped byte, and a truncated file: refused, nothing written.
    let data = std::fs::read(&good).unwrap();
    let mut flipped = data.clone();
    flipped[data.len() / 2] ^= 0x20;
    for (name, bytes) in [
        ("flipped", flipped),
        ("truncated", data[..data.len() - 100].to_vec()),
    ] {
        let file = tmp.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let target = tmp.path().join(format!("{name}-dir"));
        let out = weft(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} refused");
        assert!(err.contains("corrupt or truncated"), "{name}: {err}");
        assert!(!target.exists(), "{name}: nothing written");
    }
    // A restore never writes over a data directory in use.
    let out = weft(&[
        "snapshot",
        "restore",
        good.to_str().unwrap(),
        "--data-dir",
        c.dir.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    let out = weft(&[
        "snapshot",
        "prune",
        "--snapshot-retention",
        "1",
        "--snapshot-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = weft(&[
        "snapshot",
        "delete",
        newest,
        "--snapshot-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
