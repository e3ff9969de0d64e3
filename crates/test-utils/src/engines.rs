//! Throwaway NATS and S3-compatible servers for the cluster tests: each a real server
//! process on a free loopback port with a temporary data directory, killed on drop.
//!
//! - [`NatsServer`]: Debian's `nats-server` (installed by `.ci/install-deps`; `$COVE_NATS_SERVER`
//!   overrides the path). [`NatsServer::stop`] and [`NatsServer::start_again`] restart it on
//!   the same port, for the "NATS restarted mid-test" case.
//! - [`S3Server`]: `s3s-fs`, an S3-compatible server over a directory (a bucket is a
//!   directory; `.ci/install-deps` installs it with `cargo install`; `$COVE_S3S_FS` overrides
//!   the path, else `~/.cargo/bin/s3s-fs`, else the `PATH`).
//!
//! Without the binary, `start` panics saying how to install it: the tests fail, never skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A free loopback port (taken from the OS and let go; a server that loses it to another
/// process fails to start and is tried again on another).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `child` accepts TCP connections on `port`; false if it exits first or the
/// deadline passes (it is then killed).
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// The path of a binary: `$env` if set, else the first of `candidates` that exists, else
/// `name` on the `PATH`; a panic naming `install` if none is found.
fn find_binary(env: &str, candidates: &[PathBuf], name: &str, install: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return found.clone();
    }
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok();
    match out.and_then(|o| String::from_utf8(o.stdout).ok()) {
        Some(path) if !path.trim().is_empty() => PathBuf::from(path.trim()),
        _ => panic!("{name} is not installed (nor in ${env}): {install}"),
    }
}

/// A running `nats-server` on 127.0.0.1 (core NATS, no JetStream: nothing on disk); killed
/// on drop.
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port. Panics if `nats-server` is missing or does not start.
    pub fn start() -> Self {
        let bin = find_binary(
            "COVE_NATS_SERVER",
            &[PathBuf::from("/usr/sbin/nats-server")],
            "nats-server",
            "run .ci/install-deps, which installs Debian's `nats-server`",
        );
        for _ in 0..5 {
            let mut server = NatsServer {
                bin: bin.clone(),
                port: free_port(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("nats-server did not start on any of 5 ports");
    }

    fn spawn(&mut self) -> bool {
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        if wait_listening(&mut child, self.port) {
            self.child = Some(child);
            true
        } else {
            false
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (`kill -9`); the port stays this server's for [`Self::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`Self::stop`]). Panics if it does
    /// not come up within the start deadline (the port was lost to another process).
    pub fn start_again(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_DEADLINE;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The access key of every [`S3Server`].
pub const S3_ACCESS_KEY: &str = "cove-test-access";
/// The secret key of every [`S3Server`].
pub const S3_SECRET_KEY: &str = "cove-test-secret-key";

/// A running `s3s-fs` on 127.0.0.1 over a temporary directory; killed on drop.
pub struct S3Server {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server on a free port, with [`S3_ACCESS_KEY`] and [`S3_SECRET_KEY`]. Panics
    /// if `s3s-fs` is missing or does not start.
    pub fn start() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let candidates: Vec<PathBuf> = home
            .into_iter()
            .map(|h| h.join(".cargo/bin/s3s-fs"))
            .collect();
        let bin = find_binary(
            "COVE_S3S_FS",
            &candidates,
            "s3s-fs",
            "run .ci/install-deps, which runs \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked`",
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
            if wait_listening(&mut child, port) {
                return S3Server { port, child, dir };
            }
        }
        panic!("s3s-fs did not start on any of 5 ports");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory the server keeps its buckets in (one subdirectory per bucket), for
    /// tests that scan what the store holds.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
