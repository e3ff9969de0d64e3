//! Hostile input: each case gets a clear error or a close, and the relay keeps serving a
//! connection that was open throughout, and new ones.

use bytes::Bytes;
use cove_test_utils::{TestClient, TestRelay};
use cove_wire::{ClientFrame, ErrorCode, Reply, Request, RequestId};
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::relay;

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

/// Sends `message` on a fresh connection; returns the `Closing` code after the relay closed.
async fn close_code_after(relay: &TestRelay, message: Message) -> Option<ErrorCode> {
    let mut client = relay.connect().await.unwrap();
    client.send_message(message).await.unwrap();
    let (_, closing) = client.read_until_closed().await;
    closing
}

#[tokio::test]
async fn garbage_bytes_instead_of_tls_are_dropped() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let mut tcp = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    tcp.write_all(b"\x16\x03\x01\xff\xffthis is not a TLS client hello at all")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    // The relay answers with a TLS alert at most, then closes.
    let mut total = 0;
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(total < 1024, "the relay must not keep talking to garbage");
    }
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
    let junk = Bytes::from_static(b"\xff\xfe\xfd garbage that is no frame");
    assert_eq!(
        close_code_after(&relay, Message::Binary(junk)).await,
        Some(ErrorCode::Malformed)
    );
    let text = Message::Text("hello".into());
    assert_eq!(
        close_code_after(&relay, text).await,
        Some(ErrorCode::Malformed)
    );
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn an_unknown_frame_type_closes_with_malformed() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    // ClientFrame has one variant (tag 0); tag 9 is from a future version.
    let unknown_frame = Bytes::from_static(&[9, 1, 0]);
    let code = close_code_after(&relay, Message::Binary(unknown_frame)).await;
    assert_eq!(code, Some(ErrorCode::Malformed));
    // A request variant (tag 200) that does not exist.
    let unknown_request = Bytes::from_static(&[0, 1, 0xc8, 0x01]);
    let code = close_code_after(&relay, Message::Binary(unknown_request)).await;
    assert_eq!(code, Some(ErrorCode::Malformed));
    // Trailing bytes after a valid frame.
    let mut frame = cove_wire::encode(&ClientFrame::Request {
        id: RequestId(1),
        body: Request::Ping,
    })
    .unwrap();
    frame.push(0);
    let code = close_code_after(&relay, Message::Binary(frame.into())).await;
    assert_eq!(code, Some(ErrorCode::Malformed));
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_with_too_large() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let big = vec![0u8; cove_wire::limits::MAX_FRAME_BYTES + 1];
    let mut client = relay.connect().await.unwrap();
    // The relay may close before the client finished writing; either way it must close.
    let _ = client.send_message(Message::Binary(big.into())).await;
    let (_, closing) = client.read_until_closed().await;
    assert!(
        matches!(closing, None | Some(ErrorCode::TooLarge)),
        "{closing:?}"
    );
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
    let code = close_code_after(&relay, Message::Binary(frame.into())).await;
    assert_eq!(code, Some(ErrorCode::Malformed));
    still_serving(&relay, &mut other).await;
}

#[tokio::test]
async fn a_huge_declared_websocket_frame_length_closes_the_connection() {
    let relay = relay().await;
    let mut other = bystander(&relay).await;
    let mut tls = cove_test_utils::connect_tls(relay.addr(), relay.tls())
        .await
        .unwrap();
    cove_test_utils::raw_upgrade(&mut tls, relay.addr())
        .await
        .unwrap();
    // FIN + binary, masked, 64-bit length 2^62, mask key, then a few bytes.
    let mut header = vec![0x82u8, 0xff];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(b"not that long");
    tls.write_all(&header).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tls.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "the relay must close the connection");
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

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed() {
    let limits = cove_server::Limits {
        handshake_timeout_ms: 1500,
        ..cove_test_utils::test_limits()
    };
    let relay = TestRelay::start(cove_server::StoreKind::Memory, limits).await;
    let mut idle = relay.connect().await.unwrap();
    let (_, closing) = idle.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::Unauthenticated));
    // An authenticated connection is not subject to it.
    let (mut alice, _) = relay.register("alice").await.unwrap();
    assert_eq!(alice.call(Request::Ping).await.unwrap(), Reply::Pong);
}

#[tokio::test]
async fn a_silent_connection_is_closed_as_idle() {
    let limits = cove_server::Limits {
        ping_interval_ms: 100,
        pong_timeout_ms: 100,
        ..cove_test_utils::test_limits()
    };
    let relay = TestRelay::start(cove_server::StoreKind::Memory, limits).await;
    // Authenticated, then it neither reads (so it never answers pings) nor sends.
    let (mut silent, _) = relay.register("silent").await.unwrap();
    // Well past two idle periods (the most the relay waits) before reading anything.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, closing) = silent.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::IdleTimeout));
}
