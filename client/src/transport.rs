//! The transport: one WebSocket over TLS (rustls with the ring provider) to the relay's
//! `wss://HOST:PORT/v1/ws` endpoint, carrying one encoded frame per binary message.
//!
//! The relay usually runs with a self-signed certificate; [`TlsTrust::CaFile`] trusts exactly
//! that certificate (the `--ca CERT.pem` of `cove init`). Otherwise the Mozilla root store
//! (webpki-roots) is used.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use cove_wire::limits::MAX_FRAME_BYTES;
use cove_wire::sign::{ChannelBinding, TLS_EXPORTER_LABEL};
use cove_wire::{ClientFrame, ServerFrame, WS_PATH};

/// How long the TCP connect, TLS handshake and WebSocket upgrade may take together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which certificates the client trusts for the relay.
#[derive(Clone, Debug)]
pub enum TlsTrust {
    /// The public web PKI (Mozilla's root store, compiled in).
    WebPki,
    /// Exactly the certificates in this PEM file (typically the relay's self-signed one).
    CaFile(PathBuf),
}

/// Why a connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The server URL is not a `wss://HOST:PORT` URL.
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use CA certificate file {path}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// TLS configuration failed (an internal error).
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// The connection has no TLS exporter value or relay certificate to bind the
    /// authentication to (not TLS, or the handshake did not complete).
    #[error("connection to {0} has no TLS channel binding")]
    NoChannelBinding(String),
    /// The TCP, TLS or WebSocket layer failed.
    #[error("connection to {url} failed: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The socket failed after connecting.
    #[error("connection lost: {0}")]
    Io(#[source] Box<tungstenite::Error>),
    /// The relay sent something that is not a frame.
    #[error("the relay sent a malformed frame: {0}")]
    Decode(#[from] cove_wire::DecodeError),
    /// A frame could not be encoded (a client bug).
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] cove_wire::EncodeError),
}

/// Normalises a server URL to the WebSocket endpoint: `wss://HOST:PORT` becomes
/// `wss://HOST:PORT/v1/ws`; an explicit path is kept. Only `wss://` is accepted.
pub fn endpoint_url(server: &str) -> Result<String, TransportError> {
    let bad = |reason| TransportError::BadUrl {
        url: server.to_owned(),
        reason,
    };
    let rest = server
        .strip_prefix("wss://")
        .ok_or_else(|| bad("it must start with wss:// (the relay only speaks TLS)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("it has no host"));
    }
    if authority.contains('@') || authority.contains('?') || authority.contains('#') {
        return Err(bad("use wss://HOST:PORT"));
    }
    let path = match path.trim_end_matches('/') {
        "" => WS_PATH,
        p => p,
    };
    Ok(format!("wss://{authority}{path}"))
}

/// Builds the rustls client configuration for `trust`, with the ring provider.
pub fn client_config(trust: &TlsTrust) -> Result<rustls::ClientConfig, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        TlsTrust::WebPki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TlsTrust::CaFile(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| TransportError::BadCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads every certificate from a PEM file; fails if there is none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bad = |reason: String| TransportError::BadCa {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The channel binding of a TLS WebSocket as the client sees it: the exporter value for
/// [`TLS_EXPORTER_LABEL`] and the SHA-256 of the relay's end-entity certificate.
fn channel_binding(ws: &WebSocketStream<MaybeTlsStream<TcpStream>>) -> Option<ChannelBinding> {
    let MaybeTlsStream::Rustls(tls) = ws.get_ref() else {
        return None;
    };
    let conn = tls.get_ref().1;
    let exporter = conn
        .export_keying_material([0u8; 32], TLS_EXPORTER_LABEL, None)
        .ok()?;
    let leaf = conn.peer_certificates()?.first()?;
    Some(ChannelBinding {
        exporter,
        relay_certificate: Sha256::digest(leaf.as_ref()).into(),
    })
}

/// A connected, not yet authenticated WebSocket to the relay.
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// This connection's TLS exporter value and the relay's certificate hash.
    channel: ChannelBinding,
}

impl Connection {
    /// Connects to `server` (`wss://HOST:PORT`, see [`endpoint_url`]) with the given trust,
    /// under [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(server: &str, trust: &TlsTrust) -> Result<Self, TransportError> {
        let tls = Arc::new(client_config(trust)?);
        Self::connect_with(server, tls).await
    }

    /// Like [`Connection::connect`] with a prepared TLS configuration (reused across
    /// reconnects).
    pub async fn connect_with(
        server: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, TransportError> {
        let url = endpoint_url(server)?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(config),
            true,
            Some(Connector::Rustls(tls)),
        );
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Err(_) => Err(TransportError::Timeout(url)),
            Ok(Err(e)) => Err(TransportError::Connect {
                url,
                source: Box::new(e),
            }),
            Ok(Ok((ws, _response))) => {
                let channel = channel_binding(&ws).ok_or(TransportError::NoChannelBinding(url))?;
                Ok(Connection { ws, channel })
            }
        }
    }

    /// The connection's channel binding: what the answer to the relay's challenge signs with
    /// its nonce (see `PROTOCOL.md`, "Authentication").
    pub fn channel_binding(&self) -> ChannelBinding {
        self.channel
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), TransportError> {
        let bytes = cove_wire::encode(frame)?;
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| TransportError::Io(Box::new(e)))
    }

    /// Queues one frame without flushing (see [`Connection::flush`]).
    pub async fn feed(&mut self, frame: &ClientFrame) -> Result<(), TransportError> {
        let bytes = cove_wire::encode(frame)?;
        self.ws
            .feed(Message::Binary(bytes.into()))
            .await
            .map_err(|e| TransportError::Io(Box::new(e)))
    }

    /// Flushes queued frames to the socket.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        self.ws
            .flush()
            .await
            .map_err(|e| TransportError::Io(Box::new(e)))
    }

    /// Receives the next frame; `Ok(None)` when the relay closed the connection cleanly.
    /// Pings are answered by the WebSocket layer; text messages are a protocol error.
    pub async fn recv(&mut self) -> Result<Option<ServerFrame>, TransportError> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(TransportError::Io(Box::new(e))),
                Some(Ok(Message::Binary(bytes))) => return Ok(Some(cove_wire::decode(&bytes)?)),
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(_))) => {
                    return Err(cove_wire::DecodeError::Malformed("text message".into()).into());
                }
            }
        }
    }

    /// Closes the connection politely (best effort).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_normalised() {
        assert_eq!(
            endpoint_url("wss://127.0.0.1:4433").unwrap(),
            "wss://127.0.0.1:4433/v1/ws"
        );
        assert_eq!(endpoint_url("wss://h:1/").unwrap(), "wss://h:1/v1/ws");
        assert_eq!(endpoint_url("wss://h:1/v1/ws").unwrap(), "wss://h:1/v1/ws");
        assert!(endpoint_url("ws://h:1").is_err());
        assert!(endpoint_url("https://h:1").is_err());
        assert!(endpoint_url("wss://").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = client_config(&TlsTrust::CaFile(path)).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
