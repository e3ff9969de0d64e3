//! One TCP connection: TLS handshake, HTTP/1.1 (hyper) and, for `GET /v1/ws`, the WebSocket
//! upgrade. Everything up to an open WebSocket runs under the handshake deadline, inside the
//! connection's own task. Until an upgrade, writes that make no progress for
//! `http_body_idle_ms` end the connection ([`crate::idle`]); upload bodies have the same
//! idle bound in the blob service.
//!
//! Routes: `/v1/ws` (WebSocket, protocol v1), `/v1/blobs...`, `/v1/usage` and `/s/...` (the
//! blob service),
//! `/health` and `/metrics` ([`crate::metrics`]; `/metrics` to loopback clients unless
//! `metrics_public`), `/` (a short text page), anything else 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::debug;

use crate::admission::AddressSlot;
use crate::blob::BlobBody;
use crate::idle::WriteIdle;
use crate::shared::{Shared, stopped};

/// The text served at `/`.
const INDEX_PAGE: &str = "Cove relay\n\n\
This is a Cove relay. Cove clients connect to wss://<this host>/v1/ws.\n\
Encrypted attachments live under /v1/blobs; share links under /s/.\n\
The relay stores and forwards ciphertext only.\n";

type UpgradeSlot = Arc<Mutex<Option<OnUpgrade>>>;

/// Serves one accepted TCP connection until it closes. `slots` are its connection slot and
/// its address's; both are given back when it ends.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slots: (OwnedSemaphorePermit, AddressSlot),
) {
    let _slots = slots;
    let deadline = Instant::now() + shared.limits.handshake_timeout();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&shared.tls));
    let tls = match timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let Some(channel) = crate::tls::channel_binding(tls.get_ref().1, shared.relay_certificate)
    else {
        debug!(%peer, "no TLS exporter after the handshake");
        return;
    };

    let slot: UpgradeSlot = Arc::new(Mutex::new(None));
    let service = {
        let shared = Arc::clone(&shared);
        let slot = Arc::clone(&slot);
        hyper::service::service_fn(move |req| {
            route(req, Arc::clone(&shared), Arc::clone(&slot), peer)
        })
    };
    let header_timeout = deadline.saturating_duration_since(Instant::now());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024);
    // Until an upgrade, a response that the client does not read for the body idle
    // timeout ends the connection.
    let (io, write_idle) = WriteIdle::new(tls, shared.limits.http_body_idle());
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = shared.shutdown.clone();
    let served = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stopped(&mut shutdown) => None,
    };
    let served = match served {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(shared.limits.shutdown_grace(), conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = served {
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
    let upgrade = slot.lock().map(|mut s| s.take()).unwrap_or_default();
    let Some(upgrade) = upgrade else { return };
    write_idle.store(false, Ordering::Relaxed);
    let upgraded = match timeout_at(deadline, upgrade).await {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket upgrade timed out");
            return;
        }
    };
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(shared.ws_config),
    )
    .await;
    crate::session::run(ws, shared, peer, channel).await;
}

async fn route(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    slot: UpgradeSlot,
    peer: SocketAddr,
) -> Result<Response<BlobBody>, Infallible> {
    let path = req.uri().path();
    if path == cove_wire::WS_PATH {
        return Ok(websocket_upgrade(req, &slot));
    }
    if path.starts_with("/v1/blobs") || path.starts_with("/s/") || path == crate::blob::USAGE_PATH {
        return Ok(shared
            .blob
            .handle(req, shared.limits.http_body_idle())
            .await);
    }
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    if path == "/health" && get {
        return Ok(match crate::metrics::health(&shared).await {
            Ok(()) => json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
            Err(why) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"status":"unavailable","reason":"{why}"}}"#),
            ),
        });
    }
    if path == "/metrics" && get && (shared.limits.metrics_public || peer.ip().is_loopback()) {
        let mut resp = owned_text(StatusCode::OK, crate::metrics::render(&shared));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return Ok(resp);
    }
    if path == "/" && get {
        return Ok(text(StatusCode::OK, INDEX_PAGE));
    }
    Ok(text(StatusCode::NOT_FOUND, "not found\n"))
}

/// Answers a WebSocket upgrade request (RFC 6455 section 4.2) and parks the upgrade for the
/// connection task.
fn websocket_upgrade(mut req: Request<Incoming>, slot: &UpgradeSlot) -> Response<BlobBody> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if req.method() != Method::GET
        || !has_token(header::UPGRADE, "websocket")
        || !has_token(header::CONNECTION, "upgrade")
    {
        return text(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required\n");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut resp = text(StatusCode::BAD_REQUEST, "unsupported WebSocket version\n");
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = header::HeaderValue::from_str(&accept) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    match slot.lock() {
        Ok(mut s) => *s = Some(on_upgrade),
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<BlobBody> {
    let body = Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn owned_text(status: StatusCode, body: String) -> Response<BlobBody> {
    let body = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, body: String) -> Response<BlobBody> {
    let mut resp = owned_text(status, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn empty() -> BlobBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}
