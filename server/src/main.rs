//! `cove-server`: runs a Cove relay.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cove_server::{ConfigFile, Relay, StoreKind};

/// The Cove relay: stores and forwards end-to-end encrypted messages, files and call
/// signalling between devices. It never sees plaintext or keys.
#[derive(Parser, Debug)]
#[command(
    name = "cove-server",
    version,
    after_help = "\
EXAMPLES:
  Start a relay on 127.0.0.1:7443 with its data in ./cove-data (a self-signed certificate
  is created there once, in ./cove-data/tls/cert.pem, and reused later):
      cove-server

  Clients connect to wss://127.0.0.1:7443 and trust that certificate with
  --ca ./cove-data/tls/cert.pem (or compare the printed SHA-256 fingerprint).

  Listen on all interfaces with a real certificate and a config file for limits:
      cove-server --listen 0.0.0.0:7443 --data /var/lib/cove \\
                  --cert /etc/cove/fullchain.pem --key /etc/cove/key.pem --config /etc/cove/relay.toml

  A config file (TOML; every key optional, flags win):
      store = \"sqlite\"            # or \"memory\" (nothing survives a restart)
      [limits]
      requests_per_second = 200   # per device
      outgoing_queue_frames = 4096
      handshake_timeout_ms = 10000
      max_connections_per_ip = 64 # per IPv4 address or IPv6 /64 (loopback too)
      http_body_idle_ms = 30000   # a blob upload/download moving no byte this long is cut
      registrations_per_minute = 10 # new users and devices per client address
      registration_burst = 20

  More logging: RUST_LOG=cove_server=debug cove-server
  The relay prints `listening on ADDR` on stdout once it accepts connections. Stop it with
  Ctrl-C or SIGTERM: it closes connections cleanly and flushes its store."
)]
struct Args {
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:7443]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory: relay.db, blobs/, tls/ [default: ./cove-data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// TLS certificate chain (PEM). Without --cert/--key a self-signed one is used.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Config file (TOML) with limits and any of the options above.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep everything in memory instead of SQLite (nothing survives a restart).
    #[arg(long)]
    memory: bool,
    /// Run a TURN server for calls on this UDP address (a concrete IP, e.g. 127.0.0.1:3478;
    /// off by default). Devices get 10-minute credentials from the relay.
    #[arg(long, value_name = "ADDR")]
    turn_listen: Option<SocketAddr>,
    /// Let the TURN server relay to this range although it is internal (loopback, private,
    /// link-local: refused by default), e.g. 127.0.0.0/8 to try calls through TURN on one
    /// machine. Repeatable; adds to the config file's `turn_allow_peers`.
    #[arg(long, value_name = "RANGE")]
    turn_allow_peer: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(cove_server::log_filter(
            &std::env::var("RUST_LOG").unwrap_or_default(),
        ))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    if args.listen.is_some() {
        file.listen = args.listen;
    }
    if args.data.is_some() {
        file.data = args.data;
    }
    if args.cert.is_some() {
        file.cert = args.cert;
        file.key = args.key;
    }
    if args.memory {
        file.store = Some(StoreKind::Memory);
    }
    if args.turn_listen.is_some() {
        file.turn_listen = args.turn_listen;
    }
    file.turn_allow_peers.extend(args.turn_allow_peer);
    let config = file.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: cove_server::RelayConfig) -> anyhow::Result<()> {
    let relay = Relay::start(config).await?;
    let created = if relay.cert_created() {
        " (created now)"
    } else {
        ""
    };
    println!("certificate {}{created}", relay.cert_path().display());
    println!("fingerprint SHA-256 {}", relay.fingerprint());
    println!("listening on {}", relay.local_addr());
    if let Some(turn) = relay.turn_addr() {
        println!("TURN on udp {turn}");
    }
    wait_for_signal().await?;
    tracing::info!("signal received: shutting down");
    relay.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}
