//! Signed blob requests refused by the real relay: each request below goes over TLS to the
//! running relay, and the test asserts the status and message the relay sent back.

use std::net::SocketAddr;
use std::sync::Arc;

use cove::transfer::{BlobClient, TransferError};
use cove_server::blob::BlobConfig;
use cove_test_utils::DeviceKeys;
use http::{Method, Request};

use super::raw::{self, Reply, now_ms};
use super::{Env, blob_rows};

const MISSING: &str = "missing or malformed Cove-Device / Cove-Timestamp / Cove-Signature headers";
const BAD_SIGNATURE: &str = "invalid request signature";
const SKEWED: &str = "request timestamp more than 5 minutes off the relay's clock";
const REPLAYED: &str = "replayed request signature (sign every request afresh)";
const MINUTE: u64 = 60_000;

impl Env {
    pub fn addr(&self) -> SocketAddr {
        self.relay.as_ref().unwrap().local_addr()
    }

    pub async fn send(&self, req: http::request::Builder, body: Vec<u8>) -> Reply {
        raw::send(self.addr(), &self.tls, req, body).await
    }

    /// A blob of `length` bytes created by alice over raw HTTPS; its id.
    pub async fn create_raw(&self, length: u64) -> String {
        let r = self
            .send(raw::create(&self.keys, now_ms(), length), vec![])
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body.trim().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_malformed_requests_get_401_from_the_relay() {
    let env = Env::start(BlobConfig::default()).await;
    let id = env.create_raw(10).await;
    let blob = format!("/v1/blobs/{id}");
    let device = env.keys.id().0;

    // No signature headers at all, on every signed endpoint.
    let unsigned = |method: Method, path: &str| Request::builder().method(method).uri(path);
    env.send(
        unsigned(Method::POST, "/v1/blobs").header("upload-length", 10),
        vec![],
    )
    .await
    .assert(401, MISSING);
    env.send(
        unsigned(Method::PATCH, &blob).header("upload-offset", 0),
        vec![0; 10],
    )
    .await
    .assert(401, MISSING);
    env.send(unsigned(Method::DELETE, &blob), vec![])
        .await
        .assert(401, MISSING);
    // A HEAD answer has no body: the status is all there is.
    let head = env.send(unsigned(Method::HEAD, &blob), vec![]).await;
    assert_eq!(head.status, 401, "{head:?}");
    assert_eq!(head.offset(), None);

    // Present but malformed: a signature that is not hex, one byte short, a device id that
    // is not a number, no timestamp.
    let ts = now_ms();
    let good_sig = hex::encode([0u8; 64]);
    for (dev, ts, sig) in [
        (device.to_string(), ts.to_string(), "zz".repeat(64)),
        (device.to_string(), ts.to_string(), hex::encode([0u8; 63])),
        ("alice".to_owned(), ts.to_string(), good_sig.clone()),
        (device.to_string(), String::new(), good_sig.clone()),
    ] {
        let req = unsigned(Method::POST, "/v1/blobs")
            .header("upload-length", 10)
            .header("cove-device", dev)
            .header("cove-timestamp", ts)
            .header("cove-signature", sig);
        env.send(req, vec![]).await.assert(401, MISSING);
    }

    // Well formed, but for a device the relay does not know.
    let stranger = DeviceKeys::generate("stranger");
    let req = raw::signed_as(
        cove_wire::DeviceId(device + 1000),
        &stranger,
        Method::POST,
        "/v1/blobs",
        now_ms(),
        10,
    )
    .header("upload-length", 10);
    env.send(req, vec![]).await.assert(401, "unknown device");

    // Nothing was created or stored by any of them.
    assert_eq!(blob_rows(&env), (1, 10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_signed_requests_get_401_from_the_relay() {
    let env = Env::start(BlobConfig::default()).await;
    // The real client, claiming alice's device id but signing with another key.
    let path = env.file("x.bin", b"x");
    let mallory = Arc::new(DeviceKeys::generate("mallory"));
    let m = Arc::clone(&mallory);
    let sign: cove::transfer::SignFn = Arc::new(move |msg: &[u8]| m.sign_raw(msg).0);
    let forged = BlobClient::new(&env.url(), Arc::clone(&env.tls))
        .unwrap()
        .with_signer(env.keys.id(), sign);
    match forged.upload_file(&path).await.unwrap_err() {
        TransferError::Refused { status, message } => {
            assert_eq!((status, message.as_str()), (401, BAD_SIGNATURE))
        }
        e => panic!("expected a 401 from the relay, got {e}"),
    }

    let id = env.create_raw(10).await;
    let blob = format!("/v1/blobs/{id}");
    let keys = &env.keys;
    let ts = now_ms();
    // Alice's own key, but the signature covers something else than the request.
    let cases = [
        // Signed for 5 bytes, asks for 10.
        raw::signed(keys, Method::POST, "/v1/blobs", ts, 5).header("upload-length", 10),
        // Signed for another path, sent to /v1/blobs.
        raw::signed(keys, Method::POST, "/v1/blobz", ts + 1, 10)
            .uri("/v1/blobs")
            .header("upload-length", 10),
        // A HEAD signature on a DELETE.
        raw::signed(keys, Method::HEAD, &blob, ts + 2, 0).method(Method::DELETE),
        // Signed at one time, sent with another (a captured request given a new life).
        Request::builder()
            .method(Method::POST)
            .uri("/v1/blobs")
            .header("upload-length", 10)
            .header("cove-device", keys.id().0)
            .header("cove-timestamp", ts + 4)
            .header(
                "cove-signature",
                hex::encode(
                    keys.sign_raw(&cove_wire::sign::blob_request_message(
                        "POST",
                        "/v1/blobs",
                        ts + 3,
                        10,
                    ))
                    .0,
                ),
            ),
        // Signed for offset 4, sent with offset 0.
        raw::signed(keys, Method::PATCH, &blob, ts + 5, 4).header("upload-offset", 0),
    ];
    for req in cases {
        env.send(req, vec![1; 10]).await.assert(401, BAD_SIGNATURE);
    }
    // Alice's blob is as it was: one blob, nothing stored.
    assert_eq!(blob_rows(&env), (1, 10, 0));
    let head = env
        .send(raw::signed(keys, Method::HEAD, &blob, now_ms(), 0), vec![])
        .await;
    assert_eq!((head.status, head.offset()), (200, Some(0)), "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_requests_get_401_from_the_relay() {
    let env = Env::start(BlobConfig::default()).await;
    let keys = &env.keys;
    let ts = now_ms();
    // Each request twice, byte for byte: the first is served, the copy refused.
    let create = || raw::create(keys, ts, 10);
    let first = env.send(create(), vec![]).await;
    assert_eq!(first.status, 201, "{first:?}");
    env.send(create(), vec![]).await.assert(401, REPLAYED);
    assert_eq!(blob_rows(&env), (1, 10, 0), "the replay created a blob");

    let id = first.body.trim().to_owned();
    let blob = format!("/v1/blobs/{id}");
    let head = || raw::signed(keys, Method::HEAD, &blob, ts + 1, 0);
    assert_eq!(env.send(head(), vec![]).await.status, 200);
    let again = env.send(head(), vec![]).await;
    assert_eq!((again.status, again.offset()), (401, None), "{again:?}");

    let patch = || raw::append(keys, &id, ts + 2, 0);
    let done = env.send(patch(), vec![7; 10]).await;
    assert_eq!((done.status, done.offset()), (204, Some(10)), "{done:?}");
    // Refused as a replay before the offset is even looked at.
    env.send(patch(), vec![7; 10]).await.assert(401, REPLAYED);

    let delete = || raw::signed(keys, Method::DELETE, &blob, ts + 3, 0);
    assert_eq!(env.send(delete(), vec![]).await.status, 204);
    env.send(delete(), vec![]).await.assert(401, REPLAYED);
    assert_eq!(blob_rows(&env), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_timestamps_get_401_from_the_relay() {
    let env = Env::start(BlobConfig::default()).await;
    let keys = &env.keys;
    // Six minutes off either way: refused, correctly signed as they are.
    for ts in [now_ms() - 6 * MINUTE, now_ms() + 6 * MINUTE] {
        env.send(raw::create(keys, ts, 10), vec![])
            .await
            .assert(401, SKEWED);
    }
    assert_eq!(blob_rows(&env), (0, 0, 0));
    // Four minutes off either way is inside the window.
    for ts in [now_ms() - 4 * MINUTE, now_ms() + 4 * MINUTE] {
        let r = env.send(raw::create(keys, ts, 10), vec![]).await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    assert_eq!(blob_rows(&env), (2, 20, 0));
}
