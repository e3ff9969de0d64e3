//! `cove daemon`: its idle cost (CPU over a quiet period and memory, from `/proc`) and the
//! JSON-RPC round trip on its socket (`status`, and `send` which includes MLS encryption and
//! the relay storing the message over loopback TLS), beside a baseline in the same run: a
//! bare Unix-socket line echo server driven by the same client code.
//!
//! The real `cove` binary runs the daemon, against an in-process relay (SQLite) with alice
//! and bob in one group.
//!
//! Run: `cargo bench -p cove-cli --bench daemon` (`COVE_BENCH_IDLE_SECS=30`,
//! `COVE_BENCH_ROUNDS=2000` status round trips, `COVE_BENCH_SENDS=200`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use support::cove;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cove_server::{Relay, RelayConfig, StoreKind};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

fn main() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let idle = env("COVE_BENCH_IDLE_SECS", 30);
    let rounds = env("COVE_BENCH_ROUNDS", 2000);
    let sends = env("COVE_BENCH_SENDS", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(idle, rounds, sends));
}

async fn run(idle: u64, rounds: u64, sends: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    config.store = StoreKind::Sqlite;
    let relay = Relay::start(config).await.unwrap();
    let server = format!("wss://{}", relay.local_addr());
    let ca = relay.cert_path().to_str().unwrap().to_owned();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let (a, b) = (alice.clone(), bob.clone());
    tokio::task::spawn_blocking(move || {
        cove(
            &a,
            &[
                "init",
                "--no-account",
                "--server",
                &server,
                "--user",
                "alice",
                "--ca",
                &ca,
            ],
        );
        cove(
            &b,
            &[
                "init",
                "--no-account",
                "--server",
                &server,
                "--user",
                "bob",
                "--ca",
                &ca,
            ],
        );
        cove(&a, &["group", "create", "bench"]);
        cove(&a, &["group", "add", "bench", "bob"]);
    })
    .await
    .unwrap();

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_cove"))
        .arg("--home")
        .arg(&alice)
        .arg("daemon")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("listening on"), "{first}");
    let socket = alice.join("daemon.sock");
    let pid = daemon.id();

    let mut client = Client::connect(&socket).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .call("status", "{}")
        .await
        .contains("\"connected\":true")
    {
        assert!(Instant::now() < deadline, "the daemon did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One send first, so the group is warm (caught up, epoch current).
    client
        .call("send", r#"{"group":"bench","text":"warm up"}"#)
        .await;

    eprintln!("idle for {idle} s...");
    let (cpu0, wall0) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let (cpu1, wall) = (cpu_ticks(pid), wall0.elapsed());
    let ticks = clock_ticks();
    let cpu_s = (cpu1 - cpu0) as f64 / ticks;
    let (rss, hwm) = (status_kb(pid, "VmRSS:"), status_kb(pid, "VmHWM:"));

    eprintln!("round trips...");
    let echo = echo_server(&dir.path().join("echo.sock"));
    let mut bare = Client::connect(&echo).await;
    let mut bare_ms = Vec::new();
    let mut status_ms = Vec::new();
    // Interleaved, so a change in machine load hits both alike.
    for _ in 0..rounds {
        bare_ms.push(bare.timed("status", "{}").await);
        status_ms.push(client.timed("status", "{}").await);
    }
    let mut send_ms = Vec::new();
    for i in 0..sends {
        let params = format!(r#"{{"group":"bench","text":"message {i}"}}"#);
        send_ms.push(client.timed("send", &params).await);
    }

    println!("## cove daemon (idle {idle} s, {rounds} status round trips, {sends} sends)");
    println!();
    println!("| What | Value |");
    println!("|---|---|");
    println!(
        "| idle CPU | {:.3} s over {:.1} s = {:.3} % of one core |",
        cpu_s,
        wall.as_secs_f64(),
        100.0 * cpu_s / wall.as_secs_f64()
    );
    println!("| memory | RSS {rss} KiB, peak {hwm} KiB |");
    println!();
    println!("| Round trip (ms) | median | p90 | p99 | ratio of medians to bare |");
    println!("|---|---|---|---|---|");
    let b = row("bare Unix-socket line echo", &mut bare_ms, None);
    row("daemon `status`", &mut status_ms, Some(b));
    row("daemon `send` (stored by the relay)", &mut send_ms, Some(b));

    let _ = client.call("shutdown", "{}").await;
    let _ = daemon.wait();
    relay.shutdown().await;
}

fn row(name: &str, ms: &mut [f64], base: Option<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let median = q(0.5);
    println!(
        "| {name} | {:.3} | {:.3} | {:.3} | {} |",
        median,
        q(0.9),
        q(0.99),
        base.map_or("1".into(), |b| format!("{:.1}x", median / b))
    );
    median
}

/// A JSON-RPC client reduced to what both servers share: write a line, read a line.
struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    id: u64,
    line: String,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            id: 0,
            line: String::new(),
        }
    }

    async fn call(&mut self, method: &str, params: &str) -> String {
        self.id += 1;
        let request = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"{method}\",\"params\":{params}}}\n",
            self.id
        );
        self.writer.write_all(request.as_bytes()).await.unwrap();
        self.line.clear();
        self.reader.read_line(&mut self.line).await.unwrap();
        assert!(!self.line.contains("\"error\""), "{}", self.line);
        self.line.clone()
    }

    async fn timed(&mut self, method: &str, params: &str) -> f64 {
        let start = Instant::now();
        self.call(method, params).await;
        start.elapsed().as_secs_f64() * 1000.0
    }
}

/// The baseline: a thread per connection echoing each line back.
fn echo_server(path: &Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let reader = std::io::BufReader::new(stream);
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    if writeln!(writer, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    path.to_owned()
}

/// utime + stime of `pid`, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
