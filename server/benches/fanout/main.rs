//! Relay fan-out benchmark (issue 2, item 5; goals R1-R3 of `performance.md`).
//!
//! One sender posts to one group of N receiving devices over loopback TLS. The same load
//! generator drives, back to back in one run, the bare tokio-tungstenite broadcast server
//! (`bare.rs`, the "physical limit") and Cove's relay (durable SQLite storage in a temp dir,
//! devices registered and members of one group, receivers acking as `FANOUT_ACK` says).
//!
//! For each N and payload size, and each server:
//! 1. closed loop: the sender keeps `window` messages in flight, a message leaving the window
//!    when all N receivers have it; deliveries/s is the saturation throughput;
//! 2. open loop at `load` (default 10%) of the *bare* server's saturation rate, counted in
//!    deliveries (posts/s = load × bare deliveries/s ÷ N): post-to-delivery p50/p99.
//!
//! Server threads are pinned to CPU 0 and the load generator to CPU 1 (the machine has two).
//!
//! ```text
//! cargo bench -p cove-server --bench fanout
//! FANOUT_N=1000 FANOUT_SIZES=256 FANOUT_SECS=10 FANOUT_REPS=3 cargo bench -p cove-server --bench fanout
//! ```
//!
//! Settings (environment): `FANOUT_N` (list, default `100,1000`), `FANOUT_SIZES` (payload
//! bytes, default `256,4096`), `FANOUT_SECS` (closed-loop measurement, default 4),
//! `FANOUT_OPEN_SECS` (open loop, default 4), `FANOUT_WARMUP_SECS` (default 1),
//! `FANOUT_WINDOW` (default 64 at N >= 1000, 64,000 ÷ N below), `FANOUT_LOAD` (default 0.1), `FANOUT_ACK` (`count`, the default, as `cove-core` acks: one cumulative
//! ack per stream at the end of a read burst once 64 entries are unacked and 1-2 s passed
//! since the count last sent acks, else when the device is idle 250-500 ms or 1-2 s after
//! the first, group acks as `QuietAck`s; `burst`:
//! one per read burst, as `cove-core` acked before; `answered`: an `Ack` answered with
//! `Acked` every `FANOUT_ACK_EVERY` group entries, as it acked before that; `quiet`: the same
//! as `QuietAck`s), `FANOUT_ACK_EVERY` (default 64; 0 = receivers never ack, a diagnostic),
//! `FANOUT_REPS` (default 1), `FANOUT_SERVERS` (`bare,relay`), `FANOUT_STORE` (`sqlite` or
//! `memory`), `FANOUT_PIN` (`1`; `0` leaves scheduling to the OS), `FANOUT_BARE_ACK_EVERY`
//! (default 0; a diagnostic: bare receivers send a 40-byte message every that many frames,
//! which the bare server reads and drops, to price reading acks apart from the relay).
//!
//! Scale-out (issue 15): `FANOUT_CLUSTER=3` (or `-- --cluster 3`) makes the default servers
//! `bare,relay,postgres,cluster,spread`: besides the bare server and one node on SQLite,
//! one node on PostgreSQL (`postgres`) and three nodes (each on a runtime of its own) on
//! one PostgreSQL database and one `nats-server`, the receivers spread round-robin over the
//! nodes, with posts through node 1 (`cluster`) or round-robin through a sender on every
//! node (`spread`), at the same load. PostgreSQL and nats-server run as processes of their
//! own, pinned to CPU 0 with the relays (so every server-side part shares one core, as the
//! single node has); their CPU time is read from `/proc/<pid>/stat`, PostgreSQL's commits
//! and rows written from `pg_stat_database`, NATS messages from `/varz`. `FANOUT_IDLE=2000`
//! measures memory per idle authenticated connection instead (see `idle.rs`).

mod bare;
mod engines;
mod idle;
mod load;
mod relay;
mod stats;

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::engines::{EngineSnapshot, Engines, PgStats};
use crate::load::Sender;
use crate::relay::Backend;
use crate::stats::Tracker;

