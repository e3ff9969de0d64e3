//! Attachment benchmark (`cargo bench -p cove --bench transfer`, release).
//!
//! 1. Chunk encryption: `cove_core::attachment::ChunkCipher::seal` vs bare ring AES-256-GCM
//!    `seal_in_place_separate_tag` on the same 1 MiB buffers (and, for information, the full
//!    streaming encryptor with SHA-256, SHA-256 alone, and decryption).
//! 2. A file (default 1 GiB, `COVE_BENCH_BYTES`) uploaded and downloaded over loopback TLS:
//!    Cove (`cove::transfer` against the real relay) side by side with a bare hyper + rustls
//!    HTTPS server writing to disk and a bare client, each side in its own process under
//!    `/usr/bin/time -v` for peak resident memory.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cove_core::attachment::{
    AttachmentPointer, ChunkCipher, DEFAULT_CHUNK_SIZE, Decryptor, Encryptor, Expected, FileKey,
    Header,
};
use rand::{RngCore, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(&args[2..]));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    crypto();
    transfers();
}

// ---------------------------------------------------------------------------------------
// 1. Chunk encryption

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn best_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn crypto() {
    const CHUNK: usize = DEFAULT_CHUNK_SIZE as usize;
    const BUFS: usize = 32;
    const ROUNDS: usize = 32; // 32 x 32 MiB = 1 GiB per run
    let total = (CHUNK * BUFS * ROUNDS) as u64;
    let mut bufs: Vec<Vec<u8>> = (0..BUFS).map(|i| vec![i as u8; CHUNK]).collect();
    let key_bytes = [7u8; 32];
    let key = FileKey::from_bytes(key_bytes);
    let header = Header::new(DEFAULT_CHUNK_SIZE, [1; 7]).unwrap();
    let cipher = ChunkCipher::new(&key, header);
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key_bytes).unwrap(),
    );
    let aad = header.encode();

    let mut sink = 0u8;
    let mut bare = || {
        best_of(3, || {
            let t = Instant::now();
            let mut n = 0u32;
            for _ in 0..ROUNDS {
                for b in bufs.iter_mut() {
                    let mut nonce = [0u8; 12];
                    nonce[7..11].copy_from_slice(&n.to_be_bytes());
                    let tag = ring_key
                        .seal_in_place_separate_tag(
                            ring::aead::Nonce::assume_unique_for_key(nonce),
                            ring::aead::Aad::from(&aad),
                            b,
                        )
                        .unwrap();
                    std::hint::black_box(tag.as_ref()[0]);
                    n += 1;
                }
            }
            t.elapsed()
        })
    };
    let d_bare = bare();
    let mut bufs2: Vec<Vec<u8>> = (0..BUFS).map(|i| vec![i as u8; CHUNK]).collect();
    let d_cove = best_of(3, || {
        let t = Instant::now();
        let mut n = 0u32;
        for _ in 0..ROUNDS {
            for b in bufs2.iter_mut() {
                let tag = cipher.seal(n, false, b);
                sink ^= tag[0];
                n += 1;
            }
        }
        t.elapsed()
    });
    let d_bare2 = bare();
    let d_bare = d_bare.min(d_bare2);

    // Full streaming encryptor (copies + SHA-256 of the ciphertext), for information.
    let input = vec![3u8; 64 << 20];
    let stream_total = 16 * input.len() as u64;
    let d_stream = best_of(2, || {
        let t = Instant::now();
        let mut enc = Encryptor::with_nonce_prefix(&key, [1; 7], DEFAULT_CHUNK_SIZE).unwrap();
        let mut out = Vec::with_capacity(input.len() + (4 << 20));
        for _ in 0..16 {
            enc.push(&input, &mut out).unwrap();
            sink ^= out.last().copied().unwrap_or(0);
            out.clear();
        }
        enc.finish(&mut out).unwrap();
        t.elapsed()
    });
    use sha2::Digest;
    let d_sha = best_of(2, || {
        let t = Instant::now();
        let mut h = sha2::Sha256::new();
        for _ in 0..16 {
            h.update(&input);
        }
        sink ^= h.finalize()[0];
        t.elapsed()
    });
    let d_ring_sha = best_of(2, || {
        let t = Instant::now();
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for _ in 0..16 {
            h.update(&input);
        }
        sink ^= h.finish().as_ref()[0];
        t.elapsed()
    });
    // Decryption of a 256 MiB blob.
    let plain = vec![5u8; 256 << 20];
    let mut blob = Vec::with_capacity(plain.len() + (1 << 20));
    let mut enc = Encryptor::with_nonce_prefix(&key, [1; 7], DEFAULT_CHUNK_SIZE).unwrap();
    enc.push(&plain, &mut blob).unwrap();
    enc.finish(&mut blob).unwrap();
    let d_dec = best_of(2, || {
        let t = Instant::now();
        let mut dec = Decryptor::new(&key, Expected::default());
        let mut out = Vec::with_capacity(2 << 20);
        for piece in blob.chunks(64 << 10) {
            dec.push(piece, &mut out).unwrap();
            out.clear();
        }
        dec.finish(&mut out).unwrap();
        t.elapsed()
    });
    println!("## Chunk encryption (1 MiB chunks, AES-256-GCM, ring; best of 3, 1 GiB per run)");
    println!("| measurement | throughput |");
    println!("|---|---|");
    println!(
        "| bare ring `seal_in_place_separate_tag` | {:.2} GB/s |",
        gbps(total, d_bare)
    );
    println!(
        "| Cove `ChunkCipher::seal` (STREAM nonce, header AAD) | {:.2} GB/s |",
        gbps(total, d_cove)
    );
    println!(
        "| **ratio Cove / bare** | **{:.2}** |",
        d_bare.as_secs_f64() / d_cove.as_secs_f64()
    );
    println!(
        "| Cove streaming `Encryptor` (incl. copies + SHA-256 of ciphertext) | {:.2} GB/s |",
        gbps(stream_total, d_stream)
    );
    println!(
        "| SHA-256 alone (sha2, SHA-NI) | {:.2} GB/s |",
        gbps(stream_total, d_sha)
    );
    println!(
        "| SHA-256 alone (ring) | {:.2} GB/s |",
        gbps(stream_total, d_ring_sha)
    );
    println!(
        "| Cove streaming `Decryptor` (incl. SHA-256) | {:.2} GB/s |",
        gbps(plain.len() as u64, d_dec)
    );
    println!();
    std::hint::black_box(sink);
}

