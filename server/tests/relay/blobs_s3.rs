//! Blobs in S3-compatible storage (`[blobs.s3]`, issue 15 item 3): two relays (two nodes)
//! on one PostgreSQL database and one real `s3s-fs`. An upload begun on one node resumes on
//! the other, downloads and ranged downloads and share pages work on either, the bucket
//! holds only ciphertext, and a relay with a wrong secret key does not start.

use std::net::SocketAddr;

use cove_core::attachment::{Encryptor, FileKey};
use cove_server::{BlobBackend, Relay, RelayConfig, S3Config, StartError, StoreKind};
use cove_test_utils::engines::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};
use cove_test_utils::postgres::PgCluster;
use cove_test_utils::{
    DeviceKeys, TestRelay, blob_signature_headers, connect_tls, read_response_head,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Appears many times in the plaintext; must appear nowhere in the bucket.
const MARKER: &[u8] = b"COVE-PLAINTEXT-MARKER-5f3e9a";

fn s3_config(server: &S3Server) -> S3Config {
    S3Config {
        endpoint: server.endpoint(),
        bucket: "cove-blobs".into(),
        region: "us-east-1".into(),
        access_key: S3_ACCESS_KEY.into(),
        secret_key: S3_SECRET_KEY.into(),
        prefix: "cluster-a".into(),
    }
}

async fn node(db_url: &str, s3: &S3Config) -> TestRelay {
    let (url, s3) = (db_url.to_string(), s3.clone());
    TestRelay::configured(move |config| {
        config.store = StoreKind::Postgres(url);
        config.blob_backend = BlobBackend::S3(s3);
    })
    .await
}

/// One HTTP/1.1 request on a fresh TLS connection: the response head (lower-cased) and body
/// (`Content-Length` bytes; none for `HEAD`).
async fn http(relay: &TestRelay, head: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut tls = connect_tls(relay.addr(), relay.tls()).await.unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    let head_back = read_response_head(&mut tls)
        .await
        .unwrap()
        .to_ascii_lowercase();
    let len: usize = header(&head_back, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; if head.starts_with("HEAD ") { 0 } else { len }];
    tls.read_exact(&mut body).await.unwrap();
    (head_back, body)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(": "))
            .map(str::trim)
    })
}

fn host(addr: SocketAddr) -> String {
    format!("host: {addr}\r\n")
}

async fn create(relay: &TestRelay, keys: &DeviceKeys, len: usize) -> String {
    let head = format!(
        "POST /v1/blobs HTTP/1.1\r\n{}upload-length: {len}\r\ncontent-length: 0\r\n{}\r\n",
        host(relay.addr()),
        blob_signature_headers(keys, "POST", "/v1/blobs", len as u64)
    );
    let (head, _) = http(relay, &head, &[]).await;
    assert!(head.starts_with("http/1.1 201"), "{head}");
    header(&head, "location").unwrap().to_owned()
}

async fn patch(
    relay: &TestRelay,
    keys: &DeviceKeys,
    path: &str,
    offset: usize,
    data: &[u8],
) -> String {
    let head = format!(
        "PATCH {path} HTTP/1.1\r\n{}upload-offset: {offset}\r\ncontent-length: {}\r\n{}\r\n",
        host(relay.addr()),
        data.len(),
        blob_signature_headers(keys, "PATCH", path, offset as u64)
    );
    http(relay, &head, data).await.0
}

async fn head_request(relay: &TestRelay, keys: &DeviceKeys, path: &str) -> String {
    let head = format!(
        "HEAD {path} HTTP/1.1\r\n{}{}\r\n",
        host(relay.addr()),
        blob_signature_headers(keys, "HEAD", path, 0)
    );
    http(relay, &head, &[]).await.0
}

