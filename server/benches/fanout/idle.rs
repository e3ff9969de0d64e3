//! Memory per idle connection (`FANOUT_IDLE=COUNT`): one relay node in this process, the
//! clients in child processes (this same binary, run with [`CLIENT_ENV`] set), so that this
//! process's resident set (`VmRSS`) holds the relay and no client. Two children in turn
//! each open `COUNT` authenticated connections (registered devices, in no group); the
//! resident set is read before, after the first `COUNT` and after the second (the second
//! step is the marginal cost, past the allocator's first growth).
//!
//! The node is on SQLite, or on PostgreSQL (`FANOUT_SERVERS` with `postgres`), or a cluster
//! node on PostgreSQL + NATS (with `cluster`).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::CertificateDer;

use crate::Config;
use crate::engines::{Engines, rss_kib};
use crate::relay::{self, Backend};

/// Set in a child: `ADDR CERT_PATH COUNT PREFIX`.
pub const CLIENT_ENV: &str = "FANOUT_IDLE_CLIENT";

/// The child: opens the connections, says `ready`, holds them until stdin closes.
pub fn client(spec: &str) -> Result<()> {
    let parts: Vec<&str> = spec.split(' ').collect();
    let [addr, cert, count, prefix] = parts.as_slice() else {
        bail!("{CLIENT_ENV}={spec:?}");
    };
    let addr: std::net::SocketAddr = addr.parse()?;
    let cert = CertificateDer::from(std::fs::read(cert)?);
    let count: usize = count.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let prefix = (*prefix).to_owned();
    let devices = rt.block_on(async move {
        let tls = crate::load::client_tls(cert)?;
        crate::load::relay_devices(count, &prefix, addr, tls).await
    })?;
    println!("ready {}", devices.len());
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(devices);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The parent: the relay node and the measurement.
pub async fn run(cfg: Config, count: usize) -> Result<()> {
    let engines = if cfg.postgres || cfg.cluster_one || cfg.cluster_spread {
        Some(Engines::start(cfg.pin)?)
    } else {
        None
    };
    let db = engines.as_ref().map(Engines::database);
    let backend = match (&engines, &db) {
        (Some(e), Some(db)) if cfg.cluster_one || cfg.cluster_spread => Backend::Cluster {
            nodes: 1,
            url: db.url().to_owned(),
            nats: e.nats_url(),
        },
        (Some(_), Some(db)) => Backend::Postgres {
            url: db.url().to_owned(),
        },
        _ => Backend::Single { sqlite: cfg.sqlite },
    };
    let rt = crate::server_runtime(cfg.pin, "fanout-server")?;
    let (handle, _data) = relay::start_node(rt.handle(), &backend, 0).await?;
    let cert_dir = tempfile::tempdir()?;
    let cert_path = cert_dir.path().join("cert.der");
    std::fs::write(&cert_path, handle.cert_der())?;
    let addr = handle.local_addr();
    let mut rss = vec![rss_kib()?];
    let mut children = Vec::new();
    for step in 0..2 {
        let spec = format!("{addr} {} {count} idle{step}-", cert_path.display());
        let mut child = Command::new(std::env::current_exe()?)
            .env(CLIENT_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting an idle-client process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no child stdout"))?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        if !line.starts_with("ready") {
            bail!("idle client {step} did not get ready: {line:?}");
        }
        let want = count * (step + 1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while handle.online_count() < want {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {want} idle devices online",
                    handle.online_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rss.push(rss_kib()?);
        children.push(child);
    }
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 * 1024.0 / count as f64;
    println!(
        "\n## Memory per idle connection ({backend:?}, {count} + {count} authenticated connections)\n"
    );
    println!(
        "VmRSS before: {} KiB; after {count}: {} KiB; after {}: {} KiB",
        rss[0],
        rss[1],
        2 * count,
        rss[2]
    );
    println!(
        "per connection: first {count}: {:.0} bytes; next {count}: {:.0} bytes",
        per(rss[0], rss[1]),
        per(rss[1], rss[2])
    );
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let _ = rt.spawn(handle.shutdown()).await;
    drop(rt);
    drop(db);
    Ok(())
}
