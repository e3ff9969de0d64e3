//! Cove's relay under the same load: durable storage (SQLite in a temp dir unless
//! `FANOUT_STORE=memory`), N receiving devices registered (one user each) and added to one
//! group by a commit of the sending device, the sender posting `Application` entries, the
//! receivers acking as `cove-core` does (cumulative `QuietAck`s by count and timers) or, with
//! `FANOUT_ACK=burst` once per read burst, with `FANOUT_ACK=answered|quiet` every `FANOUT_ACK_EVERY` entries (see [`load::AckMode`]).
//!
//! The only limit changed from the defaults is the per-device request rate (the sender
//! posts tens of thousands of messages a second; a real device would be limited to 200/s).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cove_server::{Relay, RelayConfig, RelayHandle, StoreKind};
use cove_wire::{BoundedVec, DeviceId, Epoch, GroupId, Payload, PostKind, Reply, Request};
use rustls::pki_types::CertificateDer;

use crate::load::{self, Device};
use crate::stats::Tracker;
use crate::{Config, Target};

/// A running relay with its connected load generator.
pub struct RelayTarget {
    /// The sender and tracker.
    pub target: Target,
    handle: RelayHandle,
    server: tokio::runtime::Handle,
    _data: tempfile::TempDir,
}

impl RelayTarget {
    /// Shuts the relay down (on its own runtime, where its tasks live).
    pub async fn stop(self) {
        let RelayTarget {
            target,
            handle,
            server,
            _data,
        } = self;
        drop(target);
        let _ = server.spawn(handle.shutdown()).await;
    }
}

/// Starts a relay on the server runtime, registers the sender and `n` receivers, puts them
/// all in one group, and spawns the receivers' read loops.
pub async fn start(rt: &tokio::runtime::Runtime, n: usize, cfg: &Config) -> Result<RelayTarget> {
    let data = tempfile::Builder::new().prefix("cove-fanout-").tempdir()?;
    let mut config = RelayConfig::new(([127, 0, 0, 1], 0).into(), data.path());
    config.store = if cfg.sqlite {
        StoreKind::Sqlite
    } else {
        StoreKind::Memory
    };
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
    // Spawned on the server runtime so the relay's threads (post writer, blocking pool)
    // are created there and inherit its CPU pinning.
    let handle = rt
        .spawn(Relay::start(config))
        .await?
        .context("starting the relay")?;
    let addr = handle.local_addr();
    let tls = load::client_tls(CertificateDer::from(handle.cert_der().to_vec()))?;

    let mut sender = Device::register(addr, &tls, "fanout-sender").await?;
    let receivers = load::relay_devices(n, "fanout-r", addr, tls.clone()).await?;
    let group = GroupId(rand::random());
    let create = Request::CreateGroup {
        group,
        group_info: Payload::default(),
        tree: Payload::default(),
    };
    match sender.request(create).await? {
        Reply::GroupCreated => {}
        other => bail!("expected GroupCreated, got {other:?}"),
    }
    let ids: Vec<DeviceId> = receivers.iter().map(|d| d.id).collect();
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
        match sender.request(post).await? {
            Reply::Posted { .. } => epoch = Epoch(epoch.0 + 1),
            other => bail!("expected Posted for the commit, got {other:?}"),
        }
    }

    let tracker = Arc::new(Tracker::new(u32::try_from(n)?));
    for dev in receivers {
        load::spawn_relay_receiver(dev, tracker.clone(), cfg.acks);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while handle.online_count() < n + 1 {
        if std::time::Instant::now() > deadline {
            return Err(anyhow!(
                "only {} of {} devices online",
                handle.online_count(),
                n + 1
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quiet = matches!(
        cfg.acks,
        load::AckMode::Burst | load::AckMode::Count | load::AckMode::Every { quiet: true, .. }
    );
    let sender = load::relay_sender(sender, group, epoch, quiet);
    Ok(RelayTarget {
        target: Target { sender, tracker },
        handle,
        server: rt.handle().clone(),
        _data: data,
    })
}
