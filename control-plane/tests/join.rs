//! Members over TLS: a joiner's token pins the cluster CA, the joiner gets
//! the shared secrets for the join secret, and Raft RPCs need a member
//! certificate from the cluster CA (a bearer token is not enough).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use weft_control_plane::apiserver::security;
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

fn config(dir: &Path) -> ControlPlaneConfig {
    ControlPlaneConfig::new(dir.to_path_buf(), SocketAddr::from(([127, 0, 0, 1], 0)))
}

async fn first_member(dir: &Path) -> ControlPlane {
    ControlPlane::start(config(dir))
        .await
        .expect("first member")
}

async fn join(
    dir: &Path,
    id: u64,
    server: &ControlPlane,
    token: &str,
) -> Result<ControlPlane, String> {
    let mut cfg = config(dir);
    cfg.node_id = id;
    cfg.join = Some(server.url.clone());
    cfg.token = Some(token.to_string());
    cfg.ready_timeout = Duration::from_secs(30);
    ControlPlane::start(cfg).await.map_err(|e| format!("{e:#}"))
}

/// An HTTPS client that trusts `cp`'s CA, presenting `identity` if given.
fn client(cp: &ControlPlane, identity: Option<&Path>) -> reqwest::Client {
    let ca = cp.ca_pem.as_ref().expect("TLS member");
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(pki) = identity {
        let pem = [
            std::fs::read_to_string(pki.join("server.crt")).unwrap(),
            std::fs::read_to_string(pki.join("server.key")).unwrap(),
        ]
        .concat();
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn term(cp: &ControlPlane) -> u64 {
    cp.api.store.raft().metrics().borrow().current_term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_by_token_and_raft_needs_a_member_certificate() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = first_member(da.path()).await;
    let token = a.join_token.clone().expect("a TLS member has a join token");
    assert_eq!(
        std::fs::read_to_string(da.path().join(security::JOIN_TOKEN)).unwrap(),
        token
    );
    let b = join(db.path(), 2, &a, &token).await.expect("joins");
    assert_eq!(b.ca_pem, a.ca_pem, "one cluster CA");
    assert_eq!(
        b.token, a.token,
        "one admin token: kubectl works on any member"
    );
    assert_eq!(b.join_token.as_deref(), Some(token.as_str()));

    // The joiner serves the API with the shared CA and admin token; its write
    // is read linearizably on the first member.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "via-joiner"}});
    let path = "/api/v1/namespaces/default/configmaps";
    let r = client(&b, None)
        .post(format!("{}{path}", b.url))
        .bearer_auth(&b.token)
        .json(&cm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let r = client(&a, None)
        .get(format!("{}{path}/via-joiner", a.url))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Without a member certificate, the admin token cannot vote or append.
    let before = term(&a);
    let vote = json!({"vote": {"leader_id": {"term": before + 1000, "node_id": 99}, "committed": false}, "last_log_id": null});
    let append = json!({"vote": {"leader_id": {"term": before + 1000, "node_id": 99}, "committed": true}, "prev_log_id": null, "entries": [], "leader_commit": null});
    let admin = client(&a, None);
    for (rpc, body) in [("vote", &vote), ("append", &append)] {
        let r = admin
            .post(format!("{}/internal/raft/{rpc}", a.url))
            .bearer_auth(&a.token)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{rpc} with the admin token");
        let status: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status["reason"], "Forbidden");
    }
    // A certificate of another CA does not get through the handshake.
    let other = tempfile::tempdir().unwrap();
    security::ensure_pki(other.path(), &["127.0.0.1".into()]).unwrap();
    let r = client(&a, Some(other.path()))
        .post(format!("{}/internal/raft/vote", a.url))
        .json(&vote)
        .send()
        .await;
    assert!(
        !r.as_ref().is_ok_and(|r| r.status().is_success()),
        "a foreign certificate was accepted: {r:?}"
    );
    assert!(term(&a) < before + 1000, "a refused vote moved the term");

    // A member's certificate reaches Raft (a stale append, answered by Raft).
    let stale = json!({"vote": {"leader_id": {"term": 0, "node_id": 2}, "committed": true}, "prev_log_id": null, "entries": [], "leader_commit": null});
    let r = client(&a, Some(&db.path().join("pki")))
        .post(format!("{}/internal/raft/append", a.url))
        .json(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    b.shutdown(Duration::from_secs(5)).await;
    a.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_pins_another_ca_or_a_wrong_secret_is_refused() {
    let da = tempfile::tempdir().unwrap();
    let a = first_member(da.path()).await;
    let token: security::JoinToken = a.join_token.clone().unwrap().parse().unwrap();

    let mut other_ca = token.clone();
    other_ca.ca_hash = security::ca_hash("some other CA");
    let db = tempfile::tempdir().unwrap();
    let e = join(db.path(), 2, &a, &other_ca.to_string())
        .await
        .err()
        .expect("refused");
    assert!(
        e.contains("does not match the CA hash in the join token"),
        "{e}"
    );
    assert!(
        !db.path().join("pki").exists() && !db.path().join("tokens").exists(),
        "a refused join wrote secrets"
    );

    let mut wrong_secret = token.clone();
    wrong_secret.secret = "guessed".into();
    let dc = tempfile::tempdir().unwrap();
    let e = join(dc.path(), 3, &a, &wrong_secret.to_string())
        .await
        .err()
        .expect("refused");
    assert!(e.contains("refused the join token's secret"), "{e}");
    assert!(e.contains("401"), "{e}");

    let e = join(dc.path(), 3, &a, "not-a-token")
        .await
        .err()
        .expect("refused");
    assert!(e.contains("does not start with K10"), "{e}");
    a.shutdown(Duration::from_secs(5)).await;
}
