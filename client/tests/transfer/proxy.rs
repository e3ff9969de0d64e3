//! A loopback TCP proxy that cuts the first connection whose traffic in one direction
//! passes a threshold (a network failure in the middle of a transfer).
//!
//! At the threshold the proxy forwards exactly up to it, then holds the connection open
//! until the test calls [`Proxy::cut`]: the test first waits until the far side has
//! consumed what was forwarded, so how much a resumption may resend does not depend on
//! what the kernel buffered at the moment of the cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    up: AtomicU64,
    down: AtomicU64,
    cuts: AtomicU64,
    armed_up: AtomicBool,
    armed_down: AtomicBool,
    held: AtomicBool,
    release: tokio::sync::Notify,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr, cut_up: Option<u64>, cut_down: Option<u64>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.armed_up.store(cut_up.is_some(), Ordering::SeqCst);
        state.armed_down.store(cut_down.is_some(), Ordering::SeqCst);
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = pump(&mut cr, &mut sw, &st.up, cut_up, &st.armed_up, &st);
                    let down = pump(&mut sr, &mut cw, &st.down, cut_down, &st.armed_down, &st);
                    let _ = tokio::try_join!(up, down);
                });
            }
        });
        Proxy { addr, state, task }
    }

    pub fn up_bytes(&self) -> u64 {
        self.state.up.load(Ordering::SeqCst)
    }

    pub fn down_bytes(&self) -> u64 {
        self.state.down.load(Ordering::SeqCst)
    }

    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Whether a connection reached its threshold and is held, waiting for [`Self::cut`].
    pub fn held(&self) -> bool {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Cuts the held connection (or the next one to reach its threshold).
    pub fn cut(&self) {
        self.state.release.notify_one();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    total: &AtomicU64,
    cut: Option<u64>,
    armed: &AtomicBool,
    state: &State,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut here = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        if let Some(c) = cut
            && here + n as u64 > c
            && armed.swap(false, Ordering::SeqCst)
        {
            let keep = (c - here) as usize;
            w.write_all(&buf[..keep]).await?;
            w.flush().await?;
            total.fetch_add(keep as u64, Ordering::SeqCst);
            state.held.store(true, Ordering::SeqCst);
            state.release.notified().await;
            state.cuts.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::other("cut"));
        }
        w.write_all(&buf[..n]).await?;
        here += n as u64;
        total.fetch_add(n as u64, Ordering::SeqCst);
    }
}
