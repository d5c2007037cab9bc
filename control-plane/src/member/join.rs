//! Joining a cluster by token (k3s's scheme): fetch the CA from the member
//! named by `--server` without trusting it, take it only if its hash is the
//! token's, then fetch the shared secrets over TLS pinned to that CA with the
//! token's secret. The secrets land in the data directory, where the member's
//! PKI is made from them as if it had been there from the start.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use weft_apiserver::security::{self, ClusterSecrets, JoinToken};
use weft_apiserver::{BOOTSTRAP, CACERTS};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] security::BadToken),
    #[error(
        "--server {server} needs --token: the cluster's join token (DATA_DIR/token on any member)"
    )]
    NoToken { server: String },
    #[error(
        "refusing to join: the CA that {server} serves (sha256 {served}) does not match the CA hash in the join token ({pinned}); check --server and --token"
    )]
    CaMismatch {
        server: String,
        served: String,
        pinned: String,
    },
    #[error(
        "this data directory belongs to another cluster: its CA (sha256 {local}) does not match the CA hash in the join token ({pinned})"
    )]
    OtherCluster { local: String, pinned: String },
    #[error("{server} refused the join token's secret ({status})")]
    Refused {
        server: String,
        status: reqwest::StatusCode,
    },
    #[error("fetching {what} from {server}: {source}")]
    Fetch {
        server: String,
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error(transparent)]
    Pki(#[from] security::PkiError),
}

const ATTEMPT: Duration = Duration::from_secs(10);

/// Makes `data_dir` hold the cluster's shared secrets, fetched from `server`
/// and checked against `token`; retries an unreachable server until
/// `timeout`. A data directory that already trusts a CA (a restarted member)
/// is only checked against the token.
pub async fn fetch_secrets(
    server: &str,
    token: &str,
    data_dir: &Path,
    timeout: Duration,
) -> Result<(), JoinError> {
    let token: JoinToken = token.parse()?;
    if let Some(ca) = ClusterSecrets::existing_ca(data_dir)? {
        let local = security::ca_hash(&ca);
        if local != token.ca_hash {
            return Err(JoinError::OtherCluster {
                local,
                pinned: token.ca_hash,
            });
        }
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let secrets = loop {
        match fetch(server, &token).await {
            Err(JoinError::Fetch { source, .. })
                if Instant::now() < deadline && (source.is_connect() || source.is_timeout()) =>
            {
                tracing::info!(server, "cluster not reachable yet: {source}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other?,
        }
    };
    secrets.install(data_dir)?;
    Ok(())
}

async fn fetch(server: &str, token: &JoinToken) -> Result<ClusterSecrets, JoinError> {
    let base = server.trim_end_matches('/');
    let failed = |what| {
        move |source| JoinError::Fetch {
            server: base.to_string(),
            what,
            source,
        }
    };
    // Nothing is trusted yet: the CA is taken only if its hash is the token's.
    let blind = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(ATTEMPT)
        .build()
        .map_err(failed("the CA"))?;
    let ca = blind
        .get(format!("{base}{CACERTS}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(failed("the CA"))?
        .text()
        .await
        .map_err(failed("the CA"))?;
    let mismatch = |served| JoinError::CaMismatch {
        server: base.to_string(),
        served,
        pinned: token.ca_hash.clone(),
    };
    let served = security::ca_hash(&ca);
    if served != token.ca_hash {
        return Err(mismatch(served));
    }
    let pinned = reqwest::Certificate::from_pem(ca.as_bytes())
        .and_then(|ca| {
            reqwest::Client::builder()
                .add_root_certificate(ca)
                .timeout(ATTEMPT)
                .build()
        })
        .map_err(failed("the cluster secrets"))?;
    let res = pinned
        .get(format!("{base}{BOOTSTRAP}"))
        .bearer_auth(&token.secret)
        .send()
        .await
        .map_err(failed("the cluster secrets"))?;
    if !res.status().is_success() {
        return Err(JoinError::Refused {
            server: base.to_string(),
            status: res.status(),
        });
    }
    let secrets: ClusterSecrets = res.json().await.map_err(failed("the cluster secrets"))?;
    if secrets.ca_cert != ca {
        return Err(mismatch(security::ca_hash(&secrets.ca_cert)));
    }
    Ok(secrets)
}