// ---------------------------------------------------------------------------------------
// 2. Transfers, each side in its own process

struct Measured {
    secs: f64,
    rss_kib: u64,
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

/// Runs `child ARGS` under `/usr/bin/time -v`; returns its `TIME` line and peak RSS.
fn run_child(args: &[&str]) -> Measured {
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(exe())
        .arg("child")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {args:?} failed:\n{stdout}\n{stderr}"
    );
    let secs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TIME "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    Measured {
        secs,
        rss_kib: max_rss(&stderr),
    }
}

fn max_rss(time_output: &str) -> u64 {
    time_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A server child (relay or bare server) under `/usr/bin/time -v`; stops on stdin EOF.
struct Server {
    child: Child,
    port: u16,
    cert: String,
}

impl Server {
    fn start(kind: &str, dir: &Path) -> Server {
        let mut child = Command::new("/usr/bin/time")
            .arg("-v")
            .arg(exe())
            .args(["child", kind, dir.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.as_mut().unwrap();
        let mut r = std::io::BufReader::new(stdout);
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        let mut it = line.split_whitespace();
        assert_eq!(it.next(), Some("READY"), "server said {line:?}");
        let port = it.next().unwrap().parse().unwrap();
        let cert = it.next().unwrap().to_owned();
        Server { child, port, cert }
    }

    fn stop(mut self) -> u64 {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        max_rss(&String::from_utf8_lossy(&out.stderr))
    }
}

/// One side's figures from one repetition.
struct Round {
    up: Measured,
    down: Measured,
    server_rss_kib: u64,
}

/// Flushes dirty pages so that one run's writeback does not land in the next run's time.
fn settle_disk() {
    let _ = Command::new("sync").status();
}

/// Upload then download through the real relay and `cove::transfer`.
fn cove_round(work: &Path, file: &str, size: u64) -> Round {
    let relay_dir = work.join("relay");
    std::fs::create_dir_all(&relay_dir).unwrap();
    let relay = Server::start("relay", &relay_dir);
    let pointer = work.join("pointer.bin");
    let port = relay.port.to_string();
    settle_disk();
    let up = run_child(&[
        "cove-upload",
        &port,
        &relay.cert,
        file,
        pointer.to_str().unwrap(),
    ]);
    let out = work.join("cove-out.bin");
    settle_disk();
    let down = run_child(&[
        "cove-download",
        &port,
        &relay.cert,
        pointer.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let server_rss_kib = relay.stop();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_dir_all(&relay_dir).unwrap();
    Round {
        up,
        down,
        server_rss_kib,
    }
}

/// The same with the bare hyper + rustls server and client.
fn bare_round(work: &Path, file: &str, size: u64) -> Round {
    let bare_dir = work.join("bare");
    std::fs::create_dir_all(&bare_dir).unwrap();
    let bare = Server::start("bare-server", &bare_dir);
    let port = bare.port.to_string();
    settle_disk();
    let up = run_child(&["bare-upload", &port, &bare.cert, file]);
    let out = work.join("bare-out.bin");
    settle_disk();
    let down = run_child(&["bare-download", &port, &bare.cert, out.to_str().unwrap()]);
    let server_rss_kib = bare.stop();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_dir_all(&bare_dir).unwrap();
    Round {
        up,
        down,
        server_rss_kib,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn transfers() {
    let size: u64 = std::env::var("COVE_BENCH_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let reps: usize = std::env::var("COVE_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let work = tempfile::tempdir_in(
        std::env::var("COVE_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir()),
    )
    .unwrap();
    let file = work.path().join("input.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            rng.fill_bytes(&mut buf);
            let n = left.min(buf.len() as u64) as usize;
            std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
            left -= n as u64;
        }
        f.into_inner().unwrap().sync_all().unwrap();
    }
    let file_s = file.to_str().unwrap().to_owned();

    // Alternate the order (Cove first, then bare first, ...) so that neither side always
    // runs on a disk or page cache the other just stirred up.
    let mut cove = Vec::new();
    let mut bare = Vec::new();
    for rep in 0..reps {
        if rep % 2 == 0 {
            cove.push(cove_round(work.path(), &file_s, size));
            bare.push(bare_round(work.path(), &file_s, size));
        } else {
            bare.push(bare_round(work.path(), &file_s, size));
            cove.push(cove_round(work.path(), &file_s, size));
        }
        eprintln!(
            "rep {rep}: upload {:.2} s vs {:.2} s, download {:.2} s vs {:.2} s",
            cove[rep].up.secs, bare[rep].up.secs, cove[rep].down.secs, bare[rep].down.secs
        );
    }

    let secs = |rounds: &[Round], f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let (up, bup) = (secs(&cove, |r| r.up.secs), secs(&bare, |r| r.up.secs));
    let (down, bdown) = (secs(&cove, |r| r.down.secs), secs(&bare, |r| r.down.secs));
    let ratios = |f: fn(&Round) -> f64| {
        cove.iter()
            .zip(&bare)
            .map(|(c, b)| format!("{:.2}", f(b) / f(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let max = |rounds: &[Round], f: fn(&Round) -> u64| rounds.iter().map(f).max().unwrap_or(0);
    let mbs = |secs: f64| size as f64 / secs / 1e6;
    println!(
        "## Transfer of a {} MiB file over loopback TLS (each side its own process; median of {reps}, order alternating)",
        size >> 20
    );
    println!("| | Cove (E2E encrypted) | bare HTTPS | ratio of medians | ratio per repetition |");
    println!("|---|---|---|---|---|");
    println!(
        "| upload | {:.0} MB/s ({up:.2} s) | {:.0} MB/s ({bup:.2} s) | **{:.2}** | {} |",
        mbs(up),
        mbs(bup),
        bup / up,
        ratios(|r| r.up.secs)
    );
    println!(
        "| download | {:.0} MB/s ({down:.2} s) | {:.0} MB/s ({bdown:.2} s) | **{:.2}** | {} |",
        mbs(down),
        mbs(bdown),
        bdown / down,
        ratios(|r| r.down.secs)
    );
    println!(
        "| peak RSS client, upload | {} MiB | {} MiB | | |",
        max(&cove, |r| r.up.rss_kib) >> 10,
        max(&bare, |r| r.up.rss_kib) >> 10
    );
    println!(
        "| peak RSS client, download | {} MiB | {} MiB | | |",
        max(&cove, |r| r.down.rss_kib) >> 10,
        max(&bare, |r| r.down.rss_kib) >> 10
    );
    println!(
        "| peak RSS server (whole round) | {} MiB (relay) | {} MiB | | |",
        max(&cove, |r| r.server_rss_kib) >> 10,
        max(&bare, |r| r.server_rss_kib) >> 10
    );
}

async fn child(args: &[String]) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["relay", dir] => relay(Path::new(dir)).await,
        ["bare-server", dir] => bare::server(Path::new(dir)).await,
        ["cove-upload", port, cert, file, pointer] => cove_upload(port, cert, file, pointer).await,
        ["cove-download", port, cert, pointer, out] => {
            cove_download(port, cert, pointer, out).await
        }
        ["bare-upload", port, cert, file] => bare::upload(port, cert, file).await,
        ["bare-download", port, cert, out] => bare::download(port, cert, out).await,
        _ => panic!("unknown child command {a:?}"),
    }
}

async fn wait_stdin_eof() {
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await
    .unwrap();
}

async fn relay(dir: &Path) {
    let mut config =
        cove_server::RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("data"));
    config.limits = cove_test_utils::test_limits();
    let relay = cove_server::Relay::start(config).await.unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, relay.cert_pem()).unwrap();
    println!("READY {} {}", relay.local_addr().port(), cert.display());
    wait_stdin_eof().await;
    relay.shutdown().await;
}

fn tls(cert: &str) -> Arc<rustls::ClientConfig> {
    cove_test_utils::client_tls_config_from_pem_file(Path::new(cert)).unwrap()
}

async fn cove_upload(port: &str, cert: &str, file: &str, pointer: &str) {
    let tls = tls(cert);
    let url = format!("wss://127.0.0.1:{port}/v1/ws");
    let mut keys = cove_test_utils::DeviceKeys::generate("bench");
    let mut ws = cove_test_utils::TestClient::connect(&url, Arc::clone(&tls))
        .await
        .unwrap();
    ws.register(&mut keys).await.unwrap();
    let keys = Arc::new(keys);
    let k = Arc::clone(&keys);
    let sign: cove::transfer::SignFn = Arc::new(move |m: &[u8]| k.sign_raw(m).0);
    let client = cove::transfer::BlobClient::new(&url, tls)
        .unwrap()
        .with_signer(keys.id(), sign);
    let t = Instant::now();
    let p = client.upload_file(Path::new(file)).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    std::fs::write(pointer, serde_json::to_vec(&p).unwrap()).unwrap();
    println!("TIME {secs}");
}

async fn cove_download(port: &str, cert: &str, pointer: &str, out: &str) {
    let p: AttachmentPointer = serde_json::from_slice(&std::fs::read(pointer).unwrap()).unwrap();
    let client =
        cove::transfer::BlobClient::new(&format!("wss://127.0.0.1:{port}"), tls(cert)).unwrap();
    let t = Instant::now();
    client.download(&p, Path::new(out)).await.unwrap();
    println!("TIME {}", t.elapsed().as_secs_f64());
}

/// The bare baseline: what a plain cloud drive over HTTPS does (no end-to-end encryption).
mod bare {
    use super::*;
    use http_body_util::{BodyExt, Empty, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

    pub async fn server(dir: &Path) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let cert_path = dir.join("cert.pem");
        std::fs::write(&cert_path, ck.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!(
            "READY {} {}",
            listener.local_addr().unwrap().port(),
            cert_path.display()
        );
        let path = Arc::new(dir.join("stored.bin"));
        let accept = async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let acceptor = acceptor.clone();
                let path = Arc::clone(&path);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| handle(req, Arc::clone(&path)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        };
        tokio::select! { () = accept => {}, () = wait_stdin_eof() => {} }
    }

    async fn handle(
        req: http::Request<Incoming>,
        path: Arc<PathBuf>,
    ) -> Result<http::Response<Body>, std::io::Error> {
        if req.method() == http::Method::PUT {
            let mut f = tokio::io::BufWriter::with_capacity(
                1 << 20,
                tokio::fs::File::create(&*path).await?,
            );
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.map_err(std::io::Error::other)?.into_data() {
                    f.write_all(&d).await?;
                }
            }
            f.flush().await?;
            f.get_ref().sync_data().await?;
            return Ok(http::Response::new(empty()));
        }
        let file = tokio::fs::File::open(&*path).await?;
        let len = file.metadata().await?.len();
        let stream = futures_util::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let mut resp = http::Response::new(StreamBody::new(stream).boxed());
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
        Ok(resp)
    }

    fn empty() -> Body {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    async fn connect(port: &str, cert: &str) -> hyper::client::conn::http1::SendRequest<Body> {
        let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls(cert))
            .connect(name, tcp)
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    pub async fn upload(port: &str, cert: &str, file: &str) {
        let t = Instant::now();
        let mut sender = connect(port, cert).await;
        let f = tokio::fs::File::open(file).await.unwrap();
        let len = f.metadata().await.unwrap().len();
        let stream = futures_util::stream::unfold(f, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let req = http::Request::put("/file")
            .header(http::header::HOST, "127.0.0.1")
            .header(http::header::CONTENT_LENGTH, len)
            .body(StreamBody::new(stream).boxed())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert!(resp.status().is_success());
        println!("TIME {}", t.elapsed().as_secs_f64());
    }

    pub async fn download(port: &str, cert: &str, out: &str) {
        let t = Instant::now();
        let mut sender = connect(port, cert).await;
        let req = http::Request::get("/file")
            .header(http::header::HOST, "127.0.0.1")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let mut f = tokio::io::BufWriter::with_capacity(
            1 << 20,
            tokio::fs::File::create(out).await.unwrap(),
        );
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.unwrap().into_data() {
                f.write_all(&d).await.unwrap();
            }
        }
        f.flush().await.unwrap();
        f.get_ref().sync_data().await.unwrap();
        println!("TIME {}", t.elapsed().as_secs_f64());
    }
}