fn main() -> Result<()> {
    if let Ok(spec) = std::env::var(idle::CLIENT_ENV) {
        return idle::client(&spec);
    }
    let cfg = Config::from_env()?;
    if let Ok(spec) = std::env::var("FANOUT_LOG") {
        // The relay's log on stderr (e.g. `FANOUT_LOG=warn`), to see why posts fail.
        tracing_subscriber::fmt()
            .with_env_filter(cove_server::log_filter(&spec))
            .with_writer(std::io::stderr)
            .init();
    }
    if cfg.pin {
        pin(1);
    }
    eprintln!("fanout: {cfg:?}");
    eprintln!("fanout: load average {}", load_average());
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .thread_name("fanout-load")
        .on_thread_start(move || {
            if cfg.pin {
                pin(1);
            }
        })
        .enable_all()
        .build()?;
    let cfg2 = cfg.clone();
    if let Some(count) = cfg.idle {
        client_rt.block_on(async move { tokio::spawn(idle::run(cfg2, count)).await })??;
        client_rt.shutdown_timeout(Duration::from_secs(1));
        return Ok(());
    }
    let rows = client_rt.block_on(async move { tokio::spawn(run(cfg2)).await })??;
    println!("{}", report(&cfg, &rows));
    client_rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The benchmark settings.
#[derive(Clone, Debug)]
struct Config {
    ns: Vec<usize>,
    sizes: Vec<usize>,
    secs: f64,
    open_secs: f64,
    warmup_secs: f64,
    /// Messages in flight in the closed loop; `None`: 64 at N >= 1000, scaled up at smaller
    /// N so that 64,000 deliveries are in flight (else the loop measures round trips).
    window: Option<u64>,
    load: f64,
    /// How receivers ack (`FANOUT_ACK`, `FANOUT_ACK_EVERY`).
    acks: load::AckMode,
    /// Bare receivers send a small message every this many frames (`FANOUT_BARE_ACK_EVERY`;
    /// 0: never).
    bare_ack_every: u64,
    reps: usize,
    bare: bool,
    relay: bool,
    sqlite: bool,
    /// One node on PostgreSQL (`postgres` in `FANOUT_SERVERS`).
    postgres: bool,
    /// `cluster` nodes on PostgreSQL + NATS, posts through node 1 (`cluster`).
    cluster_one: bool,
    /// The same nodes, posts spread over all of them (`spread`).
    cluster_spread: bool,
    /// Nodes of the cluster runs (`FANOUT_CLUSTER` or `--cluster`, default 3).
    cluster: usize,
    /// Idle connections to measure memory with instead of the load (`FANOUT_IDLE`).
    idle: Option<usize>,
    pin: bool,
}

impl Config {
    fn window(&self, n: usize) -> u64 {
        self.window
            .unwrap_or_else(|| (64_000 / n.max(1) as u64).max(64))
    }

    fn from_env() -> Result<Self> {
        // `-- --cluster K` on the command line is `FANOUT_CLUSTER=K`.
        let args: Vec<String> = std::env::args().collect();
        let arg_cluster = args
            .windows(2)
            .find(|w| w[0] == "--cluster")
            .map(|w| w[1].clone());
        let cluster_env = arg_cluster.or_else(|| std::env::var("FANOUT_CLUSTER").ok());
        let cluster = match &cluster_env {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| anyhow!("FANOUT_CLUSTER={v:?}"))?,
            None => 3,
        };
        let default_servers = if cluster_env.is_some() {
            "bare,relay,postgres,cluster,spread"
        } else {
            "bare,relay"
        };
        let servers = env_str("FANOUT_SERVERS", default_servers);
        let has = |name: &str| servers.split(',').any(|s| s.trim() == name);
        let cfg = Config {
            ns: env_list("FANOUT_N", "100,1000")?,
            sizes: env_list("FANOUT_SIZES", "256,4096")?,
            secs: env_parse("FANOUT_SECS", 4.0)?,
            open_secs: env_parse("FANOUT_OPEN_SECS", 4.0)?,
            warmup_secs: env_parse("FANOUT_WARMUP_SECS", 1.0)?,
            window: match std::env::var("FANOUT_WINDOW") {
                Ok(v) => Some(
                    v.trim()
                        .parse()
                        .map_err(|_| anyhow!("FANOUT_WINDOW={v:?}"))?,
                ),
                Err(_) => None,
            },
            load: env_parse("FANOUT_LOAD", 0.1)?,
            acks: ack_mode(
                &env_str("FANOUT_ACK", "count"),
                env_parse("FANOUT_ACK_EVERY", 64)?,
            )?,
            bare_ack_every: env_parse("FANOUT_BARE_ACK_EVERY", 0)?,
            reps: env_parse("FANOUT_REPS", 1)?,
            bare: has("bare"),
            relay: has("relay"),
            sqlite: env_str("FANOUT_STORE", "sqlite") != "memory",
            postgres: has("postgres"),
            cluster_one: has("cluster"),
            cluster_spread: has("spread"),
            cluster,
            idle: match std::env::var("FANOUT_IDLE") {
                Ok(v) => Some(v.trim().parse().map_err(|_| anyhow!("FANOUT_IDLE={v:?}"))?),
                Err(_) => None,
            },
            pin: env_str("FANOUT_PIN", "1") != "0",
        };
        if cfg.ns.contains(&0) || cfg.window == Some(0) || cfg.cluster == 0 {
            return Err(anyhow!(
                "FANOUT_N, FANOUT_WINDOW and FANOUT_CLUSTER must be positive"
            ));
        }
        if cfg.sizes.iter().any(|&s| s < stats::HEADER) {
            return Err(anyhow!(
                "payload sizes must be at least {} bytes",
                stats::HEADER
            ));
        }
        Ok(cfg)
    }
}

