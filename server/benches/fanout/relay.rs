//! Cove's relay under the same load: durable storage (SQLite in a temp dir unless
//! `FANOUT_STORE=memory`; or PostgreSQL; or several nodes on one PostgreSQL database and
//! one NATS, see [`Backend`]), N receiving devices registered (one user each, spread
//! round-robin over the nodes) and added to one group by a commit of the sending device of
//! node 1, the sender(s) posting `Application` entries, the receivers acking as `cove-core`
//! does (cumulative `QuietAck`s by count and timers) or, with `FANOUT_ACK=burst` once per
//! read burst, with `FANOUT_ACK=answered|quiet` every `FANOUT_ACK_EVERY` entries (see
//! [`load::AckMode`]).
//!
//! The only limit changed from the defaults is the per-device request rate (the sender
//! posts tens of thousands of messages a second; a real device would be limited to 200/s).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cove_server::{BusConfig, Relay, RelayConfig, RelayHandle, StoreKind};
use cove_wire::{BoundedVec, DeviceId, Epoch, GroupId, Payload, PostKind, Reply, Request};
use rustls::pki_types::CertificateDer;

use crate::load::{self, Device};
use crate::stats::Tracker;
use crate::{Config, Target};

/// Where the relay keeps its state.
#[derive(Clone, Debug)]
pub enum Backend {
    /// One node on SQLite (`FANOUT_STORE=sqlite`, the default) or in memory.
    Single {
        /// SQLite unless false (memory).
        sqlite: bool,
    },
    /// One node on PostgreSQL, no bus.
    Postgres {
        /// The database.
        url: String,
    },
    /// `nodes` nodes on one PostgreSQL database and one NATS.
    Cluster {
        /// Relay nodes.
        nodes: usize,
        /// The database.
        url: String,
        /// The NATS server.
        nats: String,
    },
}

/// Running relay nodes with their connected load generator.
pub struct RelayTarget {
    /// The sender(s) and tracker.
    pub target: Target,
    nodes: Vec<(RelayHandle, tokio::runtime::Handle)>,
    /// Runtimes of nodes after the first (the first runs on the caller's server runtime).
    runtimes: Vec<crate::ServerRt>,
    _data: Vec<tempfile::TempDir>,
}

impl RelayTarget {
    /// Shuts the relays down (each on its own runtime, where its tasks live).
    pub async fn stop(self) {
        let RelayTarget {
            target,
            nodes,
            runtimes,
            _data,
        } = self;
        drop(target);
        for (handle, rt) in nodes {
            let _ = rt.spawn(handle.shutdown()).await;
        }
        drop(runtimes);
    }
}

/// The relay configuration of the bench (limits opened up) for node `k` of `backend`.
fn node_config(data: &std::path::Path, backend: &Backend, k: usize) -> RelayConfig {
    let mut config = RelayConfig::new(([127, 0, 0, 1], 0).into(), data);
    match backend {
        Backend::Single { sqlite: true } => config.store = StoreKind::Sqlite,
        Backend::Single { sqlite: false } => config.store = StoreKind::Memory,
        Backend::Postgres { url } => config.store = StoreKind::Postgres(url.clone()),
        Backend::Cluster { url, nats, .. } => {
            config.store = StoreKind::Postgres(url.clone());
            config.bus = Some(BusConfig {
                nats: nats.clone(),
                node: Some(format!("fanout-node-{k}")),
                catch_up_ms: 2000,
            });
        }
    }
    config.limits.requests_per_second = 10_000_000;
    config.limits.request_burst = 10_000_000;
    // Every bench device connects and registers from 127.0.0.1.
    config.limits.max_connections_per_ip = 1_000_000;
    config.limits.registrations_per_minute = 10_000_000;
    config.limits.registration_burst = 10_000_000;
    config.limits.sender_posts_per_minute = u32::MAX;
    config.limits.sender_post_burst = u32::MAX;
    config.limits.sender_bytes_per_minute = u64::MAX;
    config.limits.sender_byte_burst = u64::MAX;
    config.limits.group_posts_per_minute = u32::MAX;
    config.limits.group_post_burst = u32::MAX;
    config.limits.group_bytes_per_minute = u64::MAX;
    config.limits.group_byte_burst = u64::MAX;
    // The group is set up with placeholder commits (one per 1000 receivers), so handshake
    // validation is off; what is measured is application messages, which the relay never
    // parses with validation on either.
    config.validate_handshakes = false;
    config
}

