//! Durability: the real `cove-server` binary is killed with SIGKILL right after acknowledging
//! posts and restarted on the same data directory; nothing acknowledged is lost. A killed
//! process leaves what it wrote in the page cache, so that cannot show a missing sync:
//! [`a_post_is_synced_to_disk_before_posted_is_sent`] checks the order of syncs and replies.

use std::collections::HashMap;
use std::path::Path;

use cove_test_utils::{SpawnedRelay, TestRelay};
use cove_wire::{Epoch, ErrorCode, PostKind, Reply, Request};

use crate::validation::Member;
use crate::{assert_in_order, group_entry, inbox_entry};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove-server"))
}

#[tokio::test]
async fn kill_9_and_restart_lose_no_acknowledged_post() {
    let data = cove_test_utils::temp_dir();
    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();

    // Real MLS members: the binary validates handshakes.
    let mut alice = Member::new(relay.connect().await.unwrap(), "alice").await;
    let bob = Member::new(relay.connect().await.unwrap(), "bob").await;
    let bob_kp = bob.key_package();
    let (bob_client, bob_keys) = (bob.client, bob.keys);
    bob_client.close().await;
    let group = alice.create().await;
    let add = alice.add(&[bob_kp]);
    alice
        .post(group, &add, &[bob_keys.id()], &[])
        .await
        .unwrap();
    alice.merge();
    let (mut alice, alice_keys) = (alice.client, alice.keys);

    // Many posts in flight at once (so the relay batches them), then SIGKILL right after
    // the last acknowledgement.
    let n = 200;
    let mut ids = Vec::new();
    for i in 0..n {
        let body = Request::Post {
            group,
            epoch: Epoch(1),
            kind: PostKind::Application,
            payload: format!("durable {i}").into_bytes().into(),
        };
        ids.push(alice.send_request(body).await.unwrap());
    }
    let mut acknowledged = Vec::new();
    for id in ids {
        match alice.response(id).await.unwrap() {
            Ok(Reply::Posted { seq }) => acknowledged.push(seq),
            other => panic!("post refused: {other:?}"),
        }
    }
    relay.kill9().unwrap();

    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut bob = relay.connect().await.unwrap();
    bob.authenticate(&bob_keys).await.unwrap();
    let backlog = bob.backlog().await.unwrap();
    let welcome = inbox_entry(backlog[0].clone());
    assert_eq!(Some(welcome.payload.0), add.welcome);
    let entries: Vec<_> = backlog.into_iter().skip(1).map(group_entry).collect();
    assert_eq!(entries.len(), n, "every acknowledged post survived");
    assert_in_order(&entries);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        acknowledged
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.payload.as_bytes(), format!("durable {i}").as_bytes());
    }
    // The directory and the group survived too: Alice logs in, the epoch is 1.
    let mut alice = relay.connect().await.unwrap();
    alice.authenticate(&alice_keys).await.unwrap();
    let Reply::Groups { groups } = alice.call(Request::ListGroups).await.unwrap() else {
        panic!()
    };
    assert_eq!(groups[0].epoch, Epoch(1));
}

#[tokio::test]
async fn the_certificate_is_created_once_and_reused() {
    let data = cove_test_utils::temp_dir();
    let first = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let pem = std::fs::read(data.path().join("tls/cert.pem")).unwrap();
    first.kill9().unwrap();
    let second = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    assert_eq!(
        std::fs::read(data.path().join("tls/cert.pem")).unwrap(),
        pem
    );
    // The client trusting the saved certificate connects.
    second.connect().await.unwrap();
    assert!(data.path().join("relay.db").exists());
}

