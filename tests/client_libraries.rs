//! Client libraries other than kubectl drive Weft unchanged.

mod common;

use std::process::Command;

use common::TestCluster;

#[test]
fn official_python_client() {
    let c = TestCluster::start();
    // Cargo's run-time CARGO_MANIFEST_DIR: see guests::repo_root.
    let script = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/clients/python_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&c.kubeconfig)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed (is the `kubernetes` package installed? ./dev test installs it):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
}
