//! Raw HTTPS requests to the relay's blob API (hyper over tokio-rustls), for requests the
//! `cove::transfer` client never sends: unsigned, wrongly signed, replayed, skewed, or
//! signed by another user.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cove_test_utils::DeviceKeys;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response: status, headers and the body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `Upload-Offset` header.
    pub fn offset(&self) -> Option<u64> {
        self.headers
            .get("upload-offset")?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// Asserts the status and the one-line message (the body without its newline).
    #[track_caller]
    pub fn assert(&self, status: u16, message: &str) {
        assert_eq!(
            (self.status, self.body.trim_end_matches('\n')),
            (status, message),
            "{self:?}"
        );
    }
}

/// One HTTP/1.1 connection to the relay, opened (TCP and TLS) before any request is sent.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Conn {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::from(addr.ip());
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            sender,
            host: addr.to_string(),
        }
    }

    pub async fn send(mut self, req: http::request::Builder, body: Vec<u8>) -> Reply {
        let req = req
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// Sends one request on a new connection.
pub async fn send(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    req: http::request::Builder,
    body: Vec<u8>,
) -> Reply {
    Conn::open(addr, tls).await.send(req, body).await
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .try_into()
        .unwrap()
}

/// A request signed by `signer` claiming to be `device` at `ts`, over `value`
/// (`Upload-Length` for POST, `Upload-Offset` for PATCH, else 0).
pub fn signed_as(
    device: cove_wire::DeviceId,
    signer: &DeviceKeys,
    method: Method,
    path: &str,
    ts: u64,
    value: u64,
) -> http::request::Builder {
    let msg = cove_wire::sign::blob_request_message(method.as_str(), path, ts, value);
    Request::builder()
        .method(method)
        .uri(path)
        .header("cove-device", device.0)
        .header("cove-timestamp", ts)
        .header("cove-signature", hex::encode(signer.sign_raw(&msg).0))
}

/// A request correctly signed by `keys`' own device.
pub fn signed(
    keys: &DeviceKeys,
    method: Method,
    path: &str,
    ts: u64,
    value: u64,
) -> http::request::Builder {
    signed_as(keys.id(), keys, method, path, ts, value)
}

/// `POST /v1/blobs` for a blob of `length` bytes.
pub fn create(keys: &DeviceKeys, ts: u64, length: u64) -> http::request::Builder {
    signed(keys, Method::POST, "/v1/blobs", ts, length).header("upload-length", length)
}

/// `PATCH /v1/blobs/<id>` from `offset`.
pub fn append(keys: &DeviceKeys, id: &str, ts: u64, offset: u64) -> http::request::Builder {
    signed(keys, Method::PATCH, &format!("/v1/blobs/{id}"), ts, offset)
        .header("upload-offset", offset)
        .header(
            http::header::CONTENT_TYPE,
            "application/offset+octet-stream",
        )
}
