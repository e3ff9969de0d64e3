//! A real relay cluster for the end-to-end cluster tests (issue 15): one PostgreSQL database
//! (of the process's shared [`PgCluster`]), one `nats-server`, one `s3s-fs`, `n` real
//! `cove-server` processes, and a TCP load balancer in front of them.
//!
//! Each node has its own data directory and config file (`--config`): `[store] postgres`,
//! `[bus] nats` with its node name, `[blobs.s3]`, `[secrets]` (files every node shares), the
//! same TLS certificate and key (node 1 creates a self-signed one, which then serves every
//! node: it names `127.0.0.1`, where the nodes and the balancer listen), test limits, and a
//! TURN server on its own UDP port (relaying to loopback peers, as the call tests on one
//! machine need). Nodes keep their TCP and UDP ports across [`Cluster::restart`].
//!
//! The [`Balancer`] stands in for HAProxy: clients use ONE address, as in production; each
//! new TCP connection goes to the next node in turn that accepts it, skipping nodes that
//! refuse (a killed node), so clients whose node died reconnect through it to a live one. It
//! passes bytes through untouched: TLS ends at the node.
//!
//! Everything panics with a message saying what failed (a test fixture), and everything is
//! stopped on drop (the nodes killed, the engines stopped, the database dropped).
//!
//! The nodes run the `cove-server` binary found next to the test binary's directory
//! (`target/<profile>/cove-server`, see [`server_binary`]); `cargo test -p <other package>`
//! does not rebuild it, so run `cargo build -p cove-server` first after changing the relay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engines::{NatsServer, S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};
use crate::postgres::{PgCluster, PgDatabase};

/// The S3 bucket the nodes keep blobs in.
pub const BUCKET: &str = "cove-blobs";

/// Which engines a [`Cluster`] runs besides PostgreSQL (all by default).
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// NATS between the nodes (`[bus]`).
    pub bus: bool,
    /// Blobs in S3 (`[blobs.s3]`); otherwise each node keeps blobs in its data directory.
    pub s3: bool,
    /// A TURN server on each node.
    pub turn: bool,
    /// The `[bus] catch_up_ms` of each node.
    pub catch_up_ms: u64,
    /// The `cove-server` binary ([`server_binary`] when `None`).
    pub binary: Option<PathBuf>,
    /// `RUST_LOG` of the nodes (their stderr goes to `node-<i>.log`, see [`Cluster::log`]).
    pub log: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bus: true,
            s3: true,
            turn: true,
            catch_up_ms: 500,
            binary: None,
            log: "cove_server=info".into(),
        }
    }
}

/// The `cove-server` binary of this workspace: `target/<profile>/cove-server`, beside the
/// `deps/` directory the running test binary is in. Panics, saying how to build it, if it
/// is missing.
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-HASH -> target/<profile>/cove-server
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps");
    let path = dir.join("cove-server");
    assert!(
        path.exists(),
        "{} not found: build it first with `cargo build -p cove-server`",
        path.display()
    );
    path
}

/// One relay node: its config, data directory, ports and process.
struct Node {
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    turn: Option<SocketAddr>,
    child: Option<Child>,
}

