//! Relay resources bounded at the connection and HTTP layer (issue 10, item 2): blob
//! transfers hold no thread of the shared blocking pool, HTTP bodies that make no progress
//! are cut off, one IP address holds a bounded number of connections, and registrations are
//! rate limited per IP address.

use cove_server::{Limits, StoreKind};
use cove_test_utils::{
    ClientError, DEFAULT_TIMEOUT, DeviceKeys, TestRelay, blob_signature_headers, connect_tls,
    connect_tls_small_window, read_response_head, test_limits,
};
use cove_wire::{Epoch, ErrorCode, Reply, Request, Seq};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wait_until;

/// Stalled downloads in the blocking-pool test: more than tokio's 512 blocking threads.
const STALLED_DOWNLOADS: usize = 600;
/// Size of the downloaded blob: far more than the socket buffers between the relay and a
/// client that reads nothing.
const BLOB_BYTES: usize = 8 << 20;

/// 600 TLS connections that each request a blob, read the response head and then never
/// read again do not stop another client from logging in, posting and fetching; once they
/// are dropped the relay serves none of them any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_blob_downloads_do_not_stop_a_login_post_and_fetch() {
    let limits = Limits {
        // The stalls must last the whole test (the idle timeout is tested below).
        http_body_idle_ms: 600_000,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Sqlite, limits).await;
    let (alice, alice_keys) = relay.register("alice").await.unwrap();
    alice.close().await;
    let (_bob, bob_keys) = relay.register("bob").await.unwrap();
    let id = upload(&relay, &bob_keys, &vec![7u8; BLOB_BYTES]).await;

    let mut stalled = Vec::with_capacity(STALLED_DOWNLOADS);
    for i in 0..STALLED_DOWNLOADS {
        let mut tls = connect_tls_small_window(relay.addr(), relay.tls())
            .await
            .unwrap();
        let get = format!(
            "GET /v1/blobs/{id} HTTP/1.1\r\nhost: {}\r\n\r\n",
            relay.addr()
        );
        tls.write_all(get.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let head = read_response_head(&mut tls)
            .await
            .unwrap_or_else(|e| panic!("stalled download {i}: no response head: {e}"));
        assert!(head.starts_with("HTTP/1.1 200"), "download {i}: {head}");
        stalled.push(tls);
    }

    // Each step waits for its answer up to the client's generous timeout.
    let mut alice = relay.login(&alice_keys).await.unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    let seq = alice
        .post_app(group, Epoch(0), b"still served")
        .await
        .unwrap();
    let fetched = alice
        .call(Request::Fetch {
            group,
            after: Seq(0),
            limit: 10,
        })
        .await
        .unwrap();
    let Reply::Entries { entries } = fetched else {
        panic!("expected Entries: {fetched:?}");
    };
    let payloads: Vec<_> = entries
        .0
        .iter()
        .map(|e| (e.seq, e.payload.as_bytes().to_vec()))
        .collect();
    assert_eq!(payloads, vec![(seq, b"still served".to_vec())]);
    // All the while, every stalled download was still open.
    assert!(relay.handle().connection_count() >= STALLED_DOWNLOADS);
    // When their clients go, the relay lets go of them too (only Alice and Bob stay).
    drop(stalled);
    wait_until(|| relay.handle().connection_count() == 2).await;
}

/// An upload whose body stops arriving is answered `408` with the bytes that did arrive
/// (`Upload-Offset`) once the body idle timeout passed, and its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_answered_408_and_closed_after_the_body_idle_timeout() {
    let limits = Limits {
        http_body_idle_ms: 300,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (_bob, bob_keys) = relay.register("bob").await.unwrap();
    let path = create(&relay, &bob_keys, 20).await;

    let mut tls = connect_tls(relay.addr(), relay.tls()).await.unwrap();
    let append = format!(
        "PATCH {path} HTTP/1.1\r\nhost: {}\r\nupload-offset: 0\r\ncontent-length: 20\r\n{}\r\n",
        relay.addr(),
        blob_signature_headers(&bob_keys, "PATCH", &path, 0)
    );
    tls.write_all(append.as_bytes()).await.unwrap();
    tls.write_all(&[5; 10]).await.unwrap();
    tls.flush().await.unwrap();
    // Nothing more is sent: the relay answers once the body was idle long enough.
    let head = read_response_head(&mut tls)
        .await
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("\r\nupload-offset: 10\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    // Then the connection ends (the answer has no body).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEFAULT_TIMEOUT, tls.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?} {rest:?}");
}

/// A download whose client reads the response head and then nothing more is cut off once
/// the body idle timeout passed: the relay closes the connection (its count of open
/// connections drops to zero while the client still holds its end), and the client gets
/// less than the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_is_closed_after_the_body_idle_timeout() {
    let limits = Limits {
        http_body_idle_ms: 300,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (bob, bob_keys) = relay.register("bob").await.unwrap();
    let id = upload(&relay, &bob_keys, &vec![7u8; BLOB_BYTES]).await;
    bob.close().await;

    let mut tls = connect_tls_small_window(relay.addr(), relay.tls())
        .await
        .unwrap();
    let get = format!(
        "GET /v1/blobs/{id} HTTP/1.1\r\nhost: {}\r\n\r\n",
        relay.addr()
    );
    tls.write_all(get.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let head = read_response_head(&mut tls).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The client holds its end and reads nothing until the relay served no connection.
    wait_until(|| relay.handle().connection_count() == 0).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(DEFAULT_TIMEOUT, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the cut-off download did not end"),
        }
    }
    assert!(received < BLOB_BYTES, "received the whole blob");
}

