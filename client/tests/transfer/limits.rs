//! Ownership, quota and expiry of blobs, against the real relay.

use std::sync::Arc;

use cove_server::blob::{BlobConfig, BlobStore, FsBlobStore};
use cove_test_utils::{DeviceKeys, TestClient};
use cove_wire::{BlobId, UserName};
use http::Method;

use super::raw::{self, Conn, now_ms};
use super::{Env, blob_file_bytes, blob_rows, random_bytes};

const NOT_YOURS: &str = "this blob belongs to another user";

impl Env {
    /// Registers another user's device on the relay.
    pub async fn register(&self, user: &str) -> DeviceKeys {
        let mut keys = DeviceKeys::generate(user);
        let mut ws = TestClient::connect(&self.url(), Arc::clone(&self.tls))
            .await
            .unwrap();
        ws.register(&mut keys).await.unwrap();
        keys
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_head_patch_and_delete_get_403() {
    let env = Env::start(BlobConfig::default()).await;
    let bob = env.register("bob").await;
    // Alice: an upload in progress (5 of 20 bytes) and a complete blob.
    let partial = env.create_raw(20).await;
    let r = env
        .send(raw::append(&env.keys, &partial, now_ms(), 0), vec![1; 5])
        .await;
    assert_eq!((r.status, r.offset()), (204, Some(5)), "{r:?}");
    let content = random_bytes(100_000, 5);
    let done = env
        .client
        .upload_file(&env.file("done.bin", &content))
        .await
        .unwrap();
    let done_hex = done.blob_id.to_hex();
    let rows = blob_rows(&env);

    let ts = now_ms();
    for (i, id) in [&partial, &done_hex].into_iter().enumerate() {
        let path = format!("/v1/blobs/{id}");
        let ts = ts + 10 * i as u64;
        let head = env
            .send(raw::signed(&bob, Method::HEAD, &path, ts, 0), vec![])
            .await;
        assert_eq!((head.status, head.offset()), (403, None), "{head:?}");
        let offset = if i == 0 { 5 } else { done.ciphertext_len() };
        env.send(raw::append(&bob, id, ts + 1, offset), vec![2; 5])
            .await
            .assert(403, NOT_YOURS);
        env.send(raw::signed(&bob, Method::DELETE, &path, ts + 2, 0), vec![])
            .await
            .assert(403, NOT_YOURS);
    }
    // Versus a blob that does not exist: 404, so the 403s above are about the owner.
    let unknown = BlobId([9; 16]).to_hex();
    env.send(
        raw::signed(
            &bob,
            Method::DELETE,
            &format!("/v1/blobs/{unknown}"),
            ts + 100,
            0,
        ),
        vec![],
    )
    .await
    .assert(404, "no such blob");

    // Alice's blobs are untouched: rows, bytes, her offset, her download.
    assert_eq!(blob_rows(&env), rows);
    let partial_id = BlobId::from_hex(&partial).unwrap();
    assert_eq!(
        std::fs::read(env.blob_path(&partial_id)).unwrap(),
        vec![1; 5]
    );
    let head = env
        .send(
            raw::signed(
                &env.keys,
                Method::HEAD,
                &format!("/v1/blobs/{partial}"),
                now_ms(),
                0,
            ),
            vec![],
        )
        .await;
    assert_eq!((head.status, head.offset()), (200, Some(5)), "{head:?}");
    let out = env.out_dir().join("done.bin");
    env.client.download(&done, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == content);
}

const QUOTA: u64 = 1 << 20;
const LEN: u64 = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_started_together_cannot_exceed_the_quota() {
    let env = Env::start(BlobConfig {
        quota_bytes_per_user: QUOTA,
        ..BlobConfig::default()
    })
    .await;
    // Eight creations of 300 000 bytes against a 1 MiB quota, all connected first and then
    // sent at once; three fit.
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(Conn::open(env.addr(), &env.tls).await);
    }
    let ts = now_ms();
    let replies = futures_util::future::join_all(
        conns
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.send(raw::create(&env.keys, ts + i as u64, LEN), vec![])),
    )
    .await;
    let (created, refused): (Vec<_>, Vec<_>) = replies.into_iter().partition(|r| r.status == 201);
    assert_eq!(created.len(), 3, "{created:?}");
    for r in &refused {
        r.assert(
            507,
            &format!(
                "quota exceeded: {} bytes in use of {QUOTA}, this upload needs {LEN}",
                3 * LEN
            ),
        );
    }
    // All three filled at once.
    let mut conns = Vec::new();
    for _ in &created {
        conns.push(Conn::open(env.addr(), &env.tls).await);
    }
    let ts = now_ms();
    let appended =
        futures_util::future::join_all(created.iter().zip(conns).enumerate().map(|(i, (r, c))| {
            c.send(
                raw::append(&env.keys, r.body.trim(), ts + i as u64, 0),
                vec![3; LEN as usize],
            )
        }))
        .await;
    for r in &appended {
        assert_eq!((r.status, r.offset()), (204, Some(LEN)), "{r:?}");
    }
    // What the relay holds, by its records and on disk, is within the quota.
    assert_eq!(blob_rows(&env), (3, 3 * LEN, 3 * LEN));
    assert_eq!(blob_file_bytes(&env), 3 * LEN);
    // The room left is exactly quota minus what is held.
    let room = QUOTA - 3 * LEN;
    let r = env
        .send(raw::create(&env.keys, now_ms(), room + 1), vec![])
        .await;
    r.assert(
        507,
        &format!(
            "quota exceeded: {} bytes in use of {QUOTA}, this upload needs {}",
            3 * LEN,
            room + 1
        ),
    );
    env.create_raw(room).await;
    assert_eq!(blob_rows(&env).1, QUOTA);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_uploads_started_together_cannot_exceed_the_quota() {
    let env = Env::start(BlobConfig {
        quota_bytes_per_user: QUOTA,
        ..BlobConfig::default()
    })
    .await;
    // The same file (a 16-byte header and one 16-byte tag: 300 000 bytes of ciphertext)
    // uploaded six times at once by the real client: identical creation requests but for
    // the timestamp, which the client never repeats (the relay refuses a reused signature).
    let path = env.file("same.bin", &random_bytes(LEN as usize - 32, 6));
    let results =
        futures_util::future::join_all((0..6).map(|_| env.client.upload_file(&path))).await;
    let mut ok = 0;
    for r in results {
        match r {
            Ok(p) => {
                assert_eq!(p.ciphertext_len(), LEN);
                ok += 1;
            }
            Err(cove::transfer::TransferError::Refused { status, message }) => assert_eq!(
                (status, message),
                (
                    507,
                    format!(
                        "quota exceeded: {} bytes in use of {QUOTA}, this upload needs {LEN}",
                        3 * LEN
                    )
                )
            ),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(blob_rows(&env), (3, 3 * LEN, 3 * LEN));
    assert_eq!(blob_file_bytes(&env), 3 * LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_is_swept_once_its_incomplete_retention_passed() {
    let hour = std::time::Duration::from_secs(3600);
    let env = Env::start(BlobConfig {
        incomplete_retention: hour,
        ..BlobConfig::default()
    })
    .await;
    // Abandoned after 1 MiB of 3 MiB.
    let id = env.create_raw(3 << 20).await;
    let r = env
        .send(raw::append(&env.keys, &id, now_ms(), 0), vec![4; 1 << 20])
        .await;
    assert_eq!((r.status, r.offset()), (204, Some(1 << 20)), "{r:?}");
    // And a complete blob from the same time.
    let content = random_bytes(50_000, 9);
    let done = env
        .client
        .upload_file(&env.file("keep.bin", &content))
        .await
        .unwrap();

    // The relay's own store files, swept with an injected clock.
    let store = FsBlobStore::open(&env.data.path().join("blobs")).unwrap();
    let blob = BlobId::from_hex(&id).unwrap();
    let meta = store.meta(&blob).unwrap().unwrap();
    assert_eq!(meta.expires_ms - meta.created_ms, 3_600_000);
    assert_eq!(store.sweep(meta.expires_ms - 1).unwrap(), 0);
    assert!(env.blob_path(&blob).exists());
    let head = |ts| raw::signed(&env.keys, Method::HEAD, &format!("/v1/blobs/{id}"), ts, 0);
    let r = env.send(head(now_ms()), vec![]).await;
    assert_eq!((r.status, r.offset()), (200, Some(1 << 20)), "{r:?}");

    assert_eq!(store.sweep(meta.expires_ms).unwrap(), 1);
    assert!(!env.blob_path(&blob).exists(), "swept upload still on disk");
    // The relay answers for it as gone; its quota is free again.
    let r = env.send(head(now_ms()), vec![]).await;
    assert_eq!((r.status, r.offset()), (404, None), "{r:?}");
    env.send(raw::append(&env.keys, &id, now_ms(), 1 << 20), vec![4; 10])
        .await
        .assert(404, "no such blob");
    env.send(
        http::Request::builder().uri(format!("/v1/blobs/{id}")),
        vec![],
    )
    .await
    .assert(404, "no such blob (or its upload is not finished)");
    let alice = UserName::new("alice").unwrap();
    assert_eq!(store.usage(&alice).unwrap(), done.ciphertext_len());
    // The complete blob was not swept with it.
    let out = env.out_dir().join("keep.bin");
    env.client.download(&done, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == content);
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A PATCH of 20 bytes from offset 0 that stops after 10, its connection held open
/// (written by hand: hyper would not let a body stall).
async fn stalled_patch(env: &Env, path: &str, ts: u64) -> Tls {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::from(env.addr().ip());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(&env.tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let msg = cove_wire::sign::blob_request_message("PATCH", path, ts, 0);
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 20\r\nupload-offset: 0\r\n\
         cove-device: {}\r\ncove-timestamp: {ts}\r\ncove-signature: {}\r\n\r\n",
        env.addr(),
        env.keys.id().0,
        hex::encode(env.keys.sign_raw(&msg).0)
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&[5; 10]).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

/// Reads one response (head and `Content-Length` body); returns the head lowercased and
/// the body.
async fn response(tls: &mut Tls) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while answer.len() < end + len {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&answer[end..]).into_owned();
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_with_an_append_running_is_not_deleted() {
    use tokio::io::AsyncWriteExt;

    let env = Env::start(BlobConfig::default()).await;
    let id = env.create_raw(20).await;
    let path = format!("/v1/blobs/{id}");
    // Two stalled appends: one holds the blob (and answers only when its body is complete),
    // the other is refused at once as busy. The first answer tells which is which.
    let ts = now_ms();
    let mut a = stalled_patch(&env, &path, ts).await;
    let mut b = stalled_patch(&env, &path, ts + 1).await;
    let ((head, body), mut holder) = tokio::select! {
        r = response(&mut a) => (r, b),
        r = response(&mut b) => (r, a),
    };
    assert!(head.starts_with("http/1.1 409"), "{head}");
    assert_eq!(body, "another upload to this blob is in progress\n");

    // While it runs, its blob is not deleted.
    let delete = || raw::signed(&env.keys, Method::DELETE, &path, now_ms(), 0);
    env.send(delete(), vec![])
        .await
        .assert(409, "an upload to this blob is in progress");
    assert!(env.blob_path(&BlobId::from_hex(&id).unwrap()).exists());
    assert_eq!(blob_rows(&env), (1, 20, 0));

    // The append finishes; the blob is complete and can be deleted now.
    holder.write_all(&[5; 10]).await.unwrap();
    holder.flush().await.unwrap();
    let (done, body) = response(&mut holder).await;
    assert!(done.starts_with("http/1.1 204"), "{done}");
    assert!(done.contains("upload-offset: 20\r\n"), "{done}");
    assert_eq!(body, "");
    assert_eq!(blob_rows(&env), (1, 20, 20));
    assert_eq!(
        std::fs::read(env.blob_path(&BlobId::from_hex(&id).unwrap())).unwrap(),
        vec![5; 20]
    );
    assert_eq!(env.send(delete(), vec![]).await.status, 204);
    assert_eq!(blob_rows(&env), (0, 0, 0));
}
