//! The TUI's side of the daemon's socket: JSON-RPC 2.0, one object per line. One task owns the
//! connection: it writes the requests it is given, turns each line read into a
//! [`DaemonEvent`], and reconnects when the daemon goes away.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::tui::app::{DaemonEvent, Event, RpcError};

/// The longest line read from the daemon (the API's limit).
const MAX_LINE: usize = 1024 * 1024;

/// How long to wait between connection attempts after the daemon went away.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// One request as the line to write.
pub fn request_line(id: u64, method: &str, params: Value) -> String {
    let mut line =
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string();
    line.push('\n');
    line
}

/// Runs the connection to the socket at `path` until `requests` closes: reports
/// [`DaemonEvent::Connected`] on each (re)connection, every reply and notification, and
/// [`DaemonEvent::Lost`] when the connection ends.
pub async fn connection(
    path: PathBuf,
    events: UnboundedSender<Event>,
    mut requests: UnboundedReceiver<String>,
) {
    loop {
        let stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                    r = requests.recv() => match r {
                        // Not connected: the request is lost, as the app knows.
                        Some(_) => continue,
                        None => return,
                    },
                }
            }
        };
        if events.send(Event::Daemon(DaemonEvent::Connected)).is_err() {
            return;
        }
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut buf = Vec::new();
        let reason = loop {
            tokio::select! {
                line = next_line(&mut reader, &mut buf) => match line {
                    Ok(Some(line)) => {
                        if let Some(event) = parse(&line)
                            && events.send(Event::Daemon(event)).is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break "the daemon closed the connection".to_owned(),
                    Err(e) => break e.to_string(),
                },
                request = requests.recv() => match request {
                    Some(line) => {
                        if let Err(e) = write.write_all(line.as_bytes()).await {
                            break e.to_string();
                        }
                    }
                    None => return,
                },
            }
        };
        if events
            .send(Event::Daemon(DaemonEvent::Lost(reason)))
            .is_err()
        {
            return;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Reads one line (without its `\n`) into a fresh vector, keeping a partial line in `buf`
/// when cancelled. `None` at end of input.
async fn next_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(None);
        }
        if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(chunk.get(..end).unwrap_or_default());
            reader.consume(end + 1);
            return Ok(Some(std::mem::take(buf)));
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        reader.consume(n);
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the daemon sent a line over 1 MiB",
            ));
        }
    }
}

/// A line from the daemon as an event; `None` for anything that is neither a reply nor a
/// notification.
pub fn parse(line: &[u8]) -> Option<DaemonEvent> {
    let v: Value = serde_json::from_slice(line).ok()?;
    if v.get("id").is_none_or(Value::is_null)
        && let Some(method) = v.get("method").and_then(Value::as_str)
    {
        return Some(DaemonEvent::Notification {
            method: method.to_owned(),
            params: v.get("params").cloned().unwrap_or(Value::Null),
        });
    }
    let id = v.get("id")?.as_u64()?;
    if let Some(error) = v.get("error") {
        let data = error.get("data");
        let text = |v: Option<&Value>, key: &str| {
            v.and_then(|v| v.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let message = text(data, "message")
            .or_else(|| text(Some(error), "message"))
            .unwrap_or_else(|| "the daemon refused".to_owned());
        return Some(DaemonEvent::Reply {
            id,
            result: Err(RpcError {
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message,
                kind: text(data, "code"),
            }),
        });
    }
    Some(DaemonEvent::Reply {
        id,
        result: Ok(v.get("result").cloned().unwrap_or(Value::Null)),
    })
}