/// With `max_connections_per_ip = 2`, a WebSocket and an HTTP connection from 127.0.0.1 are
/// served and a third TCP connection is closed before TLS (it reads end-of-stream having
/// sent nothing, although the handshake timeout is ten minutes); the first two still work,
/// and once one of them is gone a new connection is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_per_ip_cap_is_closed_before_tls() {
    let limits = Limits {
        max_connections_per_ip: 2,
        handshake_timeout_ms: 600_000,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (mut alice, alice_keys) = relay.register("alice").await.unwrap();
    let mut http = connect_tls(relay.addr(), relay.tls()).await.unwrap();
    // HEAD: the answer has no body, so the next answer starts right after this one.
    let index = format!("HEAD / HTTP/1.1\r\nhost: {}\r\n\r\n", relay.addr());
    http.write_all(index.as_bytes()).await.unwrap();
    let head = read_response_head(&mut http).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let mut third = TcpStream::connect(relay.addr()).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(DEFAULT_TIMEOUT, third.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");

    // The two within the cap are untouched.
    alice
        .create_group(cove_test_utils::random_group_id())
        .await
        .unwrap();
    http.write_all(index.as_bytes()).await.unwrap();
    let head = read_response_head(&mut http).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // One goes; a new one is served.
    drop(http);
    wait_until(|| relay.handle().connection_count() == 1).await;
    let mut again = relay.login(&alice_keys).await.unwrap();
    again
        .create_group(cove_test_utils::random_group_id())
        .await
        .unwrap();
}

/// With a registration burst of 2 per address, two `Register`s from 127.0.0.1 succeed and
/// the third registration, a `RegisterDevice` and then a `Register`, are refused
/// `RateLimited` with a retry delay; logging in is not limited by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_per_ip_burst_are_rate_limited() {
    let limits = Limits {
        registrations_per_minute: 1,
        registration_burst: 2,
        ..test_limits()
    };
    let relay = TestRelay::start(StoreKind::Memory, limits).await;
    let (_alice, alice_keys) = relay.register("alice").await.unwrap();
    let (_bob, _) = relay.register("bob").await.unwrap();

    let mut laptop = DeviceKeys::generate("alice");
    let mut client = relay.connect().await.unwrap();
    let refused = client
        .register_device(&mut laptop, &alice_keys)
        .await
        .unwrap_err();
    assert_rate_limited(&refused);
    let mut carol = DeviceKeys::generate("carol");
    let refused = client.register(&mut carol).await.unwrap_err();
    assert_rate_limited(&refused);

    let mut alice = relay.login(&alice_keys).await.unwrap();
    alice
        .create_group(cove_test_utils::random_group_id())
        .await
        .unwrap();
}

#[track_caller]
fn assert_rate_limited(error: &ClientError) {
    let ClientError::Refused(reply) = error else {
        panic!("expected a refusal: {error:?}");
    };
    assert_eq!(reply.code, ErrorCode::RateLimited, "{reply:?}");
    assert!(reply.retry_after_ms.is_some_and(|ms| ms > 0), "{reply:?}");
}

/// Creates an empty blob of `len` bytes for `keys`' user; returns its path.
async fn create(relay: &TestRelay, keys: &DeviceKeys, len: usize) -> String {
    let mut tls = connect_tls(relay.addr(), relay.tls()).await.unwrap();
    let create = format!(
        "POST /v1/blobs HTTP/1.1\r\nhost: {}\r\nupload-length: {len}\r\ncontent-length: 0\r\n{}\r\n",
        relay.addr(),
        blob_signature_headers(keys, "POST", "/v1/blobs", len as u64)
    );
    tls.write_all(create.as_bytes()).await.unwrap();
    let head = read_response_head(&mut tls).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("location: ")
                .map(|p| p.trim().to_owned())
        })
        .unwrap()
}

/// Uploads `data` as a blob of `keys`' user (create, then one append); returns its id (hex).
pub(crate) async fn upload(relay: &TestRelay, keys: &DeviceKeys, data: &[u8]) -> String {
    let len = data.len();
    let path = create(relay, keys, len).await;
    let id = path.strip_prefix("/v1/blobs/").unwrap().to_owned();
    let mut tls = connect_tls(relay.addr(), relay.tls()).await.unwrap();
    let append = format!(
        "PATCH {path} HTTP/1.1\r\nhost: {}\r\nupload-offset: 0\r\ncontent-length: {len}\r\n{}\r\n",
        relay.addr(),
        blob_signature_headers(keys, "PATCH", &path, 0)
    );
    tls.write_all(append.as_bytes()).await.unwrap();
    tls.write_all(data).await.unwrap();
    tls.flush().await.unwrap();
    let head = read_response_head(&mut tls).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    id
}