#[tokio::test]
async fn graceful_shutdown_tells_connected_devices() {
    let relay = TestRelay::sqlite().await;
    let (mut alice, _) = relay.register("alice").await.unwrap();
    alice.backlog().await.unwrap();
    let group = cove_test_utils::random_group_id();
    alice.create_group(group).await.unwrap();
    alice.post_app(group, Epoch(0), b"kept").await.unwrap();
    let addr = relay.addr();
    relay.shutdown().await;
    let (_, closing) = alice.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::Unavailable));
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn sigterm_shuts_the_binary_down_cleanly() {
    let data = cove_test_utils::temp_dir();
    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut alice = Member::new(relay.connect().await.unwrap(), "alice").await;
    alice.client.backlog().await.unwrap();
    let group = alice.create().await;
    let (mut alice, keys) = (alice.client, alice.keys);
    let first = alice.post_app(group, Epoch(0), b"one").await.unwrap();
    alice.post_app(group, Epoch(0), b"two").await.unwrap();
    // Acks may be buffered by the store; a graceful shutdown writes them.
    alice
        .ack(cove_wire::Stream::Group(group), first)
        .await
        .unwrap();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(relay.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (_, closing) = alice.read_until_closed().await;
    assert_eq!(closing, Some(ErrorCode::Unavailable));
    assert!(
        relay.wait_exit().unwrap().success(),
        "clean exit after SIGTERM"
    );
    // Restart on the same directory: the device is still registered, the ack was kept.
    let relay = SpawnedRelay::spawn(binary(), data.path(), &[]).unwrap();
    let mut again = relay.connect().await.unwrap();
    again.authenticate(&keys).await.unwrap();
    let backlog: Vec<_> = again
        .backlog()
        .await
        .unwrap()
        .into_iter()
        .map(group_entry)
        .collect();
    assert_eq!(backlog.len(), 1, "only the unacked post comes again");
    assert_eq!(backlog[0].payload.as_bytes(), b"two");
}

/// An acknowledged post is on stable storage before its `Posted` leaves the relay: the
/// SQLite write-ahead log (WAL) holding it has been written and fsynced first.
///
/// Method (syscall tracing): the real `cove-server` binary runs under
/// `strace -f -qq -yy -s 0 -e trace=<writes and syncs>`, which records every thread's writes
/// to files and sockets and its `fsync`/`fdatasync` calls, each file descriptor printed with
/// its path (`relay.db-wal`) or its TCP endpoints. strace prints calls in the order it
/// observes them, which follows causality across threads: a sync that returned before the
/// relay decided to reply is printed before the reply's write. Setup (register, create the
/// group) runs on a first connection, which is closed; then Alice posts `POSTS` messages of
/// `PAYLOAD` bytes one at a time on a second connection, each after the previous `Posted`.
/// On that second connection the trace must show:
/// 1. no write while the WAL holds a write that no completed sync covers (with
///    `synchronous=OFF` or `NORMAL` the WAL is not synced at commit, and this fails);
/// 2. exactly `POSTS` writes that come after at least `PAYLOAD` more WAL bytes were synced
///    than at the write before: one per `Posted`. Were a `Posted` sent before its post was
///    written, one reply would lack them.
///
/// Needs `strace` (Debian package `strace`) and permission to trace a child process.
#[tokio::test]
async fn a_post_is_synced_to_disk_before_posted_is_sent() {
    const POSTS: usize = 5;
    const PAYLOAD: u64 = 20_000;
    assert!(
        std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace)"
    );
    let dir = cove_test_utils::temp_dir();
    let data = dir.path().join("data");
    let trace_path = dir.path().join("strace.txt");
    let wrapper = dir.path().join("cove-server-under-strace");
    let script = format!(
        "#!/bin/sh\nexec strace -f -qq -yy -s 0 -e signal=none \
         -e trace=write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg,fsync,fdatasync \
         -o '{}' '{}' \"$@\"\n",
        trace_path.display(),
        binary().display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let strace = SpawnedRelay::spawn(&wrapper, &data, &[]).unwrap();
    // The relay is strace's only child; this guard kills it if the test fails midway.
    let relay = TracedRelay::child_of(strace.pid());

    let mut setup = Member::new(strace.connect().await.unwrap(), "alice").await;
    setup.client.backlog().await.unwrap();
    let group = setup.create().await;
    let keys = setup.keys;
    setup.client.close().await;

    let mut alice = strace.connect().await.unwrap();
    alice.authenticate(&keys).await.unwrap();
    alice.backlog().await.unwrap();
    for i in 0..POSTS {
        let mut payload = format!("synced {i} ").into_bytes();
        payload.resize(PAYLOAD as usize, b'.');
        alice.post_app(group, Epoch(0), &payload).await.unwrap();
    }
    relay.terminate();
    let status = strace.wait_exit().unwrap();
    assert!(status.success(), "relay under strace: {status}");

    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let sends = socket_writes(&trace);
    let sockets: Vec<&String> = sends.iter().map(|(socket, _)| socket).collect();
    assert_eq!(sockets.len(), 2, "one socket per connection: {sockets:?}");
    let (_, alice_sends) = &sends[1];
    for send in alice_sends {
        assert_eq!(
            send.unsynced_wal_writes, 0,
            "sent to Alice while the WAL held unsynced writes: {}",
            send.line
        );
    }
    let after_fresh_sync = alice_sends
        .iter()
        .filter(|send| send.fresh_synced_wal_bytes >= PAYLOAD)
        .count();
    assert_eq!(after_fresh_sync, POSTS);
}

/// The `cove-server` process running under strace (its child), killed on drop.
struct TracedRelay(u32);

impl TracedRelay {
    fn child_of(tracer: u32) -> Self {
        let path = format!("/proc/{tracer}/task/{tracer}/children");
        let children = std::fs::read_to_string(&path).unwrap();
        let pids: Vec<u32> = children
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 1, "children of strace: {pids:?}");
        TracedRelay(pids[0])
    }

    /// SIGTERM: the relay shuts down cleanly, then strace exits and flushes its trace.
    fn terminate(&self) {
        signal(self.0, "-TERM");
    }
}

