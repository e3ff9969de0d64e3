//! Cove Drive contents vs a bare blob copy (`cargo bench -p cove --bench drive_transfer`;
//! issue 14's goal: drive >= 0.7x the bare copy).
//!
//! One relay in this process (loopback TLS, SQLite, blob files). `COVE_BENCH_BYTES`
//! (default 1 GiB) in `COVE_BENCH_FILES` files (default 1,000) of random bytes, then:
//! - **bare**: each file read whole and sent as one blob (`BlobClient::upload_bytes`), then
//!   fetched (`download_bytes`) and written to disk; no chunking, no sealing;
//! - **drive**: each file through `cove::drive::content::upload_file` (FastCDC, per-chunk
//!   HMAC + AES-GCM, SHA-256, kept blobs) and `download_file` (verified, part file, rename).
//!
//! - **sync**: the same files through `cove drive sync` (the engine) from one device of a
//!   user to her second device (`COVE_BENCH_NO_SYNC` skips it).
//!
//! All run [`PARALLEL_TRANSFERS`] files at once. Prints MB/s per phase and the ratios of
//! drive and sync to bare throughput (upload + download).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cove::drive::PARALLEL_TRANSFERS;
use cove::drive::content::{download_file, upload_file};
use cove::transfer::BlobClient;
use cove_server::blob::BlobConfig;
use futures_util::StreamExt;
use rand::{RngCore, SeedableRng};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total: u64 = std::env::var("COVE_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let files: u64 = std::env::var("COVE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(total, files));
}

