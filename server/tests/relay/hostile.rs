//! Hostile input: each case gets a clear error or a close with an exact code (the `Closing`
//! frame's `ErrorCode` and the WebSocket close status), and the relay keeps serving a
//! connection that was open throughout, and new ones.

use bytes::Bytes;
use cove_test_utils::{DEFAULT_TIMEOUT, DeviceKeys, TestClient, TestRelay};
use cove_wire::{ClientFrame, ErrorCode, Reply, Request, RequestId, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{relay, wait_until};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An authenticated bystander that must stay served.
async fn bystander(relay: &TestRelay) -> TestClient {
    let (mut client, _) = relay.register("bystander").await.unwrap();
    client.backlog().await.unwrap();
    client
}

async fn still_serving(relay: &TestRelay, bystander: &mut TestClient) {
    assert_eq!(bystander.call(Request::Ping).await.unwrap(), Reply::Pong);
    let mut fresh = relay.connect().await.unwrap();
    assert_eq!(fresh.call(Request::Ping).await.unwrap(), Reply::Pong);
}

/// How the relay ended a connection: the code of its `Closing` frame and the status of its
/// WebSocket close frame (`None` where that frame did not come).
type Close = (Option<ErrorCode>, Option<CloseCode>);

/// Sends `messages` on a fresh raw WebSocket; returns how the relay closed it.
async fn close_after(relay: &TestRelay, messages: Vec<Message>) -> Close {
    let mut ws = TestClient::connect_ws(&relay.url(), relay.tls())
        .await
        .unwrap();
    for message in messages {
        ws.send(message).await.unwrap();
    }
    read_close(&mut ws).await
}

/// Reads a raw WebSocket until the relay's close frame (or the end of the stream).
async fn read_close(ws: &mut Ws) -> Close {
    let mut closing = None;
    loop {
        let next = tokio::time::timeout(DEFAULT_TIMEOUT, ws.next())
            .await
            .expect("the relay closes the connection");
        match next {
            Some(Ok(Message::Binary(bytes))) => {
                if let ServerFrame::Closing { code } = cove_wire::decode(&bytes).unwrap() {
                    closing = Some(code);
                }
            }
            Some(Ok(Message::Close(frame))) => return (closing, frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (closing, None),
        }
    }
}

/// Parses the server-to-client WebSocket frames (unmasked) in `bytes` as read from a raw TLS
/// stream; returns how the relay closed the connection.
fn close_in_raw_frames(mut bytes: &[u8]) -> Close {
    let mut closing = None;
    while let Some((opcode, payload, used)) = raw_frame(bytes) {
        match opcode {
            0x2 => {
                if let ServerFrame::Closing { code } = cove_wire::decode(payload).unwrap() {
                    closing = Some(code);
                }
            }
            0x8 => {
                let status = u16::from_be_bytes([payload[0], payload[1]]);
                return (closing, Some(CloseCode::from(status)));
            }
            _ => {}
        }
        bytes = &bytes[used..];
    }
    (closing, None)
}

/// The first whole unmasked WebSocket frame in `bytes`: opcode, payload, bytes used.
fn raw_frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let opcode = bytes.first()? & 0x0f;
    let second = *bytes.get(1)?;
    assert_eq!(second & 0x80, 0, "server frames are not masked");
    let (len, header): (usize, usize) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => {
            let len = u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?);
            (usize::try_from(len).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = bytes.get(header..header.checked_add(len)?)?;
    Some((opcode, payload, header + len))
}

/// A WebSocket spoken by hand over a raw TLS stream, so that nothing is sent unless the test
/// sends it (a WebSocket library answers pings by itself).
struct RawWs {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    read: Vec<u8>,
}

impl RawWs {
    async fn open(relay: &TestRelay) -> RawWs {
        let mut tls = cove_test_utils::connect_tls(relay.addr(), relay.tls())
            .await
            .unwrap();
        cove_test_utils::raw_upgrade(&mut tls, relay.addr())
            .await
            .unwrap();
        RawWs {
            tls,
            read: Vec::new(),
        }
    }

    /// Sends one binary message (masked, as a client must).
    async fn send(&mut self, payload: &[u8]) {
        let mask = [0x5a, 0xa5, 0x3c, 0xc3];
        let mut frame = vec![0x82];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tls.write_all(&frame).await.unwrap();
    }

    /// The next binary message, decoded (other frames are skipped, pings unanswered).
    async fn next_server_frame(&mut self) -> ServerFrame {
        loop {
            if let Some((opcode, payload, used)) = raw_frame(&self.read) {
                let frame = (opcode == 0x2).then(|| cove_wire::decode(payload).unwrap());
                self.read.drain(..used);
                match frame {
                    Some(frame) => return frame,
                    None => continue,
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(DEFAULT_TIMEOUT, self.tls.read(&mut buf))
                .await
                .expect("a frame arrives")
                .unwrap();
            assert!(n > 0, "the relay closed the connection");
            self.read.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads to the end of the connection; returns how the relay closed it.
    async fn read_close(mut self) -> Close {
        // The relay closes without a TLS close_notify, which the reader reports as an error
        // after everything before it was read.
        let read = tokio::time::timeout(DEFAULT_TIMEOUT, self.tls.read_to_end(&mut self.read));
        assert!(read.await.is_ok(), "the relay must close the connection");
        close_in_raw_frames(&self.read)
    }
}

#[tokio::test]
async fn garbage_bytes_instead_of_tls_get_a_decode_error_alert_and_a_close() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let mut tcp = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    tcp.write_all(b"\x16\x03\x01\xff\xffthis is not a TLS client hello at all")
        .await
        .unwrap();
    // The relay answers with one TLS record, a fatal `decode_error` alert, then closes.
    let mut response = Vec::new();
    let read = tokio::time::timeout(DEFAULT_TIMEOUT, tcp.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the relay must close the connection");
    const ALERT: u8 = 0x15;
    const FATAL: u8 = 2;
    const DECODE_ERROR: u8 = 50;
    assert_eq!(response, [ALERT, 3, 3, 0, 2, FATAL, DECODE_ERROR]);
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn garbage_over_tls_gets_a_bad_request() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let mut tls = cove_test_utils::connect_tls(relay.addr(), relay.tls())
        .await
        .unwrap();
    tls.write_all(b"\x00\x01\x02 garbage garbage\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    assert!(
        response.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn garbage_websocket_message_closes_with_malformed() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let malformed = (Some(ErrorCode::Malformed), Some(CloseCode::Protocol));
    let junk = Bytes::from_static(b"\xff\xfe\xfd garbage that is no frame");
    assert_eq!(
        close_after(&relay, vec![Message::Binary(junk)]).await,
        malformed
    );
    let text = Message::Text("hello".into());
    assert_eq!(close_after(&relay, vec![text]).await, malformed);
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn an_unknown_frame_type_closes_with_malformed() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let malformed = (Some(ErrorCode::Malformed), Some(CloseCode::Protocol));
    // ClientFrame has one variant (tag 0); tag 9 is from a future version.
    let unknown_frame = Bytes::from_static(&[9, 1, 0]);
    let close = close_after(&relay, vec![Message::Binary(unknown_frame)]).await;
    assert_eq!(close, malformed);
    // A request variant (tag 200) that does not exist.
    let unknown_request = Bytes::from_static(&[0, 1, 0xc8, 0x01]);
    let close = close_after(&relay, vec![Message::Binary(unknown_request)]).await;
    assert_eq!(close, malformed);
    // Trailing bytes after a valid frame.
    let mut frame = cove_wire::encode(&ClientFrame::Request {
        id: RequestId(1),
        body: Request::Ping,
    })
    .unwrap();
    frame.push(0);
    let close = close_after(&relay, vec![Message::Binary(frame.into())]).await;
    assert_eq!(close, malformed);
    still_serving(&relay, &mut other).await;
}

/// A message one byte over the limit, sent as two frames that are each within it (so the
/// relay reads every byte sent before it refuses, and its close is not cut short by a reset).
#[tokio::test]
async fn an_oversized_websocket_message_closes_with_too_large() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let max = cove_wire::limits::MAX_FRAME_BYTES;
    let first = Frame::message(vec![0u8; max], OpCode::Data(Data::Binary), false);
    let last = Frame::message(vec![0u8; 1], OpCode::Data(Data::Continue), true);
    let close = close_after(&relay, vec![Message::Frame(first), Message::Frame(last)]).await;
    assert_eq!(close, (Some(ErrorCode::TooLarge), Some(CloseCode::Size)));
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn a_huge_declared_length_inside_a_frame_is_malformed() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    // A valid post with an empty payload, whose payload length (the last byte, 0) is then
    // replaced by a varint claiming 2^63 bytes.
    let mut frame = cove_wire::encode(&ClientFrame::Request {
        id: RequestId(1),
        body: Request::Post {
            group: cove_wire::GroupId([0x11; 16]),
            epoch: cove_wire::Epoch(0),
            kind: cove_wire::PostKind::Application,
            payload: cove_wire::Payload::default(),
        },
    })
    .unwrap();
    assert_eq!(frame.pop(), Some(0));
    frame.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    frame.extend_from_slice(b"short");
    let close = close_after(&relay, vec![Message::Binary(frame.into())]).await;
    assert_eq!(
        close,
        (Some(ErrorCode::Malformed), Some(CloseCode::Protocol))
    );
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn a_huge_declared_websocket_frame_length_closes_with_too_large() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let mut ws = RawWs::open(&relay).await;
    // FIN + binary, masked, 64-bit length 2^62, mask key, then a few bytes.
    let mut header = vec![0x82u8, 0xff];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(b"not that long");
    ws.tls.write_all(&header).await.unwrap();
    assert_eq!(
        ws.read_close().await,
        (Some(ErrorCode::TooLarge), Some(CloseCode::Size))
    );
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn http_routes() {
    let relay = relay().await;
    for (path, status) in [("/", "200"), ("/nope", "404"), ("/v1/ws", "426")] {
        let mut tls = cove_test_utils::connect_tls(relay.addr(), relay.tls())
            .await
            .unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        let head = String::from_utf8_lossy(&response);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {head}"
        );
    }
}

#[tokio::test]
async fn a_raw_websocket_can_send_requests_before_auth_and_is_told_so() {
    let relay = relay().await;
    let mut ws = TestClient::connect_ws(&relay.url(), relay.tls())
        .await
        .unwrap();
    let frame = cove_wire::encode(&ClientFrame::Request {
        id: RequestId(5),
        body: Request::Fetch {
            group: cove_wire::GroupId([1; 16]),
            after: cove_wire::Seq(0),
            limit: 10,
        },
    })
    .unwrap();
    ws.send(Message::Binary(frame.into())).await.unwrap();
    use futures_util::StreamExt;
    let mut saw = None;
    while let Some(Ok(msg)) = ws.next().await {
        let frame: cove_wire::ServerFrame = cove_wire::decode(&msg.into_data()).unwrap();
        if let cove_wire::ServerFrame::Response { id, result } = frame {
            saw = Some((id, result));
            break;
        }
    }
    let (id, result) = saw.unwrap();
    assert_eq!(id, RequestId(5));
    assert_eq!(result.unwrap_err().code, ErrorCode::Unauthenticated);
}

/// The authentication deadline closes a connection that never authenticates, with
/// `Closing { Unauthenticated }`. Alice's connection opened before the first idle one, so its
/// own deadline had passed when that one was closed; a second idle connection, opened only
/// then, is closed a whole deadline later, and only after that is Alice's connection checked:
/// still online and answering.
#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_and_an_authenticated_one_is_not() {
    let limits = cove_server::Limits {
        handshake_timeout_ms: 500,
        ..cove_test_utils::test_limits()
    };
    let relay = TestRelay::start(cove_server::StoreKind::Memory, limits).await;
    let mut alice_keys = DeviceKeys::generate("alice");
    let mut alice = relay.connect().await.unwrap();
    let mut idle = relay.connect().await.unwrap();
    alice.register(&mut alice_keys).await.unwrap();
    alice.backlog().await.unwrap();

    let (_, closing) = idle.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::Unauthenticated));
    let mut later = TestClient::connect_ws(&relay.url(), relay.tls())
        .await
        .unwrap();
    assert_eq!(
        read_close(&mut later).await,
        (Some(ErrorCode::Unauthenticated), Some(CloseCode::Policy))
    );

    assert!(relay.handle().is_online(alice_keys.id()));
    assert_eq!(alice.call(Request::Ping).await.unwrap(), Reply::Pong);
    assert_eq!(alice.closing(), None);
}

/// An authenticated device that stops reading (so it answers no ping) and sends nothing is
/// closed with `Closing { IdleTimeout }` and WebSocket status 1001. The WebSocket is spoken by
/// hand, so the device sends nothing after authenticating, not even a pong; the test waits
/// for the relay to drop the device, then reads what it was sent.
#[tokio::test]
async fn a_silent_connection_is_closed_as_idle() {
    let limits = cove_server::Limits {
        ping_interval_ms: 100,
        pong_timeout_ms: 100,
        ..cove_test_utils::test_limits()
    };
    let relay = TestRelay::start(cove_server::StoreKind::Memory, limits).await;
    let mut silent = RawWs::open(&relay).await;
    let ServerFrame::Challenge { nonce, .. } = silent.next_server_frame().await else {
        panic!("the challenge comes first")
    };
    let keys = DeviceKeys::generate("silent");
    let register = ClientFrame::Request {
        id: RequestId(1),
        body: Request::Register {
            user: keys.user.clone(),
            key: keys.public_key(),
            signature: keys.sign_challenge(
                &nonce,
                &cove_test_utils::tls_channel_binding(silent.tls.get_ref().1).unwrap(),
            ),
        },
    };
    silent.send(&cove_wire::encode(&register).unwrap()).await;
    let device = loop {
        if let ServerFrame::Response { id, result } = silent.next_server_frame().await {
            assert_eq!(id, RequestId(1));
            match result {
                Ok(Reply::Authenticated { device }) => break device,
                other => panic!("{other:?}"),
            }
        }
    };
    wait_until(|| !relay.handle().is_online(device)).await;
    assert_eq!(
        silent.read_close().await,
        (Some(ErrorCode::IdleTimeout), Some(CloseCode::Away))
    );
}