impl Drop for TracedRelay {
    fn drop(&mut self) {
        // Usually gone already (terminated); then `kill` fails, which is fine.
        signal(self.0, "-KILL");
    }
}

fn signal(pid: u32, which: &str) {
    let _ = std::process::Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status();
}

/// A write to a client socket, as seen in the trace.
struct Send {
    /// WAL writes begun before it that no completed sync covered.
    unsynced_wal_writes: u64,
    /// WAL bytes newly covered by completed syncs since the previous write to this socket
    /// (0 for the first).
    fresh_synced_wal_bytes: u64,
    /// The trace line.
    line: String,
}

/// Every write to a TCP socket in a strace log, per socket (`TCP:[local->peer]`, in order of
/// first write), with the state of the WAL at that moment.
fn socket_writes(trace: &str) -> Vec<(String, Vec<Send>)> {
    let mut wal = Wal::default();
    let mut sockets: Vec<(String, Vec<Send>)> = Vec::new();
    // Per socket: synced WAL bytes at its previous write.
    let mut synced_at: HashMap<String, u64> = HashMap::new();
    // Calls whose end strace prints later ("<unfinished ...>"), per thread.
    let mut unfinished: HashMap<&str, (&str, Call)> = HashMap::new();
    for line in trace.lines() {
        let Some((tid, text)) = line.split_once(' ') else {
            continue;
        };
        let text = text.trim_start();
        if let Some(rest) = text.strip_prefix("<... ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let (started_as, call) = unfinished
                .remove(tid)
                .unwrap_or_else(|| panic!("a call ends that never started: {line}"));
            assert_eq!(started_as, name, "{line}");
            wal.end(call, result_of(rest));
            continue;
        }
        let Some((name, args)) = text.split_once('(') else {
            continue;
        };
        let target = fd_target(args).unwrap_or_default();
        let wal_file = target.ends_with("relay.db-wal");
        let call = match name {
            "fsync" | "fdatasync" if wal_file => wal.begin_sync(),
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" if wal_file => {
                wal.begin_write()
            }
            "write" | "writev" | "sendto" | "sendmsg" if target.starts_with("TCP:") => {
                // The first write to a socket counts from there.
                let before = synced_at.insert(target.clone(), wal.synced_bytes);
                let send = Send {
                    unsynced_wal_writes: wal.started - wal.synced_writes,
                    fresh_synced_wal_bytes: wal.synced_bytes - before.unwrap_or(wal.synced_bytes),
                    line: line.to_string(),
                };
                match sockets.iter_mut().find(|(s, _)| *s == target) {
                    Some((_, sends)) => sends.push(send),
                    None => sockets.push((target, vec![send])),
                }
                Call::Other
            }
            _ => Call::Other,
        };
        if text.ends_with("<unfinished ...>") {
            unfinished.insert(tid, (name, call));
        } else {
            wal.end(call, result_of(args));
        }
    }
    sockets
}

/// A traced call, as far as the WAL is concerned.
#[derive(Clone, Copy)]
enum Call {
    /// A sync of the WAL begun when `writes` WAL writes (of `bytes` bytes) had ended; `all`:
    /// none was under way.
    Sync { writes: u64, bytes: u64, all: bool },
    /// A write to the WAL.
    Write,
    /// Anything else.
    Other,
}

/// WAL writes and syncs seen so far.
#[derive(Default)]
struct Wal {
    started: u64,
    ended: u64,
    bytes: u64,
    /// Writes and bytes covered by a completed sync.
    synced_writes: u64,
    synced_bytes: u64,
}

impl Wal {
    fn begin_write(&mut self) -> Call {
        self.started += 1;
        Call::Write
    }

    fn begin_sync(&self) -> Call {
        Call::Sync {
            writes: self.ended,
            bytes: self.bytes,
            all: self.started == self.ended,
        }
    }

    /// A call returned `result`.
    fn end(&mut self, call: Call, result: Option<u64>) {
        match call {
            Call::Write => {
                self.ended += 1;
                self.bytes += result.unwrap_or(0);
            }
            Call::Sync { writes, bytes, all } if result == Some(0) => {
                if all {
                    self.synced_writes = self.synced_writes.max(writes);
                }
                self.synced_bytes = self.synced_bytes.max(bytes);
            }
            Call::Sync { .. } | Call::Other => {}
        }
    }
}

/// The description strace (`-yy`) prints for a call's first argument: `5</path>` → `/path`.
fn fd_target(args: &str) -> Option<String> {
    let start = args.find('<')?;
    let digits = &args[..start];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = &args[start + 1..];
    let end = rest.find(">,").or_else(|| rest.find(">)"))?;
    Some(rest[..end].to_string())
}

/// The return value at the end of a trace line (` = 4096`), if it is a number.
fn result_of(line: &str) -> Option<u64> {
    let (_, result) = line.rsplit_once(" = ")?;
    result.split_whitespace().next()?.parse().ok()
}
