//! The relay's TLS identity: a certificate from PEM files, or a self-signed one created once
//! under `DATA/tls/` and reused on later starts, turned into a rustls server config (ring).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cove_wire::sign::{ChannelBinding, TLS_EXPORTER_LABEL};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsSource;

/// Why the TLS identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The certificate file holds no certificate.
    #[error("{0} contains no certificate")]
    NoCertificate(PathBuf),
    /// Writing the self-signed certificate failed.
    #[error("cannot write the self-signed certificate under {path}: {source}")]
    Write {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A loaded TLS identity.
pub(crate) struct TlsIdentity {
    /// The rustls server configuration (HTTP/1.1 only).
    pub server_config: Arc<rustls::ServerConfig>,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Where the certificate file is.
    pub cert_path: PathBuf,
    /// Whether it was created during this start.
    pub created: bool,
}

/// Loads (or creates) the identity for `source`.
pub(crate) fn load(
    source: &TlsSource,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<TlsIdentity, TlsError> {
    let (cert_path, key_path, created) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
        TlsSource::SelfSigned => {
            let dir = data_dir.join("tls");
            let cert = dir.join("cert.pem");
            let key = dir.join("key.pem");
            let created = if cert.exists() && key.exists() {
                false
            } else {
                create_self_signed(&dir, &cert, &key, listen)?;
                true
            };
            (cert, key, created)
        }
    };
    let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| pem_err(&cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&cert_path, e))?;
    let leaf = chain
        .first()
        .cloned()
        .ok_or_else(|| TlsError::NoCertificate(cert_path.clone()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_err(&key_path, e))?;
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| TlsError::Pem {
        path: cert_path.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsIdentity {
        server_config: Arc::new(server_config),
        cert_pem,
        cert_der: leaf,
        cert_path,
        created,
    })
}

/// SHA-256 of a DER certificate (the relay's half of [`ChannelBinding`]).
pub(crate) fn certificate_sha256(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// The channel binding of an accepted TLS connection: its exporter value for
/// [`TLS_EXPORTER_LABEL`] and the relay's certificate hash. `None` if the handshake did not
/// complete (rustls exports only after it).
pub(crate) fn channel_binding(
    conn: &rustls::ServerConnection,
    relay_certificate: [u8; 32],
) -> Option<ChannelBinding> {
    let exporter = conn
        .export_keying_material([0u8; 32], TLS_EXPORTER_LABEL, None)
        .ok()?;
    Some(ChannelBinding {
        exporter,
        relay_certificate,
    })
}

/// The SHA-256 fingerprint of a DER certificate, as colon-separated uppercase hex.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

fn create_self_signed(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    listen: SocketAddr,
) -> Result<(), TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let host = listen.ip();
    if !host.is_unspecified() && !names.contains(&host.to_string()) {
        names.push(host.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    let write_err = |source| TlsError::Write {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    write_private(key_path, certified.signing_key.serialize_pem().as_bytes()).map_err(write_err)?;
    std::fs::write(cert_path, certified.cert.pem()).map_err(write_err)?;
    Ok(())
}

/// Writes a file readable only by its owner (on Unix).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let first =
            load(&TlsSource::SelfSigned, dir.path(), addr).unwrap_or_else(|e| panic!("{e}"));
        assert!(first.created);
        let again =
            load(&TlsSource::SelfSigned, dir.path(), addr).unwrap_or_else(|e| panic!("{e}"));
        assert!(!again.created);
        assert_eq!(fingerprint(&first.cert_der), fingerprint(&again.cert_der));
        assert_eq!(fingerprint(&first.cert_der).len(), 32 * 3 - 1);
    }
}
