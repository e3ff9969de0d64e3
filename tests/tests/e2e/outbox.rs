//! Exactly-once sending through the shell: one relay log entry per message sent.

use cove::{Device, Sent};
use cove_wire::{EntryKind, Reply, Request, Seq};

use crate::support::*;

/// The application entries of `group` in the relay's log, read by `reader` (a member) over
/// its own authenticated connection.
async fn application_entries(reader: &Device, group: cove::GroupId) -> Vec<cove_wire::GroupEntry> {
    let mut after = Seq(0);
    let mut out = Vec::new();
    loop {
        let reply = reader
            .probe(Request::Fetch {
                group,
                after,
                limit: cove_wire::limits::MAX_FETCH_ENTRIES,
            })
            .await
            .unwrap();
        let Ok(Reply::Entries { entries }) = reply else {
            panic!("fetch refused: {reply:?}");
        };
        let Some(last) = entries.last() else {
            return out;
        };
        after = last.seq;
        out.extend(
            entries
                .into_iter()
                .filter(|e| e.kind == EntryKind::Application),
        );
    }
}

/// Opens the device of `home`, waiting (up to [`WAIT`]) while its lock is held: a child
/// process another test forks in this process holds a copy of every open file, the home's
/// lock file included, until it execs.
async fn open_when_free(home: &cove::config::Home) -> Device {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Device::open(home).await {
            Ok(device) => return device,
            Err(cove::DeviceError::Config(cove::config::ConfigError::Busy(_)))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("opening {}: {e}", home.dir().display()),
        }
    }
}

/// Issue 8: 100 messages sent the way `cove send` sends them (a fresh device session per
/// message: connect, send as soon as the connection is up, close) make exactly 100 entries
/// in the relay's log, and the other member receives each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sends_from_fresh_sessions_make_exactly_a_hundred_log_entries() {
    const N: usize = 100;
    let net = Net::sqlite().await;
    let alice = net.user("alice").await;
    let mut bob = net.user("bob").await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    alice.close().await;

    let sent: Vec<String> = (0..N).map(|i| format!("message {i}")).collect();
    for text in &sent {
        let device = open_when_free(&net.home("alice")).await;
        let outcome = device.send_text("g", text).await.unwrap();
        device.close().await;
        assert_eq!(outcome, Sent::Delivered, "{text}");
    }

    let group = group_id(&bob, "g").await;
    let entries = application_entries(&bob, group).await;
    assert_eq!(entries.len(), N, "one log entry per message");
    let got = messages(&mut bob, N).await;
    assert_eq!(texts(&got), sent);
    assert_unique("bob", &got);
}

/// What the test proxy does with the connections it accepts from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Forwards everything both ways.
    Nothing,
    /// Once the client has sent more than [`CUT_AFTER`] bytes (only a post of a large
    /// message does that), forwards nothing more from the client: the post never arrives.
    ClientAfterPost,
    /// Once the client has sent more than [`CUT_AFTER`] bytes, forwards nothing more from
    /// the relay: the post arrives and is stored, its `Posted` reply never comes.
    RelayAfterPost,
}

/// Bytes a client sends on a connection before its large post (TLS and WebSocket
/// handshakes, authentication, a few small requests) stay well below this.
const CUT_AFTER: usize = 16 * 1024;