/// The receivers' ack mode: `FANOUT_ACK` is `count` (as `cove-core`), `burst` (as it acked
/// before), `answered` or `quiet` (cumulative every `every` group entries, with `Ack` or
/// `QuietAck`); `FANOUT_ACK_EVERY=0` means never.
fn ack_mode(mode: &str, every: u64) -> Result<load::AckMode> {
    Ok(match (mode, every) {
        (_, 0) => load::AckMode::Never,
        ("burst", _) => load::AckMode::Burst,
        ("count", _) => load::AckMode::Count,
        ("answered", n) => load::AckMode::Every { n, quiet: false },
        ("quiet", n) => load::AckMode::Every { n, quiet: true },
        (other, _) => {
            return Err(anyhow!(
                "FANOUT_ACK={other:?}: use count, burst, answered or quiet"
            ));
        }
    })
}

fn env_str(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn env_parse<T: FromStr>(key: &str, default: T) -> Result<T> {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{key}={v:?} is not valid")),
        Err(_) => Ok(default),
    }
}

fn env_list(key: &str, default: &str) -> Result<Vec<usize>> {
    env_str(key, default)
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| anyhow!("{key}: {s:?} is not a number"))
        })
        .collect()
}

/// Pins the calling thread to CPU `core` (best effort). The id is absolute:
/// `core_affinity::get_core_ids` lists only the CPUs the calling thread may already run on,
/// so after `pin(1)` its `nth(0)` was CPU 1 again, and every thread, server ones included,
/// ran on CPU 1 (until session 7).
fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Which server a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Bare,
    /// One node on SQLite (or memory).
    Relay,
    /// One node on PostgreSQL.
    Postgres,
    /// The cluster, posts through node 1.
    Cluster,
    /// The cluster, posts spread over every node.
    Spread,
}

impl Server {
    fn name(self, cfg: &Config) -> String {
        match self {
            Server::Bare => "bare".into(),
            Server::Relay if cfg.sqlite => "1 node SQLite".into(),
            Server::Relay => "1 node memory".into(),
            Server::Postgres => "1 node PostgreSQL".into(),
            Server::Cluster => format!("{} nodes PG+NATS, posts via node 1", cfg.cluster),
            Server::Spread => format!("{} nodes PG+NATS, posts via all", cfg.cluster),
        }
    }
}

/// One (server, N, size, repetition) measurement.
#[derive(Clone, Debug)]
struct Row {
    server: Server,
    n: usize,
    size: usize,
    rep: usize,
    closed: Measured,
    /// Posts per second of the open loop.
    open_rate: f64,
    open: Measured,
}

/// What one phase measured.
#[derive(Clone, Debug, Default)]
struct Measured {
    deliveries: u64,
    secs: f64,
    p50_ns: u64,
    p99_ns: u64,
    server_cpu: Duration,
    load_cpu: Duration,
    max_lag: Duration,
    /// Messages posted in the phase.
    posts: u64,
    /// Ack requests and read bursts of the receivers in the phase.
    acks: u64,
    bursts: u64,
    /// What PostgreSQL and NATS did meanwhile (PostgreSQL-backed targets).
    engines: Option<EngineSnapshot>,
}

impl Measured {
    fn per_sec(&self) -> f64 {
        self.deliveries as f64 / self.secs.max(1e-9)
    }
    fn server_us_per_delivery(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.deliveries.max(1) as f64)
    }
    fn server_util(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.secs.max(1e-9)
    }
    fn load_util(&self) -> f64 {
        self.load_cpu.as_secs_f64() / self.secs.max(1e-9)
    }
    fn per_delivery_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / (self.deliveries.max(1) as f64)
    }
    /// Server process + PostgreSQL + NATS, µs per delivery.
    fn total_us_per_delivery(&self) -> f64 {
        let e = self.engines.unwrap_or_default();
        self.per_delivery_us(self.server_cpu + e.pg_cpu + e.nats_cpu)
    }
    fn per_post(&self, v: u64) -> f64 {
        v as f64 / self.posts.max(1) as f64
    }
}

