//! A client of a running daemon (what the CLI uses when one serves the home): one
//! connection, requests one at a time, notifications kept in order until read.

use std::collections::VecDeque;
use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::rpc::{self, Line, RpcError};
use crate::config::Home;

/// Why a daemon request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("the cove daemon's socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Rpc(RpcError),
    /// The daemon closed the connection.
    #[error("the cove daemon closed the connection")]
    Closed,
    /// The daemon sent something that is not JSON-RPC.
    #[error("the cove daemon sent an invalid line")]
    Invalid,
}

/// A notification from the daemon.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// What happened (`message`, `membership`, `incoming_call`, ...).
    pub method: String,
    /// Its parameters.
    pub params: Value,
}

/// A connection to a daemon.
pub struct DaemonClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    notifications: VecDeque<Notification>,
    buf: Vec<u8>,
}

impl DaemonClient {
    /// Connects to the daemon of `home`; `None` when none runs (no socket, or a stale one
    /// nobody listens on).
    pub async fn connect(home: &Home) -> Result<Option<DaemonClient>, ClientError> {
        Self::connect_path(&super::socket_path(home)).await
    }

    /// Connects to the daemon socket at `path`; `None` when nobody listens there.
    pub async fn connect_path(path: &Path) -> Result<Option<DaemonClient>, ClientError> {
        match UnixStream::connect(path).await {
            Ok(stream) => {
                let (read, writer) = stream.into_split();
                Ok(Some(DaemonClient {
                    reader: BufReader::new(read),
                    writer,
                    next_id: 1,
                    notifications: VecDeque::new(),
                    buf: Vec::new(),
                }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Calls `method` and returns its result (notifications read meanwhile are kept).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer
            .write_all(rpc::request(id, method, params).as_bytes())
            .await?;
        loop {
            let v = self.read().await?;
            if v.get("method").is_some() && v.get("id").is_none() {
                self.notifications.push_back(notification(v)?);
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(ClientError::Rpc(RpcError::from_json(e)));
                }
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(ClientError::Rpc(RpcError::from_json(e)));
            }
            return v.get("result").cloned().ok_or(ClientError::Invalid);
        }
    }

    /// The next notification (after `subscribe`), waiting for one; `None` when the daemon
    /// closed the connection (it stopped).
    pub async fn next_notification(&mut self) -> Result<Option<Notification>, ClientError> {
        if let Some(n) = self.notifications.pop_front() {
            return Ok(Some(n));
        }
        loop {
            let v = match self.read().await {
                Ok(v) => v,
                Err(ClientError::Closed) => return Ok(None),
                Err(e) => return Err(e),
            };
            if v.get("method").is_some() && v.get("id").is_none() {
                return Ok(Some(notification(v)?));
            }
        }
    }

    async fn read(&mut self) -> Result<Value, ClientError> {
        loop {
            match rpc::read_line(&mut self.reader, &mut self.buf, usize::MAX).await? {
                Line::Eof if self.buf.is_empty() => return Err(ClientError::Closed),
                Line::TooLong => return Err(ClientError::Invalid),
                Line::Line | Line::Eof => {
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return serde_json::from_slice(&self.buf).map_err(|_| ClientError::Invalid);
                }
            }
        }
    }
}

fn notification(mut v: Value) -> Result<Notification, ClientError> {
    let method = v
        .get("method")
        .and_then(Value::as_str)
        .ok_or(ClientError::Invalid)?
        .to_owned();
    let params = v.get_mut("params").map(Value::take).unwrap_or(Value::Null);
    Ok(Notification { method, params })
}