/// A TCP proxy in front of the relay that can cut one direction of a connection right
/// after the client's large post (the bytes are TLS: it can only count them).
struct Proxy {
    addr: std::net::SocketAddr,
    mode: std::sync::Arc<std::sync::Mutex<Cut>>,
    /// Signalled when a connection has been cut.
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn start(relay: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Cut::Nothing));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (mode2, cut2) = (Arc::clone(&mode), Arc::clone(&cut));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(relay).await else {
                    continue;
                };
                let this = *mode2.lock().unwrap();
                let cut = Arc::clone(&cut2);
                let relay_cut = Arc::new(AtomicBool::new(false));
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let relay_cut2 = Arc::clone(&relay_cut);
                tokio::spawn(async move {
                    let mut sent = 0usize;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let before = sent;
                        sent += n;
                        if this != Cut::Nothing && sent > CUT_AFTER {
                            if this == Cut::ClientAfterPost {
                                // Forward up to the limit: never the whole post.
                                let keep = CUT_AFTER.saturating_sub(before);
                                let _ = sw.write_all(&buf[..keep.min(n)]).await;
                                cut.notify_one();
                                // Swallow the rest until the client goes away.
                                while let Ok(n) = cr.read(&mut buf).await {
                                    if n == 0 {
                                        return;
                                    }
                                }
                                return;
                            }
                            if !relay_cut2.swap(true, Ordering::SeqCst) {
                                cut.notify_one();
                            }
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if relay_cut.load(Ordering::SeqCst) {
                            continue; // held back for good
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Proxy { addr, mode, cut }
    }

    fn set(&self, mode: Cut) {
        *self.mode.lock().unwrap() = mode;
    }

    fn server(&self) -> String {
        format!("wss://{}", self.addr)
    }
}

/// Runs the `cove` binary for `home` with `args` and returns its output.
fn cove(home: &cove::config::Home, args: &[&str]) -> std::process::Output {
    std::process::Command::new(workspace_binary("cove-cli", "cove"))
        .arg("--home")
        .arg(home.dir())
        .args(args)
        .output()
        .unwrap()
}

/// A relay, alice (home "alice") connecting through a [`Proxy`], bob connecting directly,
/// and their group "g" (returned with bob's device, open).
async fn alice_behind_a_proxy_and_bob() -> (Net, Proxy, Device, cove::GroupId) {
    let net = Net::sqlite().await;
    let relay_addr = net.server.strip_prefix("wss://").unwrap().parse().unwrap();
    let proxy = Proxy::start(relay_addr).await;
    let alice = register(&net.home("alice"), &proxy.server(), "alice", &net.ca).await;
    let mut bob = net.user("bob").await;
    alice.create_group("g").await.unwrap();
    alice.add_users("g", &names(&["bob"])).await.unwrap();
    joined(&mut bob).await;
    alice.close().await;
    let group = group_id(&bob, "g").await;
    (net, proxy, bob, group)
}

/// Issue 8: when the relay stores a post but its reply never comes, `cove send` does not
/// fail: it says the message is queued and exits 0 (after its 30 s timeout). The next
/// command (`cove sync`) completes it from its copy in the backlog without posting it again:
/// the relay's log holds one entry for it, and bob receives it once (the next thing he
/// receives is a sentinel sent afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cove_send_whose_reply_never_comes_says_queued_and_the_message_goes_out_once() {
    let (net, proxy, mut bob, group) = alice_behind_a_proxy_and_bob().await;
    let home = net.home("alice");
    let text = format!("unanswered {}", "x".repeat(48 * 1024));
    proxy.set(Cut::RelayAfterPost);
    let send = cove(&home, &["send", "g", &text]);
    let stdout = String::from_utf8_lossy(&send.stdout).into_owned();
    assert!(send.status.success(), "{:?} {stdout}", send.status);
    assert!(stdout.starts_with("queued for g: "), "{stdout}");
    let got = messages(&mut bob, 1).await;
    assert_eq!(
        texts(&got),
        std::slice::from_ref(&text),
        "the relay stored it"
    );
    proxy.set(Cut::Nothing);

    let sync = cove(&home, &["sync"]);
    assert!(sync.status.success(), "{sync:?}");
    assert_eq!(application_entries(&bob, group).await.len(), 1);
    let sentinel = cove(&home, &["send", "g", "sentinel"]);
    assert!(sentinel.status.success(), "{sentinel:?}");
    assert_eq!(String::from_utf8_lossy(&sentinel.stdout), "sent to g\n");
    let got = messages(&mut bob, 1).await;
    assert_eq!(texts(&got), ["sentinel"]);
    assert_eq!(application_entries(&bob, group).await.len(), 2);
    bob.close().await;
}

/// Issue 16: a `cove send` process killed (SIGKILL) with its message unacknowledged, in
/// both cases the kill can leave it, sends it exactly once after restart (`cove sync`):
/// - the post never reached the relay: it is posted at the next connection;
/// - the relay stored it but the reply never came: its copy in the backlog completes it
///   and it is not posted again.
///
/// Exactly once: the relay's log has one entry per message, and bob receives each once,
/// before a sentinel sent afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cove_send_sends_its_message_exactly_once_after_restart() {
    let (net, proxy, mut bob, group) = alice_behind_a_proxy_and_bob().await;
    let home = net.home("alice");

    let mut expected = Vec::new();
    for (i, mode) in [Cut::ClientAfterPost, Cut::RelayAfterPost]
        .into_iter()
        .enumerate()
    {
        // A large message, so the proxy can tell its post from the handshakes.
        let text = format!("{mode:?} {i} {}", "x".repeat(48 * 1024));
        proxy.set(mode);
        let mut send = std::process::Command::new(workspace_binary("cove-cli", "cove"))
            .arg("--home")
            .arg(home.dir())
            .args(["send", "g", &text])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::timeout(WAIT, proxy.cut.notified())
            .await
            .expect("the post was not cut");
        if mode == Cut::RelayAfterPost {
            // Stored by the relay (bob receives it); the reply is held by the proxy.
            let got = messages(&mut bob, 1).await;
            assert_eq!(texts(&got), std::slice::from_ref(&text));
        }
        send.kill().unwrap(); // SIGKILL, while it waits for the reply
        let status = send.wait().unwrap();
        assert!(!status.success(), "killed before it could finish");
        proxy.set(Cut::Nothing);

        let sync = cove(&home, &["sync"]);
        assert!(sync.status.success(), "{sync:?}");
        if mode == Cut::ClientAfterPost {
            // Posted by the restarted client.
            let got = messages(&mut bob, 1).await;
            assert_eq!(texts(&got), std::slice::from_ref(&text));
        }
        expected.push(text);
        assert_eq!(
            application_entries(&bob, group).await.len(),
            expected.len(),
            "one log entry per message after {mode:?}"
        );
    }

    let sentinel = cove(&home, &["send", "g", "sentinel"]);
    assert!(sentinel.status.success(), "{sentinel:?}");
    expected.push("sentinel".to_string());
    // Nothing more reached bob before the sentinel: no second copy of either message.
    let got = messages(&mut bob, 1).await;
    assert_eq!(texts(&got), ["sentinel"]);
    assert_eq!(application_entries(&bob, group).await.len(), 3);
    let history = cove(&home, &["history", "g", "--json"]);
    assert!(history.status.success(), "{history:?}");
    let shown: Vec<String> = String::from_utf8(history.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(shown, expected, "alice's history: each once, in order");
    bob.close().await;
}
