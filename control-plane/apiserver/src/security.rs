//! Secure defaults: a cluster CA and serving certificate generated once into
//! the data directory, and bearer-token authentication.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

/// A rustls server config speaking HTTP/1.1 (what kubectl uses).
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let certs =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
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
}