/// A running cluster; see the module documentation.
pub struct Cluster {
    // Field order is drop order: the balancer and the nodes first, the engines after.
    balancer: Balancer,
    nodes: Vec<Node>,
    binary: PathBuf,
    log_filter: String,
    nats: Option<NatsServer>,
    s3: Option<S3Server>,
    db: PgDatabase<'static>,
    cert: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes with every engine (PostgreSQL, NATS, S3) and TURN on each.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, ClusterOptions::default())
    }

    /// `n` nodes (at least one) with the engines `options` asks for.
    pub fn start_with(n: usize, options: ClusterOptions) -> Self {
        assert!(n >= 1, "a cluster has at least one node");
        let binary = options.binary.clone().unwrap_or_else(server_binary);
        let dir = tempfile::tempdir().expect("the cluster's directory");
        let db = PgCluster::shared().database();
        let nats = options.bus.then(NatsServer::start);
        let s3 = options.s3.then(S3Server::start);
        if let Some(s3) = &s3 {
            // s3s-fs keeps a bucket as a directory.
            std::fs::create_dir_all(s3.dir().join(BUCKET)).expect("creating the S3 bucket");
        }
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("creating the secrets directory");
        let data1 = dir.path().join("node-1");
        let cert = data1.join("tls").join("cert.pem");
        let key = data1.join("tls").join("key.pem");
        let mut nodes = Vec::with_capacity(n);
        for i in 1..=n {
            let data = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&data).expect("creating a node's data directory");
            let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
            let turn = options
                .turn
                .then(|| SocketAddr::from(([127, 0, 0, 1], free_udp_port())));
            let mut text = format!("listen = \"{addr}\"\ndata = {}\n", toml_path(&data));
            // Node 1 creates the self-signed certificate on its first start; every other
            // node (and node 1 itself on a restart) is given its files.
            if i > 1 {
                text += &format!("cert = {}\nkey = {}\n", toml_path(&cert), toml_path(&key));
            }
            if let Some(turn) = turn {
                text +=
                    &format!("turn_listen = \"{turn}\"\nturn_allow_peers = [\"127.0.0.0/8\"]\n");
            }
            text += &format!("[store]\npostgres = \"{}\"\n", db.url());
            text += LIMITS;
            if let Some(nats) = &nats {
                text += &format!(
                    "[bus]\nnats = \"{}\"\nnode = \"node-{i}\"\ncatch_up_ms = {}\n",
                    nats.url(),
                    options.catch_up_ms
                );
            }
            if let Some(s3) = &s3 {
                text += &format!(
                    "[blobs.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\n\
                     access_key = \"{S3_ACCESS_KEY}\"\nsecret_key = \"{S3_SECRET_KEY}\"\n",
                    s3.endpoint()
                );
            }
            text += &format!(
                "[secrets]\nopaque_key = {}\nturn_secret = {}\n",
                toml_path(&secrets.join("opaque.key")),
                toml_path(&secrets.join("turn.secret"))
            );
            let config = dir.path().join(format!("node-{i}.toml"));
            std::fs::write(&config, text).expect("writing a node's config");
            nodes.push(Node {
                config,
                data,
                log: dir.path().join(format!("node-{i}.log")),
                addr,
                turn,
                child: None,
            });
        }
        let balancer = Balancer::start(nodes.iter().map(|n| n.addr).collect());
        let mut cluster = Cluster {
            balancer,
            nodes,
            binary,
            log_filter: options.log,
            nats,
            s3,
            db,
            cert: cert.clone(),
            dir,
        };
        for i in 0..n {
            cluster.spawn(i);
            if i == 0 {
                // Node 1's own restarts use the certificate it just created.
                let config = &cluster.nodes[0].config;
                let text = std::fs::read_to_string(config).expect("reading node 1's config");
                let head = format!("cert = {}\nkey = {}\n", toml_path(&cert), toml_path(&key));
                std::fs::write(config, head + &text).expect("writing node 1's config");
            }
        }
        cluster
    }

    /// Starts node `i` (0-based) and waits until it prints `listening on`.
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} is already running", i + 1);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("opening a node's log");
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.binary.display()));
        let stdout = child.stdout.take().expect("the node's stdout");
        let mut lines = BufReader::new(stdout).lines();
        let listening = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().to_owned();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    panic!(
                        "node {} exited before listening on {}; its log:\n{log}",
                        i + 1,
                        node.addr
                    );
                }
            }
        };
        assert_eq!(
            listening,
            node.addr.to_string(),
            "node {} listens elsewhere",
            i + 1
        );
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        node.child = Some(child);
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never: it starts with at least one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The WebSocket/HTTPS address of node `i` (0-based).
    pub fn node_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// `wss://ADDR` of node `i`: a client pinned to that node.
    pub fn node_url(&self, i: usize) -> String {
        format!("wss://{}", self.nodes[i].addr)
    }

    /// The TURN address of node `i` (if TURN is on).
    pub fn turn_addr(&self, i: usize) -> Option<SocketAddr> {
        self.nodes[i].turn
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data
    }

    /// Node `i`'s log (its stderr).
    pub fn log(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// Node `i`'s process id, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// The balancer's address.
    pub fn balancer_addr(&self) -> SocketAddr {
        self.balancer.addr
    }

    /// `wss://ADDR` of the balancer: the one URL clients of the cluster use.
    pub fn url(&self) -> String {
        format!("wss://{}", self.balancer.addr)
    }

    /// The certificate every node serves (PEM), for clients to trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A TLS client config trusting the cluster's certificate.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        crate::client_tls_config_from_pem_file(&self.cert).expect("the cluster's certificate")
    }

    /// The PostgreSQL URL of the cluster's database.
    pub fn database_url(&self) -> &str {
        self.db.url()
    }

    /// The NATS server (to stop and start it again); panics without the bus.
    pub fn nats_mut(&mut self) -> &mut NatsServer {
        self.nats.as_mut().expect("this cluster runs without NATS")
    }

    /// The directory `s3s-fs` keeps its buckets in (the bucket is [`BUCKET`] below it);
    /// panics without S3.
    pub fn s3_dir(&self) -> &Path {
        self.s3
            .as_ref()
            .expect("this cluster runs without S3")
            .dir()
    }

    /// The cluster's own directory (node data directories, configs, logs, the secrets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kill -9` of node `i`: it dies at once, flushing nothing; the balancer skips it
    /// (its port refuses connections) until [`Self::restart`].
    pub fn kill9(&mut self, i: usize) {
        let mut child = self.nodes[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", i + 1));
        child.kill().expect("kill -9 of a node");
        child.wait().expect("reaping a killed node");
        // Connections the balancer still holds to it end when their copies see the reset.
    }

    /// Starts node `i` again (same config, ports and data directory) after [`Self::kill9`].
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Connections the balancer has passed on to each node so far (by node index).
    pub fn balanced(&self) -> Vec<usize> {
        self.balancer.balanced()
    }

    /// Connections through the balancer open now, per node (by node index).
    pub fn open_through_balancer(&self) -> Vec<usize> {
        self.balancer.open_now()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.balancer.stop();
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The limits of every node: rate limits raised, as [`crate::test_limits`] does.
const LIMITS: &str = "[limits]
requests_per_second = 100000
request_burst = 100000
max_connections_per_ip = 10000
registrations_per_minute = 100000
registration_burst = 100000
sender_posts_per_minute = 1000000
sender_post_burst = 1000000
sender_bytes_per_minute = 1099511627776
sender_byte_burst = 1099511627776
group_posts_per_minute = 1000000
group_post_burst = 1000000
group_bytes_per_minute = 1099511627776
group_byte_burst = 1099511627776
logins_per_minute_per_address = 100000
login_burst_per_address = 100000
";

/// A path as a TOML string (a literal string: no escapes; the paths here have no `'`).
fn toml_path(path: &Path) -> String {
    let text = path.to_str().expect("a UTF-8 path");
    assert!(!text.contains('\''), "path {text} contains a quote");
    format!("'{text}'")
}

/// A free loopback TCP port (taken from the OS and let go).
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

/// A free loopback UDP port (taken from the OS and let go).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A round-robin TCP load balancer over fixed backends, in threads of its own (it needs no
/// async runtime and outlives none).
pub struct Balancer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Both ends of every connection it carries, to cut them when it stops.
    open: Arc<Mutex<Vec<TcpStream>>>,
    counts: Arc<Vec<AtomicUsize>>,
    /// Connections open now, per backend.
    live: Arc<Vec<AtomicUsize>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    /// Listens on a free loopback port and passes each connection to the next backend in
    /// turn that accepts it (a backend refusing is skipped; none accepting closes the
    /// client's connection).
    pub fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the balancer");
        let addr = listener.local_addr().expect("the balancer's address");
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let zeros = || -> Arc<Vec<AtomicUsize>> {
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect())
        };
        let (counts, live) = (zeros(), zeros());
        let accept = {
            let (stop, open, counts, live) = (
                Arc::clone(&stop),
                Arc::clone(&open),
                Arc::clone(&counts),
                Arc::clone(&live),
            );
            std::thread::spawn(move || {
                let mut next = 0usize;
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let mut chosen = None;
                    for k in 0..backends.len() {
                        let i = (next + k) % backends.len();
                        if let Ok(server) =
                            TcpStream::connect_timeout(&backends[i], Duration::from_secs(5))
                        {
                            chosen = Some((i, server));
                            break;
                        }
                    }
                    let Some((i, server)) = chosen else {
                        // No node accepts: the client sees its connection closed.
                        continue;
                    };
                    next = i + 1;
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    live[i].fetch_add(1, Ordering::SeqCst);
                    let ended = Ended {
                        live: Arc::clone(&live),
                        backend: i,
                        once: Arc::new(AtomicBool::new(false)),
                    };
                    pipe(client, server, &open, ended);
                }
            })
        };
        Balancer {
            addr,
            stop,
            open,
            counts,
            live,
            accept: Some(accept),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections passed on to each backend so far.
    pub fn balanced(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Connections open now, per backend.
    pub fn open_now(&self) -> Vec<usize> {
        self.live.iter().map(|c| c.load(Ordering::SeqCst)).collect()
    }

    /// Stops accepting and cuts every connection it carries.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        if let Ok(open) = self.open.lock() {
            for stream in open.iter() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts a carried connection out of its backend's live count once, when the first of its
/// two copying threads ends.
#[derive(Clone)]
struct Ended {
    live: Arc<Vec<AtomicUsize>>,
    backend: usize,
    once: Arc<AtomicBool>,
}

impl Ended {
    fn mark(&self) {
        if !self.once.swap(true, Ordering::SeqCst) {
            self.live[self.backend].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Copies bytes both ways between `client` and `server` in two threads. When one side ends
/// (EOF or an error, e.g. a killed node's reset), both connections are shut down, so the
/// other side sees the connection end too.
fn pipe(client: TcpStream, server: TcpStream, open: &Arc<Mutex<Vec<TcpStream>>>, ended: Ended) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    if let Ok(mut open) = open.lock() {
        // Forget connections that already ended (their peer address is gone).
        open.retain(|s| s.peer_addr().is_ok());
        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
            open.push(c);
            open.push(s);
        }
    }
    let ended2 = ended.clone();
    std::thread::spawn(move || copy_then_cut(client, server, &ended));
    std::thread::spawn(move || copy_then_cut(server2, client2, &ended2));
}

fn copy_then_cut(mut from: TcpStream, mut to: TcpStream, ended: &Ended) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    ended.mark();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The balancer passes bytes both ways, takes backends in turn, skips one that refuses,
    /// and a client's connection ends when its backend's does.
    #[test]
    fn balancer_round_robins_and_skips_refusing_backends() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        // A port nobody listens on (bound and let go).
        let dead = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let backends = vec![a.local_addr().unwrap(), dead, b.local_addr().unwrap()];
        let balancer = Balancer::start(backends);
        let echo = |listener: TcpListener, tag: u8| {
            std::thread::spawn(move || {
                for stream in listener.incoming().take(2) {
                    let mut stream = stream.unwrap();
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).unwrap();
                    stream.write_all(&[byte[0], tag]).unwrap();
                    // Then close: the client must see the end.
                }
            })
        };
        let (ta, tb) = (echo(a, b'A'), echo(b, b'B'));
        let mut seen = Vec::new();
        for k in 0..4u8 {
            let mut c = TcpStream::connect(balancer.addr()).unwrap();
            c.write_all(&[k]).unwrap();
            let mut reply = Vec::new();
            c.read_to_end(&mut reply).unwrap();
            assert_eq!(reply[0], k);
            seen.push(reply[1]);
        }
        assert_eq!(seen, b"ABAB");
        assert_eq!(balancer.balanced(), vec![2, 0, 2]);
        ta.join().unwrap();
        tb.join().unwrap();
        // Every connection ended (the backends closed them), so none is counted open.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while balancer.open_now() != vec![0, 0, 0] {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                balancer.open_now()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
