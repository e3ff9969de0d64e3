//! Attachments end to end: a real relay on 127.0.0.1:0 (TLS, SQLite, blob files), the
//! `cove::transfer` client, raw HTTPS requests for what that client never sends (bad
//! signatures, replays, another user's requests), a cutting TCP proxy for resumption, and
//! headless Chromium for the share page.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod browser;
mod drive;
mod drive_links;
mod limits;
mod proxy;
mod raw;
mod retention;
mod share_page;
mod signatures;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cove::transfer::{BlobClient, TransferError, fetch};
use cove_core::attachment::{AttachmentError, ShareLink};
use cove_server::blob::BlobConfig;
use cove_server::{Relay, RelayConfig, RelayHandle, StoreKind};
use cove_test_utils::{DeviceKeys, TestClient, client_tls_config, test_limits, ws_url};
use rand::{RngCore, SeedableRng};

pub struct Env {
    pub relay: Option<RelayHandle>,
    pub data: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub tls: Arc<rustls::ClientConfig>,
    pub client: BlobClient,
    pub keys: Arc<DeviceKeys>,
}

impl Env {
    pub async fn start(blob: BlobConfig) -> Env {
        let data = tempfile::tempdir().unwrap();
        let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), data.path());
        config.store = StoreKind::Sqlite;
        config.limits = test_limits();
        config.blob = blob;
        let relay = Relay::start(config).await.unwrap();
        let tls = client_tls_config(relay.cert_der()).unwrap();
        let url = ws_url(relay.local_addr());
        let mut keys = DeviceKeys::generate("alice");
        let mut ws = TestClient::connect(&url, Arc::clone(&tls)).await.unwrap();
        ws.register(&mut keys).await.unwrap();
        let keys = Arc::new(keys);
        let client = client_for(&url, &tls, &keys);
        Env {
            relay: Some(relay),
            data,
            work: tempfile::tempdir().unwrap(),
            tls,
            client,
            keys,
        }
    }

    pub fn url(&self) -> String {
        ws_url(self.relay.as_ref().unwrap().local_addr())
    }

    pub fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.work.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn out_dir(&self) -> PathBuf {
        let p = self.work.path().join("out");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn blob_path(&self, id: &cove_wire::BlobId) -> PathBuf {
        self.data.path().join("blobs").join(id.to_hex())
    }
}