async fn get(relay: &TestRelay, path: &str, range: Option<&str>) -> (String, Vec<u8>) {
    let range = range.map_or(String::new(), |r| format!("range: {r}\r\n"));
    let head = format!("GET {path} HTTP/1.1\r\n{}{range}\r\n", host(relay.addr()));
    http(relay, &head, &[]).await
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Alice (registered on node A) encrypts a 14 MiB file with the client's attachment
/// format; she uploads 6 MiB of the ciphertext (one 5 MiB part and a tail) through A, then
/// 5 MiB more through A in a request she cuts off before its announced end (A keeps what
/// arrived and answers 400 with the new offset; B sees it), then the rest through B, after B told her the stored offset (and refused an
/// append at 0 with 409 and that offset). Before completion neither node serves it or its share page; after,
/// A serves it whole and a range across the first part boundary byte-identical, and B
/// serves its share page. No file s3s-fs keeps contains the plaintext marker, and one
/// holds exactly the ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blob_uploaded_through_one_node_resumes_and_downloads_through_the_other() {
    let db = PgCluster::shared().database();
    let s3 = S3Server::start();
    let config = s3_config(&s3);
    let a = node(db.url(), &config).await;
    let b = node(db.url(), &config).await;
    let (alice, keys) = a.register("alice").await.unwrap();
    alice.close().await;

    let mut plaintext = Vec::with_capacity(14 << 20);
    let mut n = 0u32;
    while plaintext.len() < 14 << 20 {
        plaintext.extend_from_slice(MARKER);
        plaintext.extend_from_slice(&n.to_le_bytes());
        n += 1;
    }
    let mut rng = rand::rngs::OsRng;
    let key = FileKey::generate(&mut rng);
    let mut enc = Encryptor::new(&key, &mut rng, 1 << 20).unwrap();
    let mut ciphertext = Vec::new();
    enc.push(&plaintext, &mut ciphertext).unwrap();
    enc.finish(&mut ciphertext).unwrap();
    let len = ciphertext.len();

    let path = create(&a, &keys, len).await;
    let id = path.strip_prefix("/v1/blobs/").unwrap().to_owned();
    let first = 6 << 20;
    let head = patch(&a, &keys, &path, 0, &ciphertext[..first]).await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert_eq!(
        header(&head, "upload-offset"),
        Some(first.to_string().as_str())
    );

    // A request announcing the rest that ends after 5 MiB (the client goes).
    let cut = first + (5 << 20);
    let mut tls = connect_tls(a.addr(), a.tls()).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\n{}upload-offset: {first}\r\ncontent-length: {}\r\n{}\r\n",
        host(a.addr()),
        len - first,
        blob_signature_headers(&keys, "PATCH", &path, first as u64)
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&ciphertext[first..cut]).await.unwrap();
    tls.shutdown().await.unwrap();
    // A answers once it recorded what arrived: 400 with the stored offset. (Read until it
    // closes: closing first, with unread data such as TLS session tickets, would reset the
    // connection and lose bytes still in flight.)
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tls.read_to_end(&mut answer),
    )
    .await
    .expect("the relay answers the cut request")
    .unwrap();
    let answer = String::from_utf8(answer).unwrap().to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert_eq!(
        header(&answer, "upload-offset"),
        Some(cut.to_string().as_str())
    );
    let first = cut;

    // Node B knows how far it got.
    let head = head_request(&b, &keys, &path).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "upload-offset"),
        Some(first.to_string().as_str())
    );
    assert_eq!(
        header(&head, "upload-length"),
        Some(len.to_string().as_str())
    );
    let head = patch(&b, &keys, &path, 0, &ciphertext[..10]).await;
    assert!(head.starts_with("http/1.1 409"), "{head}");
    assert_eq!(
        header(&head, "upload-offset"),
        Some(first.to_string().as_str())
    );
    // Not complete: neither the blob nor its share page is served.
    assert!(get(&a, &path, None).await.0.starts_with("http/1.1 404"));
    assert!(
        get(&b, &format!("/s/{id}"), None)
            .await
            .0
            .starts_with("http/1.1 404")
    );

    let head = patch(&b, &keys, &path, first, &ciphertext[first..]).await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert_eq!(
        header(&head, "upload-offset"),
        Some(len.to_string().as_str())
    );

    let (head, body) = get(&a, &path, None).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body == ciphertext, "the download differs from the upload");
    let (start, end) = ((5 << 20) - 1000, (5 << 20) + 999);
    let (head, body) = get(&a, &path, Some(&format!("bytes={start}-{end}"))).await;
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes {start}-{end}/{len}").as_str())
    );
    assert!(body == ciphertext[start..=end], "the range differs");
    let (head, page) = get(&b, &format!("/s/{id}"), None).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(header(&head, "content-type").is_some_and(|t| t.starts_with("text/html")));
    assert!(!page.is_empty());

    let stored = files(s3.dir());
    assert!(!stored.is_empty());
    let mut holds_ciphertext = false;
    for file in &stored {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER),
            "plaintext in {}",
            file.display()
        );
        holds_ciphertext |= bytes == ciphertext;
    }
    assert!(holds_ciphertext, "no stored object is the blob: {stored:?}");

    a.shutdown().await;
    b.shutdown().await;
}

/// A relay whose `[blobs.s3]` secret key is wrong does not start: the error names the
/// endpoint and bucket and the 403, and not the key.
#[tokio::test]
async fn s3_relay_with_a_wrong_secret_key_does_not_start() {
    let s3 = S3Server::start();
    let mut s3_config = s3_config(&s3);
    s3_config.secret_key = "not-the-secret-key".into();
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    config.store = StoreKind::Memory;
    config.blob_backend = BlobBackend::S3(s3_config);
    let Err(err) = Relay::start(config).await else {
        panic!("the relay started with a wrong S3 secret key");
    };
    assert!(matches!(err, StartError::Blob(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&s3.endpoint()), "{message}");
    assert!(message.contains("\"cove-blobs\""), "{message}");
    assert!(message.contains("403 Forbidden"), "{message}");
    assert!(!message.contains("not-the-secret-key"), "{message}");
}
