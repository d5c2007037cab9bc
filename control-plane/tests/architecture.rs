//! The control plane is a set of crates whose arrows point one way
//! (docs/architecture.md). Cargo already forbids cycles between crates; this
//! pins the shape: which crate may name which, and that the vocabulary, the
//! scheduler and the controllers never link the store's or the API server's
//! heavy parts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Crate directory (relative to control-plane/) → the Weft crates it may
/// depend on. weft-api (the object types) is open to all.
const ARROWS: &[(&str, &[&str])] = &[
    ("cluster", &[]),
    ("scheduler", &["cluster"]),
    ("controllers", &["cluster"]),
    ("store", &["cluster"]),
    ("apiserver", &["cluster", "store"]),
    // The assembly: weft-control-plane itself.
    (
        ".",
        &["apiserver", "cluster", "controllers", "scheduler", "store"],
    ),
];

/// The crates that must build without rocksdb, openraft or axum.
const LIGHT: &[&str] = &["cluster", "scheduler", "controllers"];
const HEAVY: &[&str] = &["rocksdb", "librocksdb-sys", "openraft", "axum"];

/// Cargo's run-time CARGO_MANIFEST_DIR first: a target directory shared by
/// several clones may run a binary built in another (deleted) clone.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `[package] name` and the `[dependencies]` names of one manifest.
fn manifest(dir: &str) -> (String, BTreeSet<String>) {
    let text = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
    let (mut name, mut deps, mut section) = (String::new(), BTreeSet::new(), String::new());
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[package]" && line.starts_with("name") {
            name = line.split('"').nth(1).unwrap().to_string();
        } else if section == "[dependencies]" && !line.is_empty() && !line.starts_with('#') {
            let dep = line.split(['.', '=', ' ']).next().unwrap();
            deps.insert(dep.to_string());
        }
    }
    (name, deps)
}

/// Package name → its dependencies' names, from the workspace's Cargo.lock.
fn lock() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(root().join("../Cargo.lock")).unwrap();
    let mut out = BTreeMap::new();
    for package in text.split("[[package]]").skip(1) {
        let name = package
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let deps = package
            .split("dependencies = [")
            .nth(1)
            .map(|d| {
                d[..d.find(']').unwrap()]
                    .split(',')
                    .filter_map(|e| e.trim().trim_matches('"').split(' ').next())
                    .filter(|e| !e.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name, deps);
    }
    out
}

#[test]
fn the_crates_arrows_point_one_way() {
    let dirs: BTreeSet<&str> = ARROWS.iter().map(|(d, _)| *d).collect();
    let names: BTreeMap<String, &str> = dirs.iter().map(|d| (manifest(d).0, *d)).collect();
    for (dir, allowed) in ARROWS {
        let weft: BTreeSet<&str> = manifest(dir)
            .1
            .iter()
            .filter_map(|dep| names.get(dep).copied())
            .collect();
        let allowed: BTreeSet<&str> = allowed.iter().copied().collect();
        assert_eq!(weft, allowed, "{dir} names {weft:?}, may name {allowed:?}");
    }
    // Every crate under control-plane/ is in the table.
    for entry in std::fs::read_dir(root()).unwrap() {
        let path = entry.unwrap().path();
        if path.join("Cargo.toml").exists() {
            let dir = path.file_name().unwrap().to_str().unwrap();
            assert!(dirs.contains(dir), "{dir} is missing from ARROWS");
        }
    }
}

#[test]
fn the_vocabulary_scheduler_and_controllers_link_no_store_raft_or_http_server() {
    let lock = lock();
    for dir in LIGHT {
        let name = manifest(dir).0;
        // Transitively, over Cargo.lock (which also lists the crate's own
        // dev-dependencies, so this is stricter than the build needs).
        let (mut seen, mut todo) = (BTreeSet::new(), vec![name.clone()]);
        while let Some(next) = todo.pop() {
            if seen.insert(next.clone()) {
                todo.extend(lock.get(&next).cloned().unwrap_or_default());
            }
        }
        for heavy in HEAVY {
            assert!(!seen.contains(*heavy), "{name} links {heavy}");
        }
        assert!(
            seen.len() > 5,
            "{name}'s closure is implausibly small: {seen:?}"
        );
    }
}