/// Starts one relay node of `backend` on `rt` (where its threads, created there, inherit
/// the runtime's CPU pinning).
pub async fn start_node(
    rt: &tokio::runtime::Handle,
    backend: &Backend,
    k: usize,
) -> Result<(RelayHandle, tempfile::TempDir)> {
    let data = tempfile::Builder::new().prefix("cove-fanout-").tempdir()?;
    let config = node_config(data.path(), backend, k);
    let handle = rt
        .spawn(Relay::start(config))
        .await?
        .with_context(|| format!("starting relay node {k} ({backend:?})"))?;
    Ok((handle, data))
}

/// Starts the relay node(s) (node 0 on `rt`, any other on a runtime of its own, pinned as
/// `rt`), registers `n` receivers spread round-robin over the nodes and one sender per
/// node, puts them all in one group (the sender of node 0 creates it and adds the others),
/// and spawns the receivers' read loops. Posts go through node 0's sender until
/// [`load::Sender::set_active`] spreads them.
pub async fn start(
    rt: &tokio::runtime::Runtime,
    n: usize,
    cfg: &Config,
    backend: &Backend,
) -> Result<RelayTarget> {
    let count = match backend {
        Backend::Cluster { nodes, .. } => (*nodes).max(1),
        _ => 1,
    };
    let mut runtimes = Vec::new();
    let mut nodes = Vec::new();
    let mut data = Vec::new();
    for k in 0..count {
        let handle = if k == 0 {
            rt.handle().clone()
        } else {
            runtimes.push(crate::server_runtime(cfg.pin, &format!("fanout-node{k}"))?);
            runtimes
                .last()
                .map(|r| r.handle().clone())
                .ok_or_else(|| anyhow!("no runtime"))?
        };
        let (relay, dir) = start_node(&handle, backend, k).await?;
        nodes.push((relay, handle));
        data.push(dir);
    }
    let mut tls = Vec::new();
    for (relay, _) in &nodes {
        tls.push(load::client_tls(CertificateDer::from(
            relay.cert_der().to_vec(),
        ))?);
    }
    let addrs: Vec<_> = nodes.iter().map(|(r, _)| r.local_addr()).collect();

    let mut senders = Vec::new();
    for (k, (addr, tls)) in addrs.iter().zip(&tls).enumerate() {
        senders.push(Device::register(*addr, tls, &format!("fanout-sender{k}")).await?);
    }
    let mut receivers = Vec::new();
    for (k, (addr, tls)) in addrs.iter().zip(&tls).enumerate() {
        let here = (n + count - 1 - k) / count;
        let prefix = format!("fanout-r{k}-");
        receivers.extend(load::relay_devices(here, &prefix, *addr, tls.clone()).await?);
    }
    let group = GroupId(rand::random());
    let create = Request::CreateGroup {
        group,
        group_info: Payload::default(),
        tree: Payload::default(),
    };
    let mut ids: Vec<DeviceId> = senders.iter().skip(1).map(|d| d.id).collect();
    ids.extend(receivers.iter().map(|d| d.id));
    let first = senders.first_mut().ok_or_else(|| anyhow!("no sender"))?;
    match first.request(create).await? {
        Reply::GroupCreated => {}
        other => bail!("expected GroupCreated, got {other:?}"),
    }
    let mut epoch = Epoch(0);
    for chunk in ids.chunks(cove_wire::limits::MAX_MEMBERSHIP_CHANGE) {
        let kind = PostKind::Commit {
            added: BoundedVec(chunk.to_vec()),
            removed: BoundedVec(Vec::new()),
            welcome: Some(Payload(vec![0x77; 512])),
            group_info: Payload::default(),
        };
        let post = Request::Post {
            group,
            epoch,
            kind,
            payload: Payload(vec![0x66; 256]),
        };
        match first.request(post).await? {
            Reply::Posted { .. } => epoch = Epoch(epoch.0 + 1),
            other => bail!("expected Posted for the commit, got {other:?}"),
        }
    }

    let tracker = Arc::new(Tracker::new(u32::try_from(n)?));
    for dev in receivers {
        load::spawn_relay_receiver(dev, tracker.clone(), cfg.acks);
    }
    let online = || nodes.iter().map(|(r, _)| r.online_count()).sum::<usize>();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while online() < n + count {
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("only {} of {} devices online", online(), n + count));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quiet = matches!(
        cfg.acks,
        load::AckMode::Burst | load::AckMode::Count | load::AckMode::Every { quiet: true, .. }
    );
    let sender = load::relay_sender(senders, group, epoch, quiet);
    Ok(RelayTarget {
        target: Target { sender, tracker },
        nodes,
        runtimes,
        _data: data,
    })
}