/// A server under test with its connected load generator.
struct Target {
    sender: Sender,
    tracker: Arc<Tracker>,
}

async fn run(cfg: Config) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let engines = if cfg.postgres || cfg.cluster_one || cfg.cluster_spread {
        eprintln!("fanout: starting PostgreSQL and nats-server");
        Some(Engines::start(cfg.pin)?)
    } else {
        None
    };
    for &n in &cfg.ns {
        // A fresh server runtime per N: dropping it ends every server task of that round.
        let server_rt = server_runtime(cfg.pin, "fanout-server")?;
        let mut bare = None;
        if cfg.bare {
            eprintln!("fanout: N={n}: starting the bare server and {n} receivers");
            bare = Some(start_bare(&server_rt, n, cfg.bare_ack_every).await?);
        }
        let mut relay = None;
        if cfg.relay {
            eprintln!("fanout: N={n}: starting the relay, registering {n} devices");
            let started = std::time::Instant::now();
            let backend = Backend::Single { sqlite: cfg.sqlite };
            relay = Some(relay::start(&server_rt, n, &cfg, &backend).await?);
            eprintln!(
                "fanout: relay ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        // The PostgreSQL-backed targets, each on a database of its own.
        let mut pg = None;
        let mut cluster = None;
        if let Some(e) = &engines {
            if cfg.postgres {
                let db = e.database();
                let stats = PgStats::connect(db.url())?;
                eprintln!("fanout: N={n}: starting one relay on PostgreSQL");
                let backend = Backend::Postgres {
                    url: db.url().to_owned(),
                };
                let rt = server_runtime(cfg.pin, "fanout-pg")?;
                let t = relay::start(&rt, n, &cfg, &backend).await?;
                pg = Some((t, stats, db, rt));
            }
            if cfg.cluster_one || cfg.cluster_spread {
                let db = e.database();
                let stats = PgStats::connect(db.url())?;
                eprintln!(
                    "fanout: N={n}: starting {} relays on PostgreSQL + NATS",
                    cfg.cluster
                );
                let backend = Backend::Cluster {
                    nodes: cfg.cluster,
                    url: db.url().to_owned(),
                    nats: e.nats_url(),
                };
                let rt = server_runtime(cfg.pin, "fanout-node0")?;
                let t = relay::start(&rt, n, &cfg, &backend).await?;
                cluster = Some((t, stats, db, rt));
            }
        }
        for rep in 0..cfg.reps {
            for &size in &cfg.sizes {
                let mut bare_rate = None;
                let record = |row: Row, rows: &mut Vec<Row>| {
                    eprintln!("{}", row_line(&cfg, &row));
                    rows.push(row);
                };
                if let Some(t) = bare.as_mut() {
                    let row = measure(&cfg, Server::Bare, t, n, size, rep, None, None).await?;
                    bare_rate = Some(row.open_rate);
                    record(row, &mut rows);
                }
                if let Some(r) = relay.as_mut() {
                    let row = measure(
                        &cfg,
                        Server::Relay,
                        &mut r.target,
                        n,
                        size,
                        rep,
                        bare_rate,
                        None,
                    )
                    .await?;
                    record(row, &mut rows);
                }
                if let (Some((t, stats, _, _)), Some(e)) = (pg.as_mut(), engines.as_ref()) {
                    let probe = Some((e, &*stats));
                    let row = measure(
                        &cfg,
                        Server::Postgres,
                        &mut t.target,
                        n,
                        size,
                        rep,
                        bare_rate,
                        probe,
                    )
                    .await?;
                    record(row, &mut rows);
                }
                if let (Some((t, stats, _, _)), Some(e)) = (cluster.as_mut(), engines.as_ref()) {
                    let probe = Some((e, &*stats));
                    let mut variants = Vec::new();
                    if cfg.cluster_one {
                        variants.push(Server::Cluster);
                    }
                    if cfg.cluster_spread {
                        variants.push(Server::Spread);
                    }
                    // Alternate the order of the two variants from one repetition to the next.
                    if rep % 2 == 1 {
                        variants.reverse();
                    }
                    for server in variants {
                        t.target.sender.set_active(if server == Server::Spread {
                            cfg.cluster
                        } else {
                            1
                        });
                        let row =
                            measure(&cfg, server, &mut t.target, n, size, rep, bare_rate, probe)
                                .await?;
                        record(row, &mut rows);
                    }
                }
            }
        }
        if let Some(r) = relay {
            r.stop().await;
        }
        for (t, _stats, db, rt) in [pg, cluster].into_iter().flatten() {
            t.stop().await;
            drop(rt);
            drop(db);
        }
        drop(bare);
        drop(server_rt);
    }
    Ok(rows)
}

/// A server runtime: one worker, its threads named `name` and pinned to CPU 0 (with every
/// thread they create) when `pin_threads`.
fn server_runtime(pin_threads: bool, name: &str) -> Result<ServerRt> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || {
            if pin_threads {
                pin(0);
            }
        })
        .enable_all()
        .build()?;
    Ok(ServerRt(Some(rt)))
}

