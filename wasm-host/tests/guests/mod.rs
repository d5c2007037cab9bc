//! Builds the Wasm guests tests and benchmarks run (samples and test guests).

#![allow(dead_code)] // each user needs a subset

use std::path::PathBuf;
use std::process::Command;

/// The repository root, whichever crate includes this file. Cargo's
/// run-time CARGO_MANIFEST_DIR comes first: a target directory shared by
/// several clones may run a test binary built in another (deleted) clone,
/// whose compile-time path is stale.
pub fn repo_root() -> PathBuf {
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    here.ancestors()
        .find(|p| p.join("samples").is_dir())
        .expect("inside the weft repository")
        .to_path_buf()
}

/// Builds a guest for wasm32-wasip2 and returns its bytes. `dir` is relative
/// to the repository root; cargo makes repeated builds no-ops.
pub fn guest(dir: &str, name: &str) -> Vec<u8> {
    guest_for(dir, name, "wasm32-wasip2")
}

/// [`guest`] for another target (`wasm32-wasip1` makes a core module).
pub fn guest_for(dir: &str, name: &str, target_triple: &str) -> Vec<u8> {
    let dir = repo_root().join(dir);
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.join("target"));
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            target_triple,
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo for the guest");
    assert!(
        status.success(),
        "building {} failed (is the {target_triple} target installed? ./dev installs it)",
        dir.display()
    );
    std::fs::read(
        target
            .join(target_triple)
            .join("release")
            .join(format!("{name}.wasm")),
    )
    .expect("guest artifact")
}

pub fn sample(name: &str) -> Vec<u8> {
    guest(&format!("samples/{name}"), name)
}
