//! Shared fixtures: a relay, user homes, and helpers that read a device's events.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cove::config::Home;
use cove::{ChatMessage, Device, Event, GroupId, SessionEvent, UserName};
use cove_test_utils::TestRelay;

/// Longest wait for anything in these tests (a failure, not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(60);

/// A relay and a directory for user homes.
pub struct Net {
    /// Kept alive for the test's duration.
    _relay: TestRelay,
    pub server: String,
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Net {
    /// An in-process relay with the SQLite store, validating handshakes as in production.
    pub async fn sqlite() -> Net {
        Net::with_limits(cove_test_utils::test_limits()).await
    }

    /// An in-process relay with the SQLite store and these limits, validating handshakes as
    /// in production.
    pub async fn with_limits(limits: cove_server::Limits) -> Net {
        Net::start(
            TestRelay::configured(|c| {
                c.store = cove_server::StoreKind::Sqlite;
                c.limits = limits;
                c.validate_handshakes = true;
            })
            .await,
        )
    }

    fn start(relay: TestRelay) -> Net {
        let server = format!("wss://{}", relay.addr());
        let ca = relay.handle().cert_path().to_owned();
        Net {
            _relay: relay,
            server,
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The relay (to prune it now, issue 13).
    pub fn relay(&self) -> &TestRelay {
        &self._relay
    }

    /// The relay's data directory (`relay.db`, `blobs/`).
    pub fn relay_data(&self) -> &Path {
        self._relay.data_dir()
    }

    /// The home of `name`.
    pub fn home(&self, name: &str) -> Home {
        Home::new(self.dir.path().join(name))
    }

    /// Registers user `name` with a fresh home of the same name.
    pub async fn user(&self, name: &str) -> Device {
        register(&self.home(name), &self.server, name, &self.ca).await
    }
}

/// Registers `user` in `home` against `server`.
pub async fn register(home: &Home, server: &str, user: &str, ca: &Path) -> Device {
    Device::init(home, server, UserName::new(user).unwrap(), Some(ca))
        .await
        .unwrap_or_else(|e| panic!("registering {user}: {e}"))
}

pub fn names(users: &[&str]) -> Vec<UserName> {
    users.iter().map(|u| UserName::new(*u).unwrap()).collect()
}

/// Reads `device`'s events until `done` is true for one; returns every message seen on
/// the way (including the matching event's, if a message).
pub async fn until(
    device: &mut Device,
    what: &str,
    mut done: impl FnMut(&Event) -> bool,
) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, device.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} did not see {what} in time", device.user()))
            .unwrap_or_else(|| panic!("{}'s session stopped before {what}", device.user()));
        if let SessionEvent::Core(event) = event {
            if let Event::Message(m) = &event {
                messages.push((**m).clone());
            }
            if done(&event) {
                return messages;
            }
        }
    }
}

/// Waits for the Welcome into some group.
pub async fn joined(device: &mut Device) {
    until(device, "a Welcome", |e| matches!(e, Event::Joined { .. })).await;
}

/// Reads message events until `n` have arrived.
pub async fn messages(device: &mut Device, n: usize) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    while out.len() < n {
        let want = n - out.len();
        let mut got = 0;
        out.extend(
            until(device, &format!("{want} more messages"), |e| {
                if matches!(e, Event::Message(_)) {
                    got += 1;
                }
                got == want
            })
            .await,
        );
    }
    out
}

/// Text of the sentinel message tests send after everything else.
pub const SENTINEL: &str = "sentinel: nothing after this";

/// Reads `device`'s message events up to the sentinel (see [`SENTINEL`]) and returns the
/// messages before it. Sent after everything else in the same group, the sentinel comes
/// last in the group's log: a duplicate or a late message shows up before it, so no quiet
/// period is needed to see one.
pub async fn before_sentinel(device: &mut Device) -> Vec<ChatMessage> {
    let mut got = until(
        device,
        "the sentinel",
        |e| matches!(e, Event::Message(m) if m.text == SENTINEL),
    )
    .await;
    assert_eq!(got.pop().map(|m| m.text).as_deref(), Some(SENTINEL));
    got
}

/// The id of the group named `name` on `device`.
pub async fn group_id(device: &Device, name: &str) -> GroupId {
    let groups = device.groups().await.unwrap();
    let g = groups
        .iter()
        .find(|g| g.name == name)
        .expect("group exists");
    GroupId::from_hex(&g.id).unwrap()
}

/// Asserts that message ids are unique.
pub fn assert_unique(who: &str, messages: &[ChatMessage]) {
    let ids: BTreeSet<_> = messages.iter().map(|m| m.id).collect();
    assert_eq!(
        ids.len(),
        messages.len(),
        "{who} saw a message more than once"
    );
}