/// A server runtime, shut down in the background when dropped (also on an error path, in
/// the load runtime's async context, where dropping a runtime would panic).
struct ServerRt(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for ServerRt {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &tokio::runtime::Runtime {
        // Only `drop` takes it out.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for ServerRt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and a rustls server config serving it (ring).
fn bare_tls() -> Result<(Arc<rustls::ServerConfig>, CertificateDer<'static>)> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    Ok((Arc::new(cfg), cert))
}

async fn start_bare(rt: &tokio::runtime::Runtime, n: usize, ack_every: u64) -> Result<Target> {
    let (server_tls, cert) = bare_tls()?;
    // Spawned on the server runtime so every server thread is created there (and pinned).
    let addr = rt.spawn(bare::start(server_tls)).await??;
    let tls = load::client_tls(cert)?;
    let tracker = Arc::new(Tracker::new(u32::try_from(n)?));
    load::bare_receivers(n, addr, tls.clone(), tracker.clone(), ack_every).await?;
    let sender = load::bare_sender(addr, &tls).await?;
    Ok(Target { sender, tracker })
}

/// Runs the closed and the open loop against one server.
// The measured point (server, N, size, repetition) and its context, spelled out.
#[allow(clippy::too_many_arguments)]
async fn measure(
    cfg: &Config,
    server: Server,
    t: &mut Target,
    n: usize,
    size: usize,
    rep: usize,
    bare_open_rate: Option<f64>,
    probe: Option<(&Engines, &PgStats)>,
) -> Result<Row> {
    let tracker = t.tracker.clone();
    let drain = Duration::from_secs(30);
    // Closed loop: warm up, then measure.
    t.sender
        .closed_loop(
            &tracker,
            size,
            cfg.window(n),
            Duration::from_secs_f64(cfg.warmup_secs),
        )
        .await
        .with_context(|| format!("{server:?} warm-up"))?;
    let sent0 = t.sender.sent;
    let closed = phase(&tracker, probe, async {
        let r = t
            .sender
            .closed_loop(
                &tracker,
                size,
                cfg.window(n),
                Duration::from_secs_f64(cfg.secs),
            )
            .await?;
        Ok((r.elapsed, r.max_lag))
    })
    .await
    .with_context(|| format!("{server:?} closed loop"))?;
    let mut closed = closed;
    closed.posts = t.sender.sent - sent0;
    if !tracker.drain(t.sender.sent, drain).await {
        return Err(anyhow!(
            "{server:?}: deliveries stalled after the closed loop: {} of {} messages complete; {} posts acknowledged, {} refused (last error {:?}), {} bad frames, {} repeated entries",
            tracker.done.load(std::sync::atomic::Ordering::Acquire),
            t.sender.sent,
            t.sender.posted(),
            t.sender.refused(),
            t.sender.last_error(),
            tracker
                .bad_frames
                .load(std::sync::atomic::Ordering::Relaxed),
            tracker.repeated.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
    // Open loop at `load` of the bare server's saturation (the relay reuses the bare rate).
    let open_rate = bare_open_rate
        .unwrap_or(cfg.load * closed.per_sec() / n as f64)
        .max(1.0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent1 = t.sender.sent;
    let open = phase(&tracker, probe, async {
        let r = t
            .sender
            .open_loop(
                &tracker,
                size,
                open_rate,
                Duration::from_secs_f64(cfg.open_secs),
            )
            .await?;
        Ok((r.elapsed, r.max_lag))
    })
    .await
    .with_context(|| format!("{server:?} open loop"))?;
    let mut open = open;
    open.posts = t.sender.sent - sent1;
    if !tracker.drain(t.sender.sent, drain).await {
        return Err(anyhow!(
            "{server:?}: deliveries stalled after the open loop: {} of {} messages complete; {} posts acknowledged, {} refused (last error {:?}), {} bad frames, {} repeated entries",
            tracker.done.load(std::sync::atomic::Ordering::Acquire),
            t.sender.sent,
            t.sender.posted(),
            t.sender.refused(),
            t.sender.last_error(),
            tracker
                .bad_frames
                .load(std::sync::atomic::Ordering::Relaxed),
            tracker.repeated.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
    let bad = tracker
        .bad_frames
        .load(std::sync::atomic::Ordering::Relaxed);
    let refused = t.sender.refused();
    let posted = t.sender.posted();
    if server != Server::Bare && posted + refused < t.sender.sent {
        eprintln!(
            "fanout: note: {} of {} posts acknowledged as durable so far",
            posted, t.sender.sent
        );
    }
    let repeated = tracker.repeated.load(std::sync::atomic::Ordering::Relaxed);
    if repeated > 0 {
        eprintln!(
            "fanout: WARNING {server:?}: {repeated} group entries delivered again or out of order so far (not counted as deliveries)"
        );
    }
    if bad > 0 || refused > 0 {
        let last = t.sender.last_error();
        eprintln!("fanout: WARNING {server:?}: {bad} bad frames, {refused} refused posts {last:?}");
    }
    Ok(Row {
        server,
        n,
        size,
        rep,
        closed,
        open_rate,
        open,
    })
}

/// Runs one recorded phase and collects its numbers.
async fn phase<F>(tracker: &Tracker, probe: Option<(&Engines, &PgStats)>, f: F) -> Result<Measured>
where
    F: std::future::Future<Output = Result<(Duration, Duration)>>,
{
    let e0 = match probe {
        Some((e, db)) => Some(e.snapshot(db)?),
        None => None,
    };
    let (s0, l0) = stats::cpu_times();
    let acks0 = tracker.acks.load(std::sync::atomic::Ordering::Relaxed);
    let bursts0 = tracker.bursts.load(std::sync::atomic::Ordering::Relaxed);
    tracker.start_recording();
    let (elapsed, max_lag) = f.await?;
    // Deliveries still in flight at the end belong to this phase's latency but not to its
    // throughput window; give them a moment to land in the histogram.
    let deliveries = tracker
        .deliveries
        .load(std::sync::atomic::Ordering::Relaxed);
    let (s1, l1) = stats::cpu_times();
    let acks = tracker.acks.load(std::sync::atomic::Ordering::Relaxed) - acks0;
    let bursts = tracker.bursts.load(std::sync::atomic::Ordering::Relaxed) - bursts0;
    let engines = match (probe, e0) {
        (Some((e, db)), Some(e0)) => Some(e.snapshot(db)?.since(&e0)),
        _ => None,
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracker.stop_recording();
    Ok(Measured {
        deliveries,
        secs: elapsed.as_secs_f64(),
        p50_ns: tracker.hist.quantile(0.50),
        p99_ns: tracker.hist.quantile(0.99),
        server_cpu: s1.saturating_sub(s0),
        load_cpu: l1.saturating_sub(l0),
        max_lag,
        posts: 0,
        acks,
        bursts,
        engines,
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// What the relay's receivers did while saturated (the bare ones neither count bursts nor
/// ack): frames per read burst and deliveries per ack.
fn receivers_line(m: &Measured) -> String {
    if m.bursts == 0 {
        return String::new();
    }
    let per_ack = if m.acks == 0 {
        "no acks".to_owned()
    } else {
        format!(
            "{:.0} deliveries per ack",
            m.deliveries as f64 / m.acks as f64
        )
    };
    format!(
        "; receivers: {:.1} frames per read, {per_ack}",
        m.deliveries as f64 / m.bursts as f64
    )
}

fn row_line(cfg: &Config, r: &Row) -> String {
    let mut line = format!(
        "fanout: {} N={} {} B rep {}: closed {:.0} deliveries/s (server {:.0}% CPU, {:.2} µs/delivery; load gen {:.0}%), p50/p99 {:.2}/{:.2} ms | open {:.0} posts/s: p50/p99 {:.2}/{:.2} ms (server {:.2} µs/delivery, {:.0}% CPU; load gen {:.0}%; schedule lag max {:.1} ms){}",
        r.server.name(cfg),
        r.n,
        r.size,
        r.rep,
        r.closed.per_sec(),
        r.closed.server_util() * 100.0,
        r.closed.server_us_per_delivery(),
        r.closed.load_util() * 100.0,
        ms(r.closed.p50_ns),
        ms(r.closed.p99_ns),
        r.open_rate,
        ms(r.open.p50_ns),
        ms(r.open.p99_ns),
        r.open.server_us_per_delivery(),
        r.open.server_util() * 100.0,
        r.open.load_util() * 100.0,
        r.open.max_lag.as_secs_f64() * 1e3,
        receivers_line(&r.closed),
    );
    if let Some(e) = r.closed.engines {
        let _ = write!(
            line,
            " | closed: PostgreSQL {:.2} µs/delivery, {:.2} commits and {:.2} rows per post; NATS {:.2} µs/delivery, {:.2} in + {:.2} out msgs per post",
            r.closed.per_delivery_us(e.pg_cpu),
            r.closed.per_post(e.pg_commits),
            r.closed.per_post(e.pg_rows),
            r.closed.per_delivery_us(e.nats_cpu),
            r.closed.per_post(e.nats_in),
            r.closed.per_post(e.nats_out),
        );
    }
    line
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        l if l % 2 == 1 => v.get(l / 2).copied().unwrap_or(f64::NAN),
        l => {
            (v.get(l / 2 - 1).copied().unwrap_or(0.0) + v.get(l / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

/// The side-by-side table (markdown) and the ratios against the goals.
fn report(cfg: &Config, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Fan-out results (closed loop window {} messages, open loop at {:.0}% of bare saturation, {} s + {} s per point, load average {})\n",
        cfg.ns
            .iter()
            .map(|&n| format!("{} at N={n}", cfg.window(n)))
            .collect::<Vec<_>>()
            .join(", "),
        cfg.load * 100.0,
        cfg.secs,
        cfg.open_secs,
        load_average()
    );
    let _ = writeln!(
        out,
        "| N | payload | rep | server | deliveries/s | server CPU | µs CPU/delivery | load-gen CPU | sat. p50 / p99 ms | open posts/s | open p50 / p99 ms | open µs CPU/delivery |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} B | {} | {} | {:.0} | {:.0}% | {:.2} | {:.0}% | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} |",
            r.n,
            r.size,
            r.rep,
            r.server.name(cfg),
            r.closed.per_sec(),
            r.closed.server_util() * 100.0,
            r.closed.server_us_per_delivery(),
            r.closed.load_util() * 100.0,
            ms(r.closed.p50_ns),
            ms(r.closed.p99_ns),
            r.open_rate,
            ms(r.open.p50_ns),
            ms(r.open.p99_ns),
            r.open.server_us_per_delivery(),
        );
    }
    scale_out(cfg, rows, &mut out);
    if !(cfg.bare && cfg.relay) {
        return out;
    }
    let _ = writeln!(out, "\n### Ratios relay ÷ bare (median over repetitions)\n");
    let _ = writeln!(
        out,
        "| N | payload | deliveries/s ratio (goal ≥ 0.8) | CPU-normalised ratio (bare ÷ relay µs/delivery, saturated; goal ≥ 0.8) | open p50 ratio | open p99 ratio (goal ≤ 2) | CPU/delivery ratio at open load | verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for &n in &cfg.ns {
        for &size in &cfg.sizes {
            let pairs: Vec<(&Row, &Row)> = (0..cfg.reps)
                .filter_map(|rep| {
                    let find = |s| {
                        rows.iter()
                            .find(|r| r.server == s && r.n == n && r.size == size && r.rep == rep)
                    };
                    Some((find(Server::Bare)?, find(Server::Relay)?))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let thr = median(
                pairs
                    .iter()
                    .map(|(b, r)| r.closed.per_sec() / b.closed.per_sec())
                    .collect(),
            );
            let cpu_sat = median(
                pairs
                    .iter()
                    .map(|(b, r)| {
                        b.closed.server_us_per_delivery()
                            / r.closed.server_us_per_delivery().max(1e-9)
                    })
                    .collect(),
            );
            let p50 = median(
                pairs
                    .iter()
                    .map(|(b, r)| r.open.p50_ns as f64 / b.open.p50_ns.max(1) as f64)
                    .collect(),
            );
            let p99 = median(
                pairs
                    .iter()
                    .map(|(b, r)| r.open.p99_ns as f64 / b.open.p99_ns.max(1) as f64)
                    .collect(),
            );
            let cpu = median(
                pairs
                    .iter()
                    .map(|(b, r)| {
                        r.open.server_us_per_delivery() / b.open.server_us_per_delivery().max(1e-9)
                    })
                    .collect(),
            );
            // Issue 8's goals: >= 0.8x bare in deliveries/s and CPU-normalised (R1 asked
            // for 0.6x), p99 at 10% load <= 2x bare.
            let verdict = match (thr >= 0.8 && cpu_sat >= 0.8, p99 <= 2.0) {
                (true, true) => "meets the goals",
                (false, true) => "throughput below goal",
                (true, false) => "p99 above goal",
                (false, false) => "misses both goals",
            };
            let _ = writeln!(
                out,
                "| {n} | {size} B | {thr:.2} | {cpu_sat:.2} | {p50:.2} | {p99:.2} | {cpu:.2} | {verdict} |"
            );
        }
    }
    out
}

/// The scale-out tables: per row, where the CPU went (bench process, PostgreSQL, NATS) and
/// what the engines did per post; then medians over repetitions per target.
fn scale_out(cfg: &Config, rows: &[Row], out: &mut String) {
    if !rows.iter().any(|r| r.closed.engines.is_some()) {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Scale-out: CPU per delivery by part and engine work per post (closed loop unless marked open)\n"
    );
    let _ = writeln!(
        out,
        "| N | payload | rep | server | deliveries/s | open p99 ms | relay µs/delivery | PostgreSQL µs/delivery | NATS µs/delivery | total µs/delivery | open total µs/delivery | PG commits/post | PG rows/post | PG rows/s | NATS in+out msgs/post | NATS msgs/s |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows.iter().filter(|r| r.server != Server::Bare) {
        let c = &r.closed;
        let e = c.engines.unwrap_or_default();
        let engine = |v: String| {
            if c.engines.is_some() {
                v
            } else {
                "-".to_owned()
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} B | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            r.n,
            r.size,
            r.rep,
            r.server.name(cfg),
            c.per_sec(),
            ms(r.open.p99_ns),
            c.server_us_per_delivery(),
            engine(format!("{:.2}", c.per_delivery_us(e.pg_cpu))),
            engine(format!("{:.2}", c.per_delivery_us(e.nats_cpu))),
            c.total_us_per_delivery(),
            r.open.total_us_per_delivery(),
            engine(format!("{:.2}", c.per_post(e.pg_commits))),
            engine(format!("{:.2}", c.per_post(e.pg_rows))),
            engine(format!("{:.0}", e.pg_rows as f64 / c.secs.max(1e-9))),
            engine(format!("{:.2}", c.per_post(e.nats_in + e.nats_out))),
            engine(format!(
                "{:.0}",
                (e.nats_in + e.nats_out) as f64 / c.secs.max(1e-9)
            )),
        );
    }
    let _ = writeln!(out, "\n### Scale-out medians over repetitions\n");
    let _ = writeln!(
        out,
        "| N | payload | server | deliveries/s | open p99 ms | total µs CPU/delivery (saturated) | total µs CPU/delivery (open) | PG rows/post | NATS msgs/post |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for &n in &cfg.ns {
        for &size in &cfg.sizes {
            for server in [
                Server::Bare,
                Server::Relay,
                Server::Postgres,
                Server::Cluster,
                Server::Spread,
            ] {
                let sel: Vec<&Row> = rows
                    .iter()
                    .filter(|r| r.server == server && r.n == n && r.size == size)
                    .collect();
                if sel.is_empty() {
                    continue;
                }
                let med = |f: &dyn Fn(&Row) -> f64| median(sel.iter().map(|r| f(r)).collect());
                let engine = |f: &dyn Fn(&Measured, &EngineSnapshot) -> f64| {
                    if sel.iter().all(|r| r.closed.engines.is_some()) {
                        format!(
                            "{:.2}",
                            med(&|r: &Row| f(&r.closed, &r.closed.engines.unwrap_or_default()))
                        )
                    } else {
                        "-".to_owned()
                    }
                };
                let _ = writeln!(
                    out,
                    "| {n} | {size} B | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                    server.name(cfg),
                    med(&|r| r.closed.per_sec()),
                    med(&|r| ms(r.open.p99_ns)),
                    med(&|r| r.closed.total_us_per_delivery()),
                    med(&|r| r.open.total_us_per_delivery()),
                    engine(&|m, e| m.per_post(e.pg_rows)),
                    engine(&|m, e| m.per_post(e.nats_in + e.nats_out)),
                );
            }
        }
    }
}
