//! Secure defaults: a cluster CA and serving certificate generated once into
//! the data directory, bearer-token authentication, and what members of one
//! cluster share: the CA, the admin token and the join secret, handed to a
//! joiner whose token pins the CA ([`JoinToken`], [`ClusterSecrets`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("pki I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("pem: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
}

/// The PEM material the server and its kubeconfig need.
#[derive(Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::Io {
            path: path.into(),
            source: e,
        }),
    }
}

/// Writes a file readable only by its owner: keys and tokens live here.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| PkiError::Io {
        path: path.into(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "weft-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// Loads the PKI under `dir`, creating the CA once and (re)issuing the serving
/// certificate whenever the wanted subject names change.
pub fn ensure_pki(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (crt, key, sans_file) = (
        dir.join("server.crt"),
        dir.join("server.key"),
        dir.join("server.sans"),
    );

    let (ca_pem, ca_keypair) = match (read(&ca_crt)?, read(&ca_key)?) {
        (Some(c), Some(k)) => (c, KeyPair::from_pem(&k)?),
        _ => {
            let kp = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&kp)?;
            write_private(&ca_key, &kp.serialize_pem())?;
            write_private(&ca_crt, &cert.pem())?;
            (cert.pem(), kp)
        }
    };

    let wanted = sans.join("\n");
    if let (Some(c), Some(k), Some(s)) = (read(&crt)?, read(&key)?, read(&sans_file)?)
        && s == wanted
    {
        return Ok(Pki {
            ca_pem,
            cert_pem: c,
            key_pem: k,
        });
    }
    // Same DN and key as the stored CA, so what it signs chains to ca.crt.
    let issuer = ca_params()?.self_signed(&ca_keypair)?;
    let mut p = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "weft-apiserver");
    p.distinguished_name = dn;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let kp = KeyPair::generate()?;
    let cert = p.signed_by(&kp, &issuer, &ca_keypair)?;
    write_private(&key, &kp.serialize_pem())?;
    write_private(&crt, &cert.pem())?;
    write_private(&sans_file, &wanted)?;
    Ok(Pki {
        ca_pem,
        cert_pem: cert.pem(),
        key_pem: kp.serialize_pem(),
    })
}

impl Pki {
    /// This member's certificate and key as one PEM: the client identity it
    /// presents to other members (the serving certificate is issued for
    /// client auth too, and only members hold certificates of the cluster CA).
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

/// A rustls server config speaking HTTP/1.1 (what kubectl uses). A client
/// may present a certificate; one that does not chain to the cluster CA is
/// refused in the handshake, and none at all is allowed (kubectl sends a
/// bearer token), so the API decides per path ([`MemberPeer`]).
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let certs =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Reads the admin token, creating a random one on first start.
pub fn ensure_token(path: &Path) -> Result<String, PkiError> {
    if let Some(t) = read(path)? {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &token)?;
    Ok(token)
}

/// Compares in time independent of where the strings differ.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Set on a request whose TLS client presented a certificate issued by the
/// cluster CA: it comes from another member.
#[derive(Clone, Copy, Debug)]
pub struct MemberPeer;

/// sha256 of the CA certificate exactly as `/cacerts` serves it, in hex.
pub fn ca_hash(ca_pem: &str) -> String {
    Sha256::digest(ca_pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A join token in k3s's form, `K10<sha256 of the CA>::server:<secret>`:
/// the hash lets a joiner trust the CA it fetches before it trusts anything
/// else, and the secret authenticates it to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the join token is malformed: {0} (want K10<sha256 of the cluster CA>::server:<secret>, as in DATA_DIR/token of a member)"
)]
pub struct BadToken(&'static str);

impl std::str::FromStr for JoinToken {
    type Err = BadToken;
    fn from_str(s: &str) -> Result<Self, BadToken> {
        let rest = s
            .trim()
            .strip_prefix("K10")
            .ok_or(BadToken("it does not start with K10"))?;
        let (hash, creds) = rest
            .split_once("::")
            .ok_or(BadToken("no '::' after the CA hash"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadToken("the CA hash is not 64 hex digits"));
        }
        let secret = creds
            .strip_prefix("server:")
            .filter(|s| !s.is_empty())
            .ok_or(BadToken("the credentials are not server:<secret>"))?;
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K10{}::server:{}", self.ca_hash, self.secret)
    }
}

/// What every member of one cluster holds alike, under its data directory.
/// A joiner that presents the join secret gets a copy, as k3s servers share
/// their bootstrap data: with the CA key it issues its own serving (and
/// member) certificate, and the admin token lets kubectl use any member.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSecrets {
    pub ca_cert: String,
    pub ca_key: String,
    pub admin_token: String,
    pub join_secret: String,
}

/// Where a member keeps each shared secret, relative to its data directory.
const CA_CERT: &str = "pki/ca.crt";
const CA_KEY: &str = "pki/ca.key";
pub const ADMIN_TOKEN: &str = "tokens/admin";
const JOIN_SECRET: &str = "tokens/join";
/// The join token, for the operator to hand to the next member.
pub const JOIN_TOKEN: &str = "token";

impl ClusterSecrets {
    /// This member's secrets, created on first start.
    pub fn ensure(data_dir: &Path, pki: &Pki) -> Result<ClusterSecrets, PkiError> {
        let secrets = ClusterSecrets {
            ca_cert: pki.ca_pem.clone(),
            ca_key: read(&data_dir.join(CA_KEY))?.unwrap_or_default(),
            admin_token: ensure_token(&data_dir.join(ADMIN_TOKEN))?,
            join_secret: ensure_token(&data_dir.join(JOIN_SECRET))?,
        };
        let token = secrets.token().to_string();
        if read(&data_dir.join(JOIN_TOKEN))?.as_deref() != Some(token.as_str()) {
            write_private(&data_dir.join(JOIN_TOKEN), &token)?;
        }
        Ok(secrets)
    }