async fn run(total: u64, files: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        cove_server::RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = cove_server::StoreKind::Sqlite;
    config.limits = cove_test_utils::test_limits();
    config.blob = BlobConfig {
        quota_bytes_per_user: 64 << 30,
        ..BlobConfig::default()
    };
    let relay = cove_server::Relay::start(config).await.unwrap();
    let tls = cove_test_utils::client_tls_config(relay.cert_der()).unwrap();
    let url = cove_test_utils::ws_url(relay.local_addr());
    let mut keys = cove_test_utils::DeviceKeys::generate("bench");
    let mut ws = cove_test_utils::TestClient::connect(&url, Arc::clone(&tls))
        .await
        .unwrap();
    ws.register(&mut keys).await.unwrap();
    let keys = Arc::new(keys);
    let k = Arc::clone(&keys);
    let sign: cove::transfer::SignFn = Arc::new(move |m: &[u8]| k.sign_raw(m).0);
    let client = BlobClient::new(&url, tls)
        .unwrap()
        .with_signer(keys.id(), sign);

    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let each = total / files;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let paths: Vec<PathBuf> = (0..files)
        .map(|i| {
            let mut data = vec![0u8; each as usize];
            rng.fill_bytes(&mut data);
            let p = src.join(format!("f{i:05}"));
            std::fs::write(&p, &data).unwrap();
            p
        })
        .collect();
    let bytes = each * files;
    println!(
        "drive_transfer: {files} files of {each} bytes ({:.0} MiB), {PARALLEL_TRANSFERS} at once",
        bytes as f64 / (1 << 20) as f64
    );

    // The client's own work for the drive (no network): FastCDC, chunk ids, sealing and
    // the SHA-256 of each file, one thread.
    let t = Instant::now();
    let secret = cove_core::drive::FileSecret([9; 32]);
    for p in &paths {
        use sha2::Digest;
        let f = std::fs::File::open(p).unwrap();
        let mut h = sha2::Sha256::new();
        for c in cove_core::drive::chunk::Chunker::new(f) {
            let (_, data) = c.unwrap();
            h.update(&data);
            let id = cove_core::drive::chunk::chunk_id(&secret, &data);
            std::hint::black_box(cove_core::drive::chunk::seal_chunk_with_id(
                &secret, &id, &data,
            ));
        }
        std::hint::black_box(h.finalize());
    }
    let local = t.elapsed();
    if std::env::var("COVE_BENCH_PIECES").is_ok() {
        use sha2::Digest;
        let data: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let time = |what: &str, f: &dyn Fn(&[u8])| {
            let t = Instant::now();
            for d in &data {
                f(d);
            }
            println!(
                "  {what}: {:.1} MB/s",
                bytes as f64 / t.elapsed().as_secs_f64() / 1e6
            );
        };
        time("chunker", &|d| {
            for c in cove_core::drive::chunk::Chunker::new(d) {
                std::hint::black_box(c.unwrap());
            }
        });
        time("chunk_id", &|d| {
            std::hint::black_box(cove_core::drive::chunk::chunk_id(&secret, d));
        });
        time("seal_chunk", &|d| {
            std::hint::black_box(cove_core::drive::chunk::seal_chunk(&secret, d));
        });
        time("sha256", &|d| {
            std::hint::black_box(sha2::Sha256::digest(d));
        });
    }
    println!(
        "local : chunk + id + seal + SHA-256, one thread: {:7.1} MB/s",
        bytes as f64 / local.as_secs_f64() / 1e6
    );

    // Bare copy.
    let out = dir.path().join("bare");
    std::fs::create_dir_all(&out).unwrap();
    let t = Instant::now();
    let ids: Vec<_> = futures_util::stream::iter(paths.iter().cloned())
        .map(|p| {
            let c = client.clone();
            async move {
                let data = tokio::fs::read(&p).await.unwrap();
                c.upload_bytes(data).await.unwrap()
            }
        })
        .buffered(PARALLEL_TRANSFERS)
        .collect()
        .await;
    let bare_up = t.elapsed();
    let t = Instant::now();
    futures_util::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let (c, target) = (client.clone(), out.join(format!("f{i:05}")));
            async move {
                let data = c.download_bytes(*id, each).await.unwrap();
                tokio::fs::write(&target, data).await.unwrap();
            }
        })
        .buffer_unordered(PARALLEL_TRANSFERS)
        .collect::<Vec<()>>()
        .await;
    let bare_down = t.elapsed();
    std::fs::remove_dir_all(&out).unwrap();

    // Drive.
    let out = dir.path().join("drive");
    std::fs::create_dir_all(&out).unwrap();
    let t = Instant::now();
    let versions: Vec<_> = futures_util::stream::iter(paths.iter().cloned())
        .map(|p| {
            let c = client.clone();
            async move { upload_file(&c, &p, None, "bench", None).await.unwrap() }
        })
        .buffered(PARALLEL_TRANSFERS)
        .collect()
        .await;
    let drive_up = t.elapsed();
    let t = Instant::now();
    futures_util::stream::iter(versions.iter().enumerate())
        .map(|(i, up)| {
            let (c, target) = (client.clone(), out.join(format!("f{i:05}")));
            async move {
                download_file(&c, &up.version, &target, false)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(PARALLEL_TRANSFERS)
        .collect::<Vec<()>>()
        .await;
    let drive_down = t.elapsed();
    check_equal(&paths, &out);
    let chunks: usize = versions.iter().map(|u| u.chunks_sent).sum();

    let mbs = |d: std::time::Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "bare  : upload {:7.1} MB/s ({:.2} s), download {:7.1} MB/s ({:.2} s), blobs {files}",
        mbs(bare_up),
        bare_up.as_secs_f64(),
        mbs(bare_down),
        bare_down.as_secs_f64()
    );
    println!(
        "drive : upload {:7.1} MB/s ({:.2} s), download {:7.1} MB/s ({:.2} s), chunks {chunks}",
        mbs(drive_up),
        drive_up.as_secs_f64(),
        mbs(drive_down),
        drive_down.as_secs_f64()
    );
    let bare = (bare_up + bare_down).as_secs_f64();
    let drive = (drive_up + drive_down).as_secs_f64();
    println!(
        "ratio drive/bare throughput: upload {:.2}x, download {:.2}x, round trip {:.2}x (goal >= 0.7x)",
        bare_up.as_secs_f64() / drive_up.as_secs_f64(),
        bare_down.as_secs_f64() / drive_down.as_secs_f64(),
        bare / drive
    );

    // Sync: the same tree through `cove drive sync` between two devices of one user (the
    // engine end to end: scan, tree operations through MLS, transfers, state), beside the
    // bare copy above.
    if std::env::var("COVE_BENCH_NO_SYNC").is_err() {
        let (sync_up, sync_down) = sync_phase(&relay, dir.path(), &src).await;
        println!(
            "sync  : upload {:7.1} MB/s ({:.2} s), download {:7.1} MB/s ({:.2} s) (two devices, cove drive sync)",
            mbs(sync_up),
            sync_up.as_secs_f64(),
            mbs(sync_down),
            sync_down.as_secs_f64()
        );
        println!(
            "ratio sync/bare throughput: upload {:.2}x, download {:.2}x, round trip {:.2}x (goal >= 0.7x)",
            bare_up.as_secs_f64() / sync_up.as_secs_f64(),
            bare_down.as_secs_f64() / sync_down.as_secs_f64(),
            bare / (sync_up + sync_down).as_secs_f64()
        );
    }
    relay.shutdown().await;
}

/// alice's laptop syncs `src` into her drive (`/bench`), then her desk (linked) syncs it
/// into an empty folder; the time of each pass.
async fn sync_phase(
    relay: &cove_server::RelayHandle,
    dir: &Path,
    src: &Path,
) -> (std::time::Duration, std::time::Duration) {
    use cove::config::Home;
    use cove::drive::sync::Syncer;
    let server = format!("wss://{}", relay.local_addr());
    let user = cove::UserName::new("alice").unwrap();
    let laptop = cove::Device::init(
        &Home::new(dir.join("laptop")),
        &server,
        user,
        Some(relay.cert_path()),
    )
    .await
    .unwrap();
    let desk = cove::Device::link(&laptop, &Home::new(dir.join("desk")))
        .await
        .unwrap();
    laptop.drive_open("").await.unwrap();
    // The desk has the drive once its group's Init reached it.
    let mut tries = 0;
    while desk.drive_open("").await.is_err() {
        tries += 1;
        assert!(tries < 600, "the desk never got the drive");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    let mut up = Syncer::open(&laptop, src, "/bench", Box::new(|_| {}))
        .await
        .unwrap();
    let report = up.pass().await.unwrap();
    let sync_up = t.elapsed();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    drop(up);
    let out = dir.join("desk-files");
    let t = Instant::now();
    let mut down = Syncer::open(&desk, &out, "/bench", Box::new(|_| {}))
        .await
        .unwrap();
    let report = down.pass().await.unwrap();
    let sync_down = t.elapsed();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    drop(down);
    let files: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    for p in &files {
        let name = p.file_name().unwrap();
        assert!(
            std::fs::read(p).unwrap() == std::fs::read(out.join(name)).unwrap(),
            "{} differs after the sync",
            p.display()
        );
    }
    laptop.close().await;
    desk.close().await;
    (sync_up, sync_down)
}

fn check_equal(paths: &[PathBuf], out: &Path) {
    for (i, p) in paths.iter().enumerate() {
        let a = std::fs::read(p).unwrap();
        let b = std::fs::read(out.join(format!("f{i:05}"))).unwrap();
        assert!(a == b, "file {i} differs");
    }
}