pub fn client_for(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    keys: &Arc<DeviceKeys>,
) -> BlobClient {
    let k = Arc::clone(keys);
    let sign: cove::transfer::SignFn = Arc::new(move |m: &[u8]| k.sign_raw(m).0);
    BlobClient::new(url, Arc::clone(tls))
        .unwrap()
        .with_signer(keys.id(), sign)
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The relay's blob records: (count, sum of declared lengths, sum of stored bytes).
pub fn blob_rows(env: &Env) -> (u64, u64, u64) {
    let db = rusqlite::Connection::open(env.data.path().join("blobs/meta.sqlite")).unwrap();
    let (n, length, stored): (i64, i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(length), 0), COALESCE(SUM(stored), 0) FROM blobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    (n as u64, length as u64, stored as u64)
}

/// Total size of the blob files on the relay's disk (the metadata database excluded).
pub fn blob_file_bytes(env: &Env) -> u64 {
    std::fs::read_dir(env.data.path().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with("meta.sqlite"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn leftover_parts(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn upload_download(env: &Env, name: &str, content: &[u8]) {
    let path = env.file(name, content);
    let pointer = env.client.upload_file(&path).await.unwrap();
    assert_eq!(pointer.size, content.len() as u64);
    assert_eq!(pointer.name, name);
    // The relay holds exactly the ciphertext length.
    let stored = std::fs::metadata(env.blob_path(&pointer.blob_id))
        .unwrap()
        .len();
    assert_eq!(stored, pointer.ciphertext_len());
    let out = env.out_dir().join(format!("{name}.down"));
    let got = env.client.download(&pointer, &out).await.unwrap();
    assert_eq!(got, out);
    assert!(
        std::fs::read(&out).unwrap() == content,
        "{name}: download differs"
    );
    // And through a share link.
    let link = ShareLink::from_pointer(&env.client.origin(), &pointer).to_url();
    let fetched = env.out_dir().join(format!("{name}.fetched"));
    fetch(&link, Arc::clone(&env.tls), Some(&fetched), false)
        .await
        .unwrap();
    assert!(
        std::fs::read(&fetched).unwrap() == content,
        "{name}: fetch differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_at_every_edge() {
    let env = Env::start(BlobConfig::default()).await;
    let mib = 1 << 20;
    for (i, len) in [0, 1, mib, mib + 1].into_iter().enumerate() {
        upload_download(
            &env,
            &format!("file-{len}.bin"),
            &random_bytes(len, i as u64),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_large_file() {
    let env = Env::start(BlobConfig::default()).await;
    upload_download(&env, "large.bin", &random_bytes(64 << 20, 99)).await;
}

/// Waits (polling) until `cond` holds; the deadline only guards against a hang.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The proxy holds the transfer at 3 MiB; once the receiving side has 1 MiB on disk (its
/// writers flush in steps of up to 1 MiB), it cuts. Resumption must then send at most the
/// rest from 1 MiB (plus framing); a restart would send the whole 8 MiB again.
const CUT_AT: u64 = 3 << 20;
const ON_DISK_AT_CUT: u64 = 1 << 20;
/// HTTP headers and TLS records of the resumed request, far above what they take.
const FRAMING: u64 = 128 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_cut_midway_resumes_byte_identical() {
    let env = Env::start(BlobConfig::default()).await;
    let size = 8 << 20;
    let content = random_bytes(size, 7);
    let path = env.file("cut.bin", &content);
    let relay_addr = env.relay.as_ref().unwrap().local_addr();
    let proxy = proxy::Proxy::start(relay_addr, Some(CUT_AT), None).await;
    let via_proxy = client_for(&ws_url(proxy.addr), &env.tls, &env.keys);
    let blobs = env.data.path().join("blobs");
    let (pointer, ()) = tokio::join!(via_proxy.upload_file(&path), async {
        until("the proxy holds the upload", || proxy.held()).await;
        // The relay has consumed and written 1 MiB of what was forwarded.
        until("1 MiB of the upload on the relay's disk", || {
            std::fs::read_dir(&blobs).unwrap().any(|e| {
                let e = e.unwrap();
                !e.file_name().to_string_lossy().starts_with("meta.sqlite")
                    && file_len(&e.path()) >= ON_DISK_AT_CUT
            })
        })
        .await;
        proxy.cut();
    });
    let pointer = pointer.unwrap();
    assert!(proxy.cuts() == 1, "the proxy cut the upload once");
    // Resumed, not restarted: after the cut only the rest from the stored offset is sent.
    let resent = proxy.up_bytes() - CUT_AT;
    let most = pointer.ciphertext_len() - ON_DISK_AT_CUT + FRAMING;
    assert!(
        resent <= most,
        "upload restarted: {resent} bytes sent after the cut, at most {most} expected"
    );
    let out = env.out_dir().join("cut.bin");
    env.client.download(&pointer, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == content);
}

/// Issue 10: the file changes in place (same size, in the prefix already sent) while an
/// upload is cut; the resumption refuses with `Changed` before sealing anything new, so no
/// bytes of the new content go out under the first key and nonces, and the relay's partial
/// blob holds only bytes sent before the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumed_after_the_file_changed_refuses() {
    let env = Env::start(BlobConfig::default()).await;
    let size = 8 << 20;
    let content = random_bytes(size, 11);
    let path = env.file("changing.bin", &content);
    let relay_addr = env.relay.as_ref().unwrap().local_addr();
    let proxy = proxy::Proxy::start(relay_addr, Some(CUT_AT), None).await;
    let via_proxy = client_for(&ws_url(proxy.addr), &env.tls, &env.keys);
    let blobs = env.data.path().join("blobs");
    let (result, ()) = tokio::join!(via_proxy.upload_file(&path), async {
        until("the proxy holds the upload", || proxy.held()).await;
        until("1 MiB of the upload on the relay's disk", || {
            std::fs::read_dir(&blobs).unwrap().any(|e| {
                let e = e.unwrap();
                !e.file_name().to_string_lossy().starts_with("meta.sqlite")
                    && file_len(&e.path()) >= ON_DISK_AT_CUT
            })
        })
        .await;
        // Same size, other bytes at the start: size alone cannot tell. Written in place
        // over the first 4 KiB, never truncated: the first attempt's producer may still be
        // sealing the chunks after the 3 MiB the proxy holds, and a file truncated under it
        // would stop it with `Changed` by itself (no cut, no resumption: not the case this
        // test is about). Chunk 0, the one changed, was sealed and sent before the hold.
        let mut start = content[..4096].to_vec();
        start.iter_mut().for_each(|b| *b ^= 0xff);
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, &start).unwrap();
        drop(file);
        proxy.cut();
    });
    match result {
        Err(TransferError::Changed(p)) => assert_eq!(p, path),
        other => panic!("expected Changed, got {other:?}"),
    }
    assert!(proxy.cuts() == 1, "the proxy cut the upload once");
    // The client came back after the cut (the refusal is the resumption's), and nothing but
    // request framing went out: no chunk (1 MiB) of new content.
    let resent = proxy.up_bytes() - CUT_AT;
    assert!(
        resent > 0,
        "no request after the cut: the upload did not resume"
    );
    assert!(
        resent <= FRAMING,
        "{resent} bytes sent after the cut, at most {FRAMING} expected"
    );
    // The relay's only blob is incomplete and holds at most what was forwarded before the cut.
    let (count, length, stored) = blob_rows(&env);
    assert_eq!(count, 1);
    assert!(
        stored <= CUT_AT && stored < length,
        "stored {stored} of {length}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_cut_midway_resumes_with_range() {
    let env = Env::start(BlobConfig::default()).await;
    let size = 8 << 20;
    let content = random_bytes(size, 8);
    let pointer = env
        .client
        .upload_file(&env.file("d.bin", &content))
        .await
        .unwrap();
    let relay_addr = env.relay.as_ref().unwrap().local_addr();
    let proxy = proxy::Proxy::start(relay_addr, None, Some(CUT_AT)).await;
    let via_proxy = client_for(&ws_url(proxy.addr), &env.tls, &env.keys);
    let dir = env.out_dir().join("resume");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("d.bin");
    let (got, ()) = tokio::join!(via_proxy.download(&pointer, &out), async {
        until("the proxy holds the download", || proxy.held()).await;
        // The client has verified, decrypted and written 1 MiB (its temporary file).
        until("1 MiB of the download on the client's disk", || {
            std::fs::read_dir(&dir)
                .unwrap()
                .any(|e| file_len(&e.unwrap().path()) >= ON_DISK_AT_CUT)
        })
        .await;
        proxy.cut();
    });
    got.unwrap();
    assert_eq!(proxy.cuts(), 1);
    let resent = proxy.down_bytes() - CUT_AT;
    let most = pointer.ciphertext_len() - ON_DISK_AT_CUT + FRAMING;
    assert!(
        resent <= most,
        "download restarted: {resent} bytes received after the cut, at most {most} expected"
    );
    assert!(std::fs::read(&out).unwrap() == content);
}

fn assert_nothing_written(dir: &Path) {
    let left = leftover_parts(dir);
    assert!(
        left.is_empty(),
        "files left behind after a failed download: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_swapping_a_blob_is_detected() {
    let env = Env::start(BlobConfig::default()).await;
    let a = env
        .client
        .upload_file(&env.file("a.bin", &random_bytes(3 << 20, 1)))
        .await
        .unwrap();
    let b = env
        .client
        .upload_file(&env.file("b.bin", &random_bytes(3 << 20, 2)))
        .await
        .unwrap();
    // The relay serves b's ciphertext (same length) under a's id.
    std::fs::copy(env.blob_path(&b.blob_id), env.blob_path(&a.blob_id)).unwrap();
    let dir = env.work.path().join("swap");
    std::fs::create_dir_all(&dir).unwrap();
    let err = env.client.download(&a, &dir).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::Integrity(AttachmentError::Authentication { chunk: 0 })
        ),
        "{err}"
    );
    assert_nothing_written(&dir);
    // The share link (digest in the fragment) is refused the same way.
    let link = ShareLink::from_pointer(&env.client.origin(), &a).to_url();
    assert!(
        fetch(&link, Arc::clone(&env.tls), Some(&dir), false)
            .await
            .is_err()
    );
    assert_nothing_written(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_truncating_a_blob_is_detected() {
    let env = Env::start(BlobConfig::default()).await;
    let p = env
        .client
        .upload_file(&env.file("t.bin", &random_bytes(3 << 20, 3)))
        .await
        .unwrap();
    // A relay that drops the last chunk and claims the blob is that long.
    let new_len = p.ciphertext_len() - (1 << 20) - 16;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(env.blob_path(&p.blob_id))
        .unwrap();
    f.set_len(new_len).unwrap();
    let db = rusqlite::Connection::open(env.data.path().join("blobs/meta.sqlite")).unwrap();
    db.execute(
        "UPDATE blobs SET length = ?1, stored = ?1 WHERE id = ?2",
        rusqlite::params![new_len as i64, p.blob_id.0.as_slice()],
    )
    .unwrap();
    let dir = env.work.path().join("trunc");
    std::fs::create_dir_all(&dir).unwrap();
    let err = env.client.download(&p, &dir).await.unwrap_err();
    assert!(matches!(err, TransferError::Integrity(_)), "{err}");
    assert_nothing_written(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_size_limits_give_clear_errors() {
    let config = BlobConfig {
        max_blob_bytes: 2 << 20,
        quota_bytes_per_user: 5 << 20,
        ..BlobConfig::default()
    };
    let env = Env::start(config).await;
    let err = env
        .client
        .upload_file(&env.file("big.bin", &random_bytes(3 << 20, 1)))
        .await
        .unwrap_err();
    match err {
        TransferError::Refused {
            status: 413,
            message,
        } => {
            assert!(message.contains("exceeds the relay's maximum"), "{message}")
        }
        e => panic!("expected 413, got {e}"),
    }
    let small = env.file("s.bin", &random_bytes((3 << 19) + 5, 2));
    env.client.upload_file(&small).await.unwrap();
    env.client.upload_file(&small).await.unwrap();
    env.client.upload_file(&small).await.unwrap();
    let err = env.client.upload_file(&small).await.unwrap_err();
    match err {
        TransferError::Refused {
            status: 507,
            message,
        } => {
            assert!(message.starts_with("quota exceeded"), "{message}")
        }
        e => panic!("expected 507, got {e}"),
    }
}

/// Every file under the relay's data directory, concatenated.
fn data_dir_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                all.extend(std::fs::read(&p).unwrap());
            }
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_data_dir_holds_no_plaintext_and_no_key() {
    let env = Env::start(BlobConfig::default()).await;
    let marker = b"TOP-SECRET-PLAINTEXT-MARKER-0123456789 ".repeat(2000);
    let name = "secret-plans-name.txt";
    let p = env
        .client
        .upload_file(&env.file(name, &marker))
        .await
        .unwrap();
    let link = ShareLink::from_pointer(&env.client.origin(), &p).to_url();
    // Fetch through the link too, so the relay saw a share download.
    fetch(&link, Arc::clone(&env.tls), Some(&env.out_dir()), false)
        .await
        .unwrap();
    let all = data_dir_bytes(env.data.path());
    assert!(!all.is_empty());
    assert!(
        !contains(&all, b"TOP-SECRET-PLAINTEXT"),
        "plaintext on the relay"
    );
    assert!(!contains(&all, name.as_bytes()), "file name on the relay");
    assert!(!contains(&all, p.key.as_bytes()), "raw key on the relay");
    let fragment = link.split_once('#').unwrap().1;
    let key_b64 = fragment.split('.').next().unwrap();
    assert!(
        !contains(&all, key_b64.as_bytes()),
        "encoded key on the relay"
    );
    assert!(
        !contains(&all, hex::encode(p.key.as_bytes()).as_bytes()),
        "hex key on the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_blobs_are_swept() {
    let config = BlobConfig {
        retention: std::time::Duration::ZERO,
        sweep_interval: std::time::Duration::from_millis(200),
        ..BlobConfig::default()
    };
    let env = Env::start(config).await;
    let p = env
        .client
        .upload_file(&env.file("e.bin", b"expires"))
        .await
        .unwrap();
    let path = env.blob_path(&p.blob_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while path.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!path.exists(), "expired blob still on disk");
    let err = env.client.download(&p, &env.out_dir()).await.unwrap_err();
    assert!(
        matches!(err, TransferError::Refused { status: 404, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_page_decrypts_in_headless_chromium() {
    let env = Env::start(BlobConfig::default()).await;
    let text = "Hello from Cove! <b>not markup</b> \u{2713}\nsecond line\n";
    let p = env
        .client
        .upload_file(&env.file("greeting.txt", text.as_bytes()))
        .await
        .unwrap();
    let link = ShareLink::from_pointer(&env.client.origin(), &p).to_url();
    let Some(dom) = browser::dump_dom(&link).await else {
        return;
    };
    assert!(
        dom.contains("data-state=\"done\""),
        "page did not finish: {dom}"
    );
    assert!(dom.contains("greeting.txt"), "name not shown: {dom}");
    assert!(
        dom.contains("Hello from Cove! &lt;b&gt;not markup&lt;/b&gt; \u{2713}"),
        "text not shown: {dom}"
    );
    assert!(dom.contains("Decrypted and verified"));

    // A wrong key in the fragment: the page refuses and shows no content.
    let mut bad = ShareLink::parse(&link).unwrap();
    bad.key = cove_core::attachment::FileKey::from_bytes([7; 32]);
    let dom = browser::dump_dom(&bad.to_url()).await.unwrap();
    assert!(dom.contains("data-state=\"error\""), "{dom}");
    assert!(!dom.contains("Hello from Cove"));
}
