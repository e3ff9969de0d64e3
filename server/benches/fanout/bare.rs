//! The bare baseline: the smallest reasonable tokio-tungstenite broadcast server over the
//! same TLS as the relay (rustls with ring, a self-signed rcgen certificate).
//!
//! A connection's first message says its role: `"recv"` (the server answers `"ok"` once the
//! receiver is registered) or `"send"`. Every binary message from a sender goes to every
//! receiver: the reader clones one `Bytes` (a reference-count increment) into each
//! receiver's bounded queue, and each receiver has its own writer task that drains its queue
//! with `recv_many`, `feed`s every frame into tungstenite's write buffer and flushes once, so
//! a burst becomes a few large TLS records and one syscall.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Per-receiver queue capacity in frames.
const QUEUE: usize = 4096;

type Receivers = Arc<Mutex<Vec<mpsc::Sender<Message>>>>;

/// Starts the bare broadcast server on 127.0.0.1:0 and returns its address. Must be called
/// on the server runtime.
pub async fn start(tls: Arc<rustls::ServerConfig>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(tls);
    let receivers: Receivers = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let receivers = receivers.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let config = Some(ws_config());
                let Ok(ws) = tokio_tungstenite::accept_async_with_config(tls, config).await else {
                    return;
                };
                connection(ws, receivers).await;
            });
        }
    });
    Ok(addr)
}

/// The relay's WebSocket settings (`cove_server::Limits` defaults): tungstenite zeroes
/// `read_buffer_size` bytes before every read, so its 128 KiB default would cost a 128 KiB
/// memset per read; the relay uses 16 KiB and so does this baseline.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(128 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
}

async fn connection<S>(ws: tokio_tungstenite::WebSocketStream<S>, receivers: Receivers)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let role = match stream.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        _ => return,
    };
    if role == "recv" {
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
        if let Ok(mut list) = receivers.lock() {
            list.push(tx);
        }
        if sink.send(Message::text("ok")).await.is_err() {
            return;
        }
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                for m in batch.drain(..) {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        // Receivers send nothing more; read until they close.
        while let Some(Ok(_)) = stream.next().await {}
        writer.abort();
    } else {
        while let Some(Ok(msg)) = stream.next().await {
            if !msg.is_binary() {
                continue;
            }
            let Ok(list) = receivers.lock() else { return };
            for tx in list.iter() {
                // A full queue means a stuck receiver; the bare baseline just drops for it
                // (the closed loop would then stall and report it).
                let _ = tx.try_send(msg.clone());
            }
        }
    }
}