    /// The CA a data directory already trusts, if any.
    pub fn existing_ca(data_dir: &Path) -> Result<Option<String>, PkiError> {
        read(&data_dir.join(CA_CERT))
    }

    /// Writes a joiner's copy where [`ensure_pki`] and [`ensure_token`] find it.
    pub fn install(&self, data_dir: &Path) -> Result<(), PkiError> {
        write_private(&data_dir.join(CA_KEY), &self.ca_key)?;
        write_private(&data_dir.join(ADMIN_TOKEN), &self.admin_token)?;
        write_private(&data_dir.join(JOIN_SECRET), &self.join_secret)?;
        // Last: its presence marks a complete install.
        write_private(&data_dir.join(CA_CERT), &self.ca_cert)
    }

    pub fn token(&self) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash(&self.ca_cert),
            secret: self.join_secret.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_created_once_and_reissued_on_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_pki(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let b = ensure_pki(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert_eq!(
            a.cert_pem, b.cert_pem,
            "unchanged names reuse the certificate"
        );
        let c = ensure_pki(dir.path(), &["127.0.0.2".into()]).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem, "the CA survives");
        assert_ne!(a.cert_pem, c.cert_pem);
        server_config(&c).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn tokens() {
        let dir = tempfile::tempdir().unwrap();
        let t = ensure_token(&dir.path().join("admin")).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(ensure_token(&dir.path().join("admin")).unwrap(), t);
        assert!(token_matches(&t, &t));
        assert!(!token_matches("x", &t));
    }

    #[test]
    fn join_tokens_round_trip_and_name_what_is_wrong() {
        let t = JoinToken {
            ca_hash: ca_hash("a CA"),
            secret: "s3cret".into(),
        };
        let text = t.to_string();
        assert!(text.starts_with("K10") && text.ends_with("::server:s3cret"));
        assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        for (bad, says) in [
            ("s3cret", "K10"),
            ("K10abc::server:x", "64 hex"),
            (&format!("K10{}server:x", t.ca_hash), "'::'"),
            (&format!("K10{}::admin:x", t.ca_hash), "server:<secret>"),
            (&format!("K10{}::server:", t.ca_hash), "server:<secret>"),
        ] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_install_where_a_member_finds_them() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let pki = ensure_pki(&a.path().join("pki"), &["127.0.0.1".into()]).unwrap();
        let secrets = ClusterSecrets::ensure(a.path(), &pki).unwrap();
        assert!(secrets.ca_key.contains("PRIVATE KEY"));
        let token = std::fs::read_to_string(a.path().join(JOIN_TOKEN)).unwrap();
        assert_eq!(token.parse::<JoinToken>().unwrap(), secrets.token());

        secrets.install(b.path()).unwrap();
        let joined = ensure_pki(&b.path().join("pki"), &["127.0.0.2".into()]).unwrap();
        assert_eq!(joined.ca_pem, pki.ca_pem, "the joiner keeps the cluster CA");
        let again = ClusterSecrets::ensure(b.path(), &joined).unwrap();
        assert_eq!(again.token(), secrets.token());
        assert_eq!(again.admin_token, secrets.admin_token);
    }
}
