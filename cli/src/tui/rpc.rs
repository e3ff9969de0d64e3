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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;
    use tokio::io::AsyncWriteExt as _;
    use tokio::sync::mpsc::unbounded_channel;

    use super::*;

    #[test]
    fn lines_become_replies_errors_and_notifications_and_anything_else_is_dropped() {
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":7,"result":{"subscribed":true}}"#),
            Some(DaemonEvent::Reply {
                id: 7,
                result: Ok(json!({ "subscribed": true }))
            })
        );
        let error = br#"{"jsonrpc":"2.0","id":8,"error":{"code":-32000,"message":"cove error",
            "data":{"code":"NoSuchGroup","message":"no group named \"x\""}}}"#;
        assert_eq!(
            parse(error),
            Some(DaemonEvent::Reply {
                id: 8,
                result: Err(RpcError {
                    code: -32000,
                    message: "no group named \"x\"".into(),
                    kind: Some("NoSuchGroup".into()),
                })
            })
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","method":"connection","params":{"connected":false}}"#),
            Some(DaemonEvent::Notification {
                method: "connection".into(),
                params: json!({ "connected": false })
            })
        );
        for garbage in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"id":"seven","result":1}"#,
            br#"{"method":7}"#,
            b"",
        ] {
            assert_eq!(parse(garbage), None, "{}", String::from_utf8_lossy(garbage));
        }
    }

    #[test]
    fn a_request_is_one_json_rpc_line() {
        let line = request_line(3, "send", json!({ "group": "g", "text": "a\nb" }));
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({ "jsonrpc": "2.0", "id": 3, "method": "send",
                    "params": { "group": "g", "text": "a\nb" } })
        );
    }

    /// Through a real socket: the connection reports itself, writes requests, delivers a
    /// reply split over two writes, and reports a line over 1 MiB as the connection's loss.
    #[tokio::test]
    async fn the_connection_delivers_lines_and_gives_up_on_an_overlong_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (events, mut incoming) = unbounded_channel();
        let (requests, outgoing) = unbounded_channel();
        let task = tokio::spawn(connection(path, events, outgoing));
        let (mut daemon, _) = listener.accept().await.unwrap();
        assert_eq!(
            incoming.recv().await,
            Some(Event::Daemon(DaemonEvent::Connected))
        );

        requests.send(request_line(1, "status", json!({}))).unwrap();
        let mut reader = BufReader::new(&mut daemon);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["method"],
            "status"
        );
        daemon
            .write_all(br#"{"jsonrpc":"2.0","id":1,"#)
            .await
            .unwrap();
        daemon.write_all(b"\"result\":{}}\n").await.unwrap();
        assert_eq!(
            incoming.recv().await,
            Some(Event::Daemon(DaemonEvent::Reply {
                id: 1,
                result: Ok(json!({}))
            }))
        );

        // (The UI may close the socket before the last bytes are written.)
        let _ = daemon.write_all(&vec![b'x'; MAX_LINE + 2]).await;
        assert_eq!(
            incoming.recv().await,
            Some(Event::Daemon(DaemonEvent::Lost(
                "the daemon sent a line over 1 MiB".into()
            )))
        );
        drop(requests);
        task.abort();
    }
}
