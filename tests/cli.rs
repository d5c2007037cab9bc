//! The `weft apply/get/delete` convenience verbs against a real cluster.

mod common;

use std::process::Command;

use common::TestCluster;

fn weft(c: &TestCluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("run weft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn apply_get_delete() {
    let c = TestCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("app.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team-b}\n").unwrap();
    let path = manifest.to_str().unwrap();

    let (ok, out, err) = weft(&c, &["apply", "-f", path]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "configmap/settings created\nnamespace/team-b created\n"
    );
    let (_, out, _) = weft(&c, &["apply", "-f", path]);
    assert_eq!(
        out,
        "configmap/settings unchanged\nnamespace/team-b unchanged\n"
    );
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: safe}\n",
    )
    .unwrap();
    let (_, out, _) = weft(&c, &["apply", "-f", path]);
    assert_eq!(out, "configmap/settings configured\n");

    let (ok, out, _) = weft(&c, &["get", "configmaps"]);
    assert!(ok);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{out}");
    assert!(out.contains("settings"), "{out}");
    let (_, yaml, _) = weft(&c, &["get", "cm", "settings", "-o", "yaml"]);
    assert!(yaml.contains("mode: safe"), "{yaml}");
    let (_, all, _) = weft(&c, &["get", "ns", "-A"]);
    assert!(
        all.contains("team-b") && all.contains("kube-system"),
        "{all}"
    );

    let (ok, out, _) = weft(&c, &["delete", "configmap", "settings"]);
    assert!(ok);
    assert_eq!(out, "configmap/settings deleted\n");
    let (ok, _, err) = weft(&c, &["get", "cm", "settings"]);
    assert!(!ok);
    assert!(err.contains("configmaps \"settings\" not found"), "{err}");

    // Bad input is reported per object, with the server's message.
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n",
    )
    .unwrap();
    let (ok, _, err) = weft(&c, &["apply", "-f", path]);
    assert!(!ok);
    assert!(err.contains("metadata.name: Invalid value"), "{err}");
    let (ok, _, err) = weft(&c, &["get", "gizmos"]);
    assert!(!ok && err.contains("doesn't have a resource type"), "{err}");
}
