//! Direct relay requests outside the core, for what the core does not do itself: probing
//! what the relay allows a device (e.g. that a removed member is refused). Linking a further
//! device goes through the core (see [`crate::Device::link`]). Signatures are made inside the device's session
//! task with its key; no key leaves it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use cove_wire::{ClientFrame, DeviceId, ErrorReply, Reply, Request, RequestId, ServerFrame};

use crate::transport::{Connection, TransportError};

/// How long a raw exchange may take.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a raw exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// Connecting or talking failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The relay sent something unexpected.
    #[error("unexpected answer from the relay: {0}")]
    Unexpected(String),
    /// The relay refused to authenticate.
    #[error("the relay refused: {0}")]
    Refused(ErrorReply),
    /// No answer in time.
    #[error("the relay did not answer in time")]
    Timeout,
}

/// An authenticated raw connection.
pub struct RawConnection {
    conn: Connection,
    next_id: u32,
    /// Link rendezvous pushes read while waiting for a response.
    link_frames: VecDeque<ServerFrame>,
    /// The authenticated device.
    pub device: DeviceId,
}

impl RawConnection {
    /// Connects and reads the relay's challenge nonce; authenticate next with
    /// [`RawConnection::authenticate`].
    pub async fn open(
        server: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(RawConnection, [u8; 32]), RawError> {
        tokio::time::timeout(RAW_TIMEOUT, async {
            let mut conn = Connection::connect_with(server, tls).await?;
            match conn.recv().await? {
                Some(ServerFrame::Challenge { nonce, .. }) => Ok((
                    RawConnection {
                        conn,
                        next_id: 1,
                        link_frames: VecDeque::new(),
                        device: DeviceId(0),
                    },
                    nonce,
                )),
                other => Err(RawError::Unexpected(format!("{other:?}"))),
            }
        })
        .await
        .map_err(|_| RawError::Timeout)?
    }

    /// The connection's channel binding (what the challenge answer signs with the nonce).
    pub fn channel_binding(&self) -> cove_wire::sign::ChannelBinding {
        self.conn.channel_binding()
    }

    /// Authenticates (or registers) with `body`.
    pub async fn authenticate(&mut self, body: Request) -> Result<DeviceId, RawError> {
        match self.request(body).await? {
            Ok(Reply::Authenticated { device }) => {
                self.device = device;
                Ok(device)
            }
            Ok(other) => Err(RawError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(RawError::Refused(e)),
        }
    }

    /// Sends one request and returns its reply (deliveries in between are skipped).
    pub async fn request(&mut self, body: Request) -> Result<Result<Reply, ErrorReply>, RawError> {
        tokio::time::timeout(RAW_TIMEOUT, self.request_inner(body))
            .await
            .map_err(|_| RawError::Timeout)?
    }

    async fn request_inner(
        &mut self,
        body: Request,
    ) -> Result<Result<Reply, ErrorReply>, RawError> {
        let id = RequestId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.conn.send(&ClientFrame::Request { id, body }).await?;
        loop {
            match self.conn.recv().await? {
                None => return Err(RawError::Unexpected("connection closed".into())),
                Some(ServerFrame::Response { id: got, result }) if got == id => return Ok(result),
                Some(ServerFrame::Closing { code }) => {
                    return Err(RawError::Unexpected(format!("closing: {code:?}")));
                }
                Some(link) if is_link_push(&link) => self.link_frames.push_back(link),
                Some(_) => continue,
            }
        }
    }

    /// The next link rendezvous push (`LinkPeerJoined`, `LinkMessage`, `LinkClosed`), waiting
    /// up to `timeout`.
    pub async fn next_link_frame(&mut self, timeout: Duration) -> Result<ServerFrame, RawError> {
        if let Some(frame) = self.link_frames.pop_front() {
            return Ok(frame);
        }
        tokio::time::timeout(timeout, async {
            loop {
                match self.conn.recv().await? {
                    None => return Err(RawError::Unexpected("connection closed".into())),
                    Some(ServerFrame::Closing { code }) => {
                        return Err(RawError::Unexpected(format!("closing: {code:?}")));
                    }
                    Some(link) if is_link_push(&link) => return Ok(link),
                    Some(_) => continue,
                }
            }
        })
        .await
        .map_err(|_| RawError::Timeout)?
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// Whether `frame` is a push of the link rendezvous.
fn is_link_push(frame: &ServerFrame) -> bool {
    matches!(
        frame,
        ServerFrame::LinkPeerJoined
            | ServerFrame::LinkMessage { .. }
            | ServerFrame::LinkClosed { .. }
    )
}
