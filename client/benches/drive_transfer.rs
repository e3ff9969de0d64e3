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
//! All run [`PARALLEL_TRANSFERS`] files at once. Each phase is timed until its data is on
//! disk (`sync(1)` before it and at its end: see [`settle`]). Prints MB/s per phase and the ratios of
//! drive and sync to bare throughput (upload + download).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    // The client's own work for the drive (no network), as an upload does it: FastCDC,
    // each chunk's SHA-256 and id, sealing in place, and the whole file's SHA-256 (for a
    // file under 2 MiB, one chunk, its chunk's), one thread.
    let t = Instant::now();
    let secret = cove_core::drive::FileSecret([9; 32]);
    for p in &paths {
        use cove_core::drive::chunk::{
            Chunker, MAX_CHUNK, chunk_digest, chunk_id_of_digest, seal_chunk_in_place,
        };
        use sha2::Digest;
        let f = std::fs::File::open(p).unwrap();
        let mut whole =
            (f.metadata().unwrap().len() >= u64::from(MAX_CHUNK)).then(sha2::Sha256::new);
        for c in Chunker::new(f) {
            let (_, data) = c.unwrap();
            let digest = chunk_digest(&data);
            if let Some(h) = whole.as_mut() {
                h.update(&data);
            }
            let id = chunk_id_of_digest(&secret, &digest);
            std::hint::black_box(seal_chunk_in_place(&secret, &id, data));
        }
        std::hint::black_box(whole.map(|h| h.finalize()));
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
        time("chunk_id (its SHA-256, then an HMAC)", &|d| {
            std::hint::black_box(cove_core::drive::chunk::chunk_id(&secret, d));
        });
        time("seal_chunk (id and AES-GCM)", &|d| {
            std::hint::black_box(cove_core::drive::chunk::seal_chunk(&secret, d));
        });
        time("sha256", &|d| {
            std::hint::black_box(sha2::Sha256::digest(d));
        });
    }
    println!(
        "local : chunk + SHA-256 + id + seal, one thread: {:7.1} MB/s",
        bytes as f64 / local.as_secs_f64() / 1e6
    );

    let reps: usize = std::env::var("COVE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let sync = std::env::var("COVE_BENCH_NO_SYNC").is_err();
    let mbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let mut ratios = Vec::new();
    for rep in 0..reps {
        let r = one_rep(&relay, &client, dir.path(), &src, &paths, each, sync, rep).await;
        println!(
            "rep {rep}: bare   upload {:7.1} MB/s ({:.2} s), download {:7.1} MB/s ({:.2} s)",
            mbs(r.bare.0),
            r.bare.0.as_secs_f64(),
            mbs(r.bare.1),
            r.bare.1.as_secs_f64()
        );
        println!(
            "rep {rep}: drive  upload {:7.1} MB/s ({:.2} s), download {:7.1} MB/s ({:.2} s), chunks {}",
            mbs(r.drive.0),
            r.drive.0.as_secs_f64(),
            mbs(r.drive.1),
            r.drive.1.as_secs_f64(),
            r.chunks
        );
        if let Some(s) = r.sync {
            println!(
                "rep {rep}: sync   upload {:7.1} MB/s ({:.2} s), download {:7.1} MB/s ({:.2} s) (two devices, cove drive sync)",
                mbs(s.0),
                s.0.as_secs_f64(),
                mbs(s.1),
                s.1.as_secs_f64()
            );
        }
        let ratio = |x: (Duration, Duration)| {
            [
                r.bare.0.as_secs_f64() / x.0.as_secs_f64(),
                r.bare.1.as_secs_f64() / x.1.as_secs_f64(),
                (r.bare.0 + r.bare.1).as_secs_f64() / (x.0 + x.1).as_secs_f64(),
            ]
        };
        ratios.push((ratio(r.drive), r.sync.map(ratio)));
    }
    // Medians over the repetitions (each ratio against the bare copy of its own rep).
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let report = |what: &str, pick: &dyn Fn(usize) -> Option<[f64; 3]>| {
        let got: Vec<[f64; 3]> = (0..ratios.len()).filter_map(pick).collect();
        if got.is_empty() {
            return;
        }
        let col = |i: usize| median(got.iter().map(|r| r[i]).collect());
        let all: Vec<String> = got.iter().map(|r| format!("{:.2}", r[2])).collect();
        println!(
            "ratio {what}/bare throughput, median of {}: upload {:.2}x, download {:.2}x, round trip {:.2}x (reps: {}) (goal >= 0.7x)",
            got.len(),
            col(0),
            col(1),
            col(2),
            all.join(", ")
        );
    };
    report("drive", &|i| Some(ratios[i].0));
    report("sync", &|i| ratios[i].1);
    relay.shutdown().await;
}

