//! `cove send-file`, `cove download`, `cove share` and `cove fetch` (owned by the
//! attachments work; the logic lives in `cove::transfer`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use cove::Device;
use cove::config::Home;
use cove::transport::{self, TlsTrust};

/// Arguments of `cove send-file`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove send-file friends ./holiday.jpg

The file is encrypted on this device with a fresh key while it uploads (resuming after
network cuts); the key travels only inside the end-to-end encrypted group message.")]
pub struct SendFileArgs {
    /// The group.
    pub group: String,
    /// The file to send.
    pub path: PathBuf,
}

/// Arguments of `cove download`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove history friends                       # 18:02 3c9a0b1d friends <alice> [file] ...
  cove download friends 3c9a0b1d             # the message's short id
  cove download friends 3c9a0b1d -o ~/Downloads/
  cove history friends --json | jq -c 'select(.attachment)'   # full ids

Verifies the file (every chunk and the whole blob's digest) before it appears; a failed
download leaves nothing behind.")]
pub struct DownloadArgs {
    /// The group.
    pub group: String,
    /// The message id or the attachment id (`attachment.id` in `--json` output), or the
    /// start of either (at least 4 hex digits, e.g. the short id `cove history` shows).
    pub id: String,
    /// Where to write the file (a file name, or a directory; default: the current
    /// directory and the sender's file name).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// Arguments of `cove share`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  cove share ./report.pdf
  https://relay.example:4433/s/5d1e...#k3Jd...

Anyone with the link can download and decrypt the file, in a browser or with `cove fetch`.
The key is in the part after '#', which browsers never send to the relay.")]
pub struct ShareArgs {
    /// The file to share.
    pub path: PathBuf,
}

/// Arguments of `cove fetch`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cove fetch 'https://relay.example:4433/s/5d1e...#k3Jd...'
  cove fetch 'https://127.0.0.1:7443/s/5d1e...#k3Jd...' --ca cove-data/tls/cert.pem -o out.pdf

Needs no account. Quote the link: the shell would treat '#' as a comment otherwise.")]
pub struct FetchArgs {
    /// The share link.
    pub link: String,
    /// Where to write the file (a file name or a directory; default: the current directory
    /// and the shared file's name).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Trust this relay certificate (PEM), e.g. a self-signed relay's. Default: the home's
    /// relay certificate if this home is initialised, else the public web PKI.
    #[arg(long, value_name = "CERT.pem")]
    pub ca: Option<PathBuf>,
}

/// Runs `cove send-file`.
pub async fn run_send_file(home: Home, args: SendFileArgs) -> anyhow::Result<()> {
    one_file(&args.path, "send-file")?;
    let device = Device::open(&home).await?;
    let sent = cove::transfer::send_file(&device, &args.group, &args.path, true).await;
    device.close().await;
    let p = sent?;
    println!(
        "sent {} ({}) to {} [attachment {}]",
        cove::escape(&p.name),
        cove::human_size(p.size),
        cove::escape(&args.group),
        p.blob_id
    );
    Ok(())
}

/// Runs `cove download`.
pub async fn run_download(home: Home, args: DownloadArgs) -> anyhow::Result<()> {
    let device = Device::open_offline(&home).await?;
    let out = args.output.unwrap_or_else(|| PathBuf::from("."));
    let got = cove::transfer::download(&device, &args.group, &args.id, &out, true).await;
    device.close().await;
    println!("saved {}", cove::escape(&got?.display().to_string()));
    Ok(())
}

/// Runs `cove share`.
pub async fn run_share(home: Home, args: ShareArgs) -> anyhow::Result<()> {
    one_file(&args.path, "share")?;
    let device = Device::open_offline(&home).await?;
    let link = cove::transfer::share(&device, &args.path, true).await;
    device.close().await;
    println!("{}", link?);
    Ok(())
}

/// Runs `cove fetch`.
pub async fn run_fetch(home: Option<Home>, args: FetchArgs) -> anyhow::Result<()> {
    let trust = match (&args.ca, &home) {
        (Some(ca), _) => TlsTrust::CaFile(ca.clone()),
        (None, Some(h)) if h.is_initialised() => h.trust(&h.load()?),
        _ => TlsTrust::WebPki,
    };
    let tls = Arc::new(transport::client_config(&trust)?);
    let got = cove::transfer::fetch(&args.link, tls, args.output.as_deref(), true).await?;
    println!("saved {}", cove::escape(&got.display().to_string()));
    Ok(())
}

/// Refuses a directory up front with a message that names the problem (reading it as a
/// file fails deep in the upload with an unhelpful I/O error).
fn one_file(path: &std::path::Path, command: &str) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!(
            "{} is a directory; {command} sends one file",
            path.display()
        );
    }
    Ok(())
}
