//! JSON-RPC 2.0 framing: one JSON object per `\n`-terminated line, at most
//! [`MAX_LINE`] bytes; requests, responses, notifications and error objects.

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

/// The longest line accepted (1 MiB, the newline excluded). A longer one is answered with
/// [`INVALID_REQUEST`] and the connection is closed.
pub const MAX_LINE: usize = 1 << 20;

/// The line is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a request (or the line is too long).
pub const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// The parameters do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;
/// A Cove error: `data` is `{code, message}`.
pub const COVE_ERROR: i64 = -32000;

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    /// The JSON-RPC error code.
    pub code: i64,
    /// One line for people.
    pub message: String,
    /// For [`COVE_ERROR`]: `{code: KIND, message}`.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Invalid parameters.
    pub fn params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    /// A Cove error of kind `kind` (e.g. `NoSuchGroup`), with its message escaped as the CLI
    /// escapes it.
    pub fn cove(kind: &str, message: &str) -> RpcError {
        let message = crate::escape(&message.replace('\n', " "));
        RpcError {
            code: COVE_ERROR,
            message: message.clone(),
            data: Some(json!({ "code": kind, "message": message })),
        }
    }

    /// The Cove error kind (`data.code`), if this is one.
    pub fn kind(&self) -> Option<&str> {
        self.data.as_ref()?.get("code")?.as_str()
    }

    /// The error object.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            v["data"] = data.clone();
        }
        v
    }

    /// Reads an error object.
    pub fn from_json(v: &Value) -> RpcError {
        RpcError {
            code: v.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            data: v.get("data").cloned(),
        }
    }
}

/// One request as read from a line.
#[derive(Debug)]
pub struct Incoming {
    /// The id (`None` for a notification: no response is sent).
    pub id: Option<Value>,
    /// The method.
    pub method: String,
    /// The parameters (an object; `{}` when absent).
    pub params: Value,
}

/// Parses a line: the request, or the error to answer (with id `null` when unknown).
pub fn parse(line: &[u8]) -> Result<Incoming, (Value, RpcError)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            RpcError::new(PARSE_ERROR, format!("parse error: {e}")),
        )
    })?;
    let invalid = |id: Value, why: &str| (id, RpcError::new(INVALID_REQUEST, why.to_owned()));
    let Value::Object(mut obj) = value else {
        return Err(invalid(Value::Null, "invalid request: not an object"));
    };
    let id = obj.remove("id");
    if let Some(id) = &id
        && !matches!(id, Value::String(_) | Value::Number(_) | Value::Null)
    {
        return Err(invalid(Value::Null, "invalid request: bad id"));
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(
            reply_id,
            "invalid request: jsonrpc must be \"2.0\"",
        ));
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return Err(invalid(reply_id, "invalid request: no method"));
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err((
                reply_id,
                RpcError::params("invalid params: params must be an object"),
            ));
        }
    };
    Ok(Incoming { id, method, params })
}

/// A response line (with its newline).
pub fn response(id: &Value, result: Result<Value, RpcError>) -> String {
    let v = match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() }),
    };
    line(&v)
}

/// A notification line (with its newline).
pub fn notification(method: &str, params: Value) -> String {
    line(&json!({ "jsonrpc": "2.0", "method": method, "params": params }))
}

/// A request line (with its newline).
pub fn request(id: u64, method: &str, params: Value) -> String {
    line(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
}

fn line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// What [`read_line`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (without its newline) is in the buffer.
    Line,
    /// The stream ended (a last unterminated line, if any, is in the buffer as a line).
    Eof,
    /// The line exceeds the limit (the buffer holds its first part only).
    TooLong,
}

/// Reads one line into `buf` (cleared first), never holding more than `max` bytes of it.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Line
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(pos) => (&available[..pos], Some(pos + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Line::Line);
        }
    }
}

/// A string parameter.
pub fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::params(format!("invalid params: `{name}` (a string) is required")))
}

/// An optional string parameter.
pub fn opt_str_param<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::params(format!(
            "invalid params: `{name}` must be a string"
        ))),
    }
}

/// A list-of-strings parameter.
pub fn strings_param(params: &Value, name: &str) -> Result<Vec<String>, RpcError> {
    let err = || {
        RpcError::params(format!(
            "invalid params: `{name}` (a list of strings) is required"
        ))
    };
    params
        .get(name)
        .and_then(Value::as_array)
        .ok_or_else(err)?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(err))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn code(line: &str) -> (Value, i64) {
        let (id, e) = parse(line.as_bytes()).unwrap_err();
        (id, e.code)
    }

    #[test]
    fn requests_parse_and_bad_ones_get_their_error_code() {
        let r = parse(br#"{"jsonrpc":"2.0","id":7,"method":"send","params":{"a":1}}"#).unwrap();
        assert_eq!(
            (r.id, r.method.as_str(), r.params),
            (Some(json!(7)), "send", json!({"a": 1}))
        );
        let r = parse(br#"{"jsonrpc":"2.0","method":"subscribe"}"#).unwrap();
        assert_eq!((r.id, r.params), (None, json!({})));
        assert_eq!(code("{nope"), (Value::Null, PARSE_ERROR));
        assert_eq!(code("[1]"), (Value::Null, INVALID_REQUEST));
        assert_eq!(
            code(r#"{"id":1,"method":"x"}"#),
            (json!(1), INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":"a"}"#),
            (json!("a"), INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#),
            (Value::Null, INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":2,"method":"x","params":[1]}"#),
            (json!(2), INVALID_PARAMS)
        );
    }

    #[tokio::test]
    async fn lines_are_read_up_to_the_limit() {
        let input: &[u8] = b"abc\n0123456789\nlast";
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::Line
        );
        assert_eq!(buf, b"abc");
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::TooLong
        );
        assert!(buf.len() <= 8);
        let mut reader = tokio::io::BufReader::with_capacity(4, &b"12345678\nlast"[..]);
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::Line
        );
        assert_eq!(buf, b"12345678");
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::Line
        );
        assert_eq!(buf, b"last");
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::Eof
        );
    }
}
