//! HTTPS requests to the blob store: hyper 1 (HTTP/1.1) over tokio-rustls, signed where the
//! relay asks for it. Connections are kept alive and reused ([`Pool`], shared by the clones
//! of a [`BlobClient`]): a connection goes back to the pool only once its response was read
//! to the end, and one idle for longer than [`POOL_IDLE`] is not reused (the relay closes
//! idle connections after its handshake timeout, 10 s by default). A request that a pooled
//! connection could not send (it had just closed) is sent again on a new connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use cove_wire::{BlobId, DeviceId};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{BlobClient, TransferError, UploadSource};

type ReqBody = BoxBody<Bytes, std::io::Error>;

/// Bytes handed to the decrypting thread at a time.
const BATCH: usize = 1 << 20;

/// Longest error message read from the relay.
const MAX_ERROR_BODY: usize = 4096;

/// Signs a message with the device's Ed25519 key.
pub type SignFn = Arc<dyn Fn(&[u8]) -> [u8; 64] + Send + Sync>;

/// Signs blob-store requests as one device.
#[derive(Clone)]
pub struct RequestSigner {
    pub(crate) device: DeviceId,
    pub(crate) sign: SignFn,
}

/// `HOST` and `PORT` of `wss://HOST:PORT/...` or `https://HOST:PORT/...`.
pub(crate) fn authority(server: &str) -> Result<(String, u16), TransferError> {
    let bad = || TransferError::BadServer(server.to_owned());
    let rest = server
        .strip_prefix("wss://")
        .or_else(|| server.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let auth = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if auth.is_empty() || auth.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = auth.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(bad)?;
        (h, p.strip_prefix(':'))
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (auth, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => 443,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Longest a pooled connection may have been idle to be reused.
pub(crate) const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Most idle connections kept.
const POOL_MAX: usize = 16;

type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

/// Idle keep-alive connections to the relay, most recently used last.
#[derive(Clone, Default)]
pub(crate) struct Pool(Arc<std::sync::Mutex<Vec<(Sender, std::time::Instant)>>>);

impl Pool {
    /// A connection ready for a request, if one is idle.
    async fn take(&self) -> Option<Sender> {
        loop {
            let (mut sender, since) = self.0.lock().ok()?.pop()?;
            if since.elapsed() > POOL_IDLE || sender.is_closed() {
                continue;
            }
            // Its previous response was read to the end: ready at once, or closed.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put(&self, sender: Sender) {
        if let Ok(mut idle) = self.0.lock() {
            idle.retain(|(s, since)| !s.is_closed() && since.elapsed() <= POOL_IDLE);
            if idle.len() < POOL_MAX {
                idle.push((sender, std::time::Instant::now()));
            }
        }
    }
}

/// The connection a response came on: [`Lease::release`] it to the pool once the response
/// body was read to the end (dropping it closes the connection when the body is done).
pub(crate) struct Lease {
    sender: Sender,
    pool: Pool,
}

impl Lease {
    pub(crate) fn release(self) {
        self.pool.put(self.sender);
    }
}

/// Reads a response body to its end (a small one: empty, or an id); true if it ended well.
async fn drain(body: &mut Incoming) -> bool {
    let mut n = 0usize;
    loop {
        match body.frame().await {
            None => return true,
            Some(Ok(f)) => {
                n += f.data_ref().map_or(0, |d| d.len());
                if n > MAX_ERROR_BODY {
                    return false;
                }
            }
            Some(Err(_)) => return false,
        }
    }
}

pub(crate) struct Conn<'a> {
    client: &'a BlobClient,
}

impl<'a> Conn<'a> {
    pub(crate) fn new(client: &'a BlobClient) -> Self {
        Conn { client }
    }

    /// Creates a blob of `length` bytes; returns its id.
    pub(crate) async fn create(&self, length: u64) -> Result<BlobId, TransferError> {
        let req = self
            .signed(Method::POST, "/v1/blobs", length)?
            .header("upload-length", length);
        let (resp, lease) = self.send(req, empty()).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(refused(resp).await);
        }
        let mut body = resp.into_body();
        let text = read_text(&mut body).await;
        if body.is_end_stream() {
            lease.release();
        }
        BlobId::from_hex(text.trim())
            .map_err(|_| TransferError::Network("the relay returned a malformed blob id".into()))
    }

    /// Deletes a blob of this user.
    pub(crate) async fn delete(&self, id: BlobId) -> Result<(), TransferError> {
        let path = format!("/v1/blobs/{id}");
        let req = self.signed(Method::DELETE, &path, 0)?;
        let (resp, lease) = self.send(req, empty()).await?;
        if resp.status() != StatusCode::NO_CONTENT && resp.status() != StatusCode::NOT_FOUND {
            return Err(refused(resp).await);
        }
        if drain(&mut resp.into_body()).await {
            lease.release();
        }
        Ok(())
    }

    /// This user's storage usage (`GET /v1/usage`): `(used, quota)` in bytes.
    pub(crate) async fn usage(&self) -> Result<(u64, u64), TransferError> {
        let req = self.signed(Method::GET, "/v1/usage", 0)?;
        let (resp, lease) = self.send(req, empty()).await?;
        if resp.status() != StatusCode::OK {
            return Err(refused(resp).await);
        }
        let mut incoming = resp.into_body();
        let body = read_text(&mut incoming).await;
        if incoming.is_end_stream() {
            lease.release();
        }
        #[derive(serde::Deserialize)]
        struct Usage {
            used: u64,
            quota: u64,
        }
        let u: Usage = serde_json::from_str(&body)
            .map_err(|_| TransferError::Network("the relay sent a malformed usage".into()))?;
        Ok((u.used, u.quota))
    }

    /// The relay's stored offset of an upload.
    pub(crate) async fn offset(&self, id: BlobId) -> Result<u64, TransferError> {
        let path = format!("/v1/blobs/{id}");
        let req = self.signed(Method::HEAD, &path, 0)?;
        let (resp, lease) = self.send(req, empty()).await?;
        if resp.status() != StatusCode::OK {
            return Err(refused(resp).await);
        }
        lease.release(); // a HEAD response has no body
        header_u64(&resp, "upload-offset")
            .ok_or_else(|| TransferError::Network("the relay sent no Upload-Offset".into()))
    }

    /// Sends the ciphertext from `offset` to `total`; returns the whole blob's digest.
    pub(crate) async fn append(
        &self,
        id: BlobId,
        offset: u64,
        total: u64,
        source: UploadSource,
        bar: &ProgressBar,
    ) -> Result<[u8; 32], TransferError> {
        let path = format!("/v1/blobs/{id}");
        let req = self
            .signed(Method::PATCH, &path, offset)?
            .header("upload-offset", offset)
            .header(header::CONTENT_TYPE, "application/offset+octet-stream")
            .header(header::CONTENT_LENGTH, total - offset);
        let (tx, rx) = mpsc::channel(4);
        let producer = tokio::task::spawn_blocking(move || source.produce(&tx));
        let body = ChannelBody {
            rx,
            remaining: total - offset,
            bar: bar.clone(),
        }
        .boxed();
        bar.set_position(offset);
        let resp = self.send(req, body).await;
        // A producer that stopped on its own (the file changed or could not be read) cut the
        // body: its error, not the network error that follows, is the answer (no retry).
        let produced = match producer.await {
            Ok(Err(e)) if !matches!(e, TransferError::Network(_)) => return Err(e),
            other => other,
        };
        let (resp, lease) = resp?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(refused(resp).await);
        }
        if header_u64(&resp, "upload-offset") != Some(total) {
            return Err(TransferError::Network(
                "the relay did not store every byte".into(),
            ));
        }
        if drain(&mut resp.into_body()).await {
            lease.release();
        }
        produced.map_err(|_| TransferError::Network("upload task failed".into()))?
    }

    /// Sends `rest`, the bytes of a blob of `total` bytes from `offset` on, in one request.
    pub(crate) async fn append_bytes(
        &self,
        id: BlobId,
        offset: u64,
        total: u64,
        rest: Bytes,
    ) -> Result<(), TransferError> {
        let path = format!("/v1/blobs/{id}");
        let req = self
            .signed(Method::PATCH, &path, offset)?
            .header("upload-offset", offset)
            .header(header::CONTENT_TYPE, "application/offset+octet-stream")
            .header(header::CONTENT_LENGTH, rest.len());
        let body = Full::new(rest).map_err(|never| match never {}).boxed();
        let (resp, lease) = self.send(req, body).await?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(refused(resp).await);
        }
        if header_u64(&resp, "upload-offset") != Some(total) {
            return Err(TransferError::Network(
                "the relay did not store every byte".into(),
            ));
        }
        if drain(&mut resp.into_body()).await {
            lease.release();
        }
        Ok(())
    }

    /// Streams blob bytes from `from` into `tx`; returns how many were forwarded, also on
    /// failure.
    pub(crate) async fn fetch(
        &self,
        id: BlobId,
        from: u64,
        tx: &mpsc::Sender<Bytes>,
        bar: &ProgressBar,
    ) -> Result<u64, (u64, TransferError)> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(format!("/v1/blobs/{id}"));
        if from > 0 {
            req = req.header(header::RANGE, format!("bytes={from}-"));
        }
        let (resp, lease) = self.send(req, empty()).await.map_err(|e| (0, e))?;
        let ok = match resp.status() {
            StatusCode::OK => from == 0,
            StatusCode::PARTIAL_CONTENT => resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {from}-"))),
            _ => false,
        };
        if !ok {
            return Err((0, refused(resp).await));
        }
        if let Some(len) = header_u64(&resp, header::CONTENT_LENGTH.as_str())
            && bar.length().unwrap_or(0) == 0
        {
            bar.set_length(from + len);
        }
        bar.set_position(from);
        let mut body = resp.into_body();
        // Frames are small (a TLS record or a read buffer); hand the decrypting thread 1 MiB
        // batches so that it wakes once per chunk, not once per frame.
        let mut batch = BytesMut::with_capacity(BATCH);
        let mut n = 0u64;
        let mut failure = None;
        loop {
            match body.frame().await {
                None => {}
                Some(Err(e)) => failure = Some(TransferError::Network(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        batch.extend_from_slice(&data);
                    }
                    if batch.len() < BATCH {
                        continue;
                    }
                }
            }
            let done = batch.len() < BATCH;
            if !batch.is_empty() {
                let data = batch.split().freeze();
                batch.reserve(BATCH);
                let len = data.len() as u64;
                if tx.send(data).await.is_err() {
                    // The decryptor stopped (verification failed); its error wins.
                    return Ok(n);
                }
                n += len;
                bar.inc(len);
            }
            if done {
                return match failure {
                    Some(e) => Err((n, e)),
                    None => {
                        if body.is_end_stream() {
                            lease.release();
                        }
                        Ok(n)
                    }
                };
            }
        }
    }

    fn signed(
        &self,
        method: Method,
        path: &str,
        value: u64,
    ) -> Result<http::request::Builder, TransferError> {
        let signer = self
            .client
            .signer
            .as_ref()
            .ok_or_else(|| TransferError::Refused {
                status: 401,
                message: "uploading needs a registered device (run cove init)".into(),
            })?;
        let ts = signing_timestamp();
        let msg = cove_wire::sign::blob_request_message(method.as_str(), path, ts, value);
        let sig = (signer.sign)(&msg);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("cove-device", signer.device.0)
            .header("cove-timestamp", ts)
            .header("cove-signature", hex::encode(sig));
        if let Some(retention) = self.client.retention.header() {
            req = req.header("cove-retention", retention);
        }
        Ok(req)
    }

    /// Sends `req` on a pooled connection, or a new one; returns the response and the
    /// connection's lease.
    async fn send(
        &self,
        req: http::request::Builder,
        body: ReqBody,
    ) -> Result<(Response<Incoming>, Lease), TransferError> {
        let c = self.client;
        let host_header = if c.host.contains(':') {
            format!("[{}]:{}", c.host, c.port)
        } else {
            format!("{}:{}", c.host, c.port)
        };
        let mut req = req
            .header(header::HOST, host_header)
            .body(body)
            .map_err(|e| TransferError::Network(e.to_string()))?;
        let net = |e: &dyn std::fmt::Display| TransferError::Network(e.to_string());
        if let Some(mut sender) = c.pool.take().await {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender,
                        pool: c.pool.clone(),
                    };
                    return Ok((resp, lease));
                }
                // Not sent (the connection had just closed): again on a new one.
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(net(e.error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await.map_err(|e| net(&e))?;
        let lease = Lease {
            sender,
            pool: c.pool.clone(),
        };
        Ok((resp, lease))
    }

    /// A new connection (TCP, TLS, HTTP/1.1 handshake).
    async fn connect(&self) -> Result<Sender, TransferError> {
        let c = self.client;
        let net = |e: &dyn std::fmt::Display| TransferError::Network(e.to_string());
        let tcp = TcpStream::connect((c.host.as_str(), c.port))
            .await
            .map_err(|e| net(&e))?;
        tcp.set_nodelay(true).map_err(|e| net(&e))?;
        let name = rustls::pki_types::ServerName::try_from(c.host.clone())
            .map_err(|_| TransferError::BadServer(c.host.clone()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&c.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| net(&e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| net(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// The last timestamp signed by this process.
static LAST_SIGNED_MS: AtomicU64 = AtomicU64::new(0);

/// Now in ms since the Unix epoch, but always later than the previous call: the relay accepts
/// each signature once, and two requests signed in the same millisecond with the same method,
/// path and value would otherwise carry the same signature (Ed25519 is deterministic).
fn signing_timestamp() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let prev = LAST_SIGNED_MS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(now);
    now.max(prev.saturating_add(1))
}

fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn header_u64(resp: &Response<Incoming>, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of a body as text.
async fn read_text(body: &mut Incoming) -> String {
    let mut out = Vec::new();
    while out.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    out.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&out).into_owned()
}

async fn refused(resp: Response<Incoming>) -> TransferError {
    let status = resp.status().as_u16();
    let text = read_text(&mut resp.into_body()).await;
    let message = text.lines().next().unwrap_or_default().trim().to_owned();
    let message = if message.is_empty() {
        resp_reason(status)
    } else {
        message.chars().filter(|c| !c.is_control()).collect()
    };
    TransferError::Refused { status, message }
}

fn resp_reason(status: u16) -> String {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_owned()
}

/// The upload body: ciphertext from the producer thread, exactly `remaining` bytes.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    remaining: u64,
    bar: ProgressBar,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                if self.remaining == 0 {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(std::io::Error::other(
                        "upload source ended early",
                    ))))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(b))) => {
                let len = b.len() as u64;
                self.remaining = self.remaining.saturating_sub(len);
                self.bar.inc(len);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