/// One repetition's times: bare, drive contents and (unless skipped) sync; each
/// (upload, download).
struct Rep {
    bare: (Duration, Duration),
    drive: (Duration, Duration),
    chunks: usize,
    sync: Option<(Duration, Duration)>,
}

#[allow(clippy::too_many_arguments)]
async fn one_rep(
    relay: &cove_server::RelayHandle,
    client: &BlobClient,
    dir: &Path,
    src: &Path,
    paths: &[PathBuf],
    each: u64,
    sync: bool,
    rep: usize,
) -> Rep {
    // Bare copy.
    let out = dir.join(format!("bare-{rep}"));
    std::fs::create_dir_all(&out).unwrap();
    let t = start();
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
    let bare_up = stop(t);
    let t = start();
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
    let bare_down = stop(t);
    std::fs::remove_dir_all(&out).unwrap();

    // Drive.
    let out = dir.join(format!("drive-{rep}"));
    std::fs::create_dir_all(&out).unwrap();
    let t = start();
    let versions: Vec<_> = futures_util::stream::iter(paths.iter().cloned())
        .map(|p| {
            let c = client.clone();
            async move { upload_file(&c, &p, None, "bench", None).await.unwrap() }
        })
        .buffered(PARALLEL_TRANSFERS)
        .collect()
        .await;
    let drive_up = stop(t);
    let t = start();
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
    let drive_down = stop(t);
    check_equal(paths, &out);
    let chunks: usize = versions.iter().map(|u| u.chunks_sent).sum();

    std::fs::remove_dir_all(&out).unwrap();
    // Sync: the same tree through `cove drive sync` between two devices of one user (the
    // engine end to end: scan, tree operations through MLS, transfers, state).
    let sync = if sync {
        let at = dir.join(format!("sync-{rep}"));
        let times = sync_phase(relay, &at, src, &format!("alice{rep}")).await;
        std::fs::remove_dir_all(&at).unwrap();
        Some(times)
    } else {
        None
    };
    Rep {
        bare: (bare_up, bare_down),
        drive: (drive_up, drive_down),
        chunks,
        sync,
    }
}

/// `user`'s laptop syncs `src` into her drive (`/bench`), then her desk (linked) syncs it
/// into an empty folder; the time of each pass.
async fn sync_phase(
    relay: &cove_server::RelayHandle,
    dir: &Path,
    src: &Path,
    user: &str,
) -> (Duration, Duration) {
    use cove::config::Home;
    use cove::drive::sync::Syncer;
    let server = format!("wss://{}", relay.local_addr());
    let user = cove::UserName::new(user).unwrap();
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
    let t = start();
    let mut up = Syncer::open(&laptop, src, "/bench", Box::new(|_| {}))
        .await
        .unwrap();
    let report = up.pass().await.unwrap();
    let sync_up = stop(t);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    drop(up);
    let out = dir.join("desk-files");
    let t = start();
    let mut down = Syncer::open(&desk, &out, "/bench", Box::new(|_| {}))
        .await
        .unwrap();
    let report = down.pass().await.unwrap();
    let sync_down = stop(t);
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

/// [`settle`]s, then starts a phase's clock.
fn start() -> Instant {
    settle();
    Instant::now()
}

/// A phase's time until its data is on disk.
fn stop(t: Instant) -> Duration {
    settle();
    t.elapsed()
}

/// Flushes every dirty page to disk (`sync(1)`). Called before each phase (so none pays for
/// the previous one's writeback) and at the end of each, inside its time (so each phase is
/// timed until its files are on disk: the drive fsyncs each downloaded file before renaming
/// it; the bare copy writes without fsync and would otherwise leave 1 GiB of dirty pages
/// to whatever runs next).
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

fn check_equal(paths: &[PathBuf], out: &Path) {
    for (i, p) in paths.iter().enumerate() {
        let a = std::fs::read(p).unwrap();
        let b = std::fs::read(out.join(format!("f{i:05}"))).unwrap();
        assert!(a == b, "file {i} differs");
    }
}