pub fn texts(messages: &[ChatMessage]) -> Vec<String> {
    messages.iter().map(|m| m.text.clone()).collect()
}

/// Path of a binary of this workspace (`cove-server`, `cove`), built if missing.
/// `cargo test --workspace` builds every binary before the tests run; with `-p cove-e2e`
/// alone an existing binary is used as it is, so build it first (`cargo build -p cove-cli`)
/// after changing its code. (A `cargo build` from inside a test would wait for the lock the
/// outer `cargo test` holds.)
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/cove_e2e-HASH -> target/<profile>/<bin>
    let dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let path = dir.join(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", bin])
            .status()
            .expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {bin} failed"
        );
    }
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// The real `cove-server` binary as a child process on a given address.
pub struct RelayProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl RelayProcess {
    /// Starts `cove-server --listen LISTEN --data DATA` and waits for `listening on ADDR`.
    pub fn spawn(data: &Path, listen: &str) -> RelayProcess {
        Self::spawn_with(data, listen, &[])
    }

    /// [`RelayProcess::spawn`] with extra command-line arguments (e.g. `--config FILE`).
    pub fn spawn_with(data: &Path, listen: &str, extra: &[&std::ffi::OsStr]) -> RelayProcess {
        Self::spawn_logging(data, listen, extra, None)
    }

    /// [`RelayProcess::spawn_with`], its log (stderr, at `RUST_LOG=trace`) written to `log`
    /// when given.
    pub fn spawn_logging(
        data: &Path,
        listen: &str,
        extra: &[&std::ffi::OsStr],
        log: Option<&Path>,
    ) -> RelayProcess {
        use std::io::{BufRead, BufReader};
        let binary = workspace_binary("cove-server", "cove-server");
        let mut command = Command::new(binary);
        command
            .args(["--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped());
        match log {
            Some(log) => command
                .env("RUST_LOG", "trace")
                .stderr(std::fs::File::create(log).expect("creating the relay log")),
            None => command.stderr(Stdio::null()),
        };
        let mut child = command.spawn().expect("spawning cove-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("cove-server exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        RelayProcess { child, addr }
    }

    /// `kill -9`.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `needle` occurs in `haystack`, byte for byte.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The key of `home`'s encrypted database (from its `db.key`).
pub fn database_key(home: &Home) -> cove_core::cove_store::DatabaseKey {
    let text = std::fs::read_to_string(home.key_path()).unwrap();
    let bytes: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
    cove_core::cove_store::DatabaseKey::from_bytes(bytes)
}

/// The plaintext of every page of an SQLCipher 4 file (`cove.db`), or of every frame of its
/// write-ahead log (a path ending in `-wal`), decrypted with the home's raw `key`
/// (AES-256-CBC per page; 4096-byte pages ending in 80 reserved bytes, the IV then the HMAC;
/// page 1 starts with the 16-byte salt), not authenticated: what someone holding `db.key`
/// and the files reads, free pages and deleted-but-not-overwritten bytes included.
pub fn sqlcipher_plaintext(path: &Path, key: &[u8; 32]) -> Vec<u8> {
    use aes::cipher::generic_array::GenericArray;
    use aes::cipher::{BlockDecrypt, KeyInit};
    const PAGE: usize = 4096;
    const RESERVE: usize = 80;
    let data = std::fs::read(path).unwrap_or_default();
    let wal = path.to_string_lossy().ends_with("-wal");
    // A WAL: a 32-byte header, then frames of a 24-byte header (page number first) and a page.
    let (mut at, header) = if wal { (32, 24) } else { (0, 0) };
    let aes = aes::Aes256::new(GenericArray::from_slice(key));
    let mut out = Vec::with_capacity(data.len());
    let mut index = 0u32;
    while at + header + PAGE <= data.len() {
        index += 1;
        let page_no = if wal {
            u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
        } else {
            index
        };
        let page = &data[at + header..at + header + PAGE];
        let (start, end) = (if page_no == 1 { 16 } else { 0 }, PAGE - RESERVE);
        let mut prev: [u8; 16] = page[end..end + 16].try_into().unwrap();
        for block in page[start..end].chunks_exact(16) {
            let mut b = GenericArray::clone_from_slice(block);
            aes.decrypt_block(&mut b);
            out.extend(b.iter().zip(prev).map(|(x, p)| x ^ p));
            prev = block.try_into().unwrap();
        }
        at += header + PAGE;
    }
    out
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
