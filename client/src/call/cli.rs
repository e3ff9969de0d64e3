//! `cove call` and `cove answer`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use cove_media::source::{AudioInput, AudioOutput};

use crate::config::Home;
use crate::device::Device;

use super::{CallOptions, CallReport};

const CALL_HELP: &str = "\
Examples:
  cove call friends                                  # 440 Hz tone for 5 s to every member
  cove call friends --audio-in voice.wav --video-in pattern --record ./rec --duration 30
  cove call friends --relay-only                     # media only through the relay's TURN server
  cove call friends --audio-in default --audio-out default --duration 0   # microphone and speaker
  cove devices                                       # the audio devices --audio-in/--audio-out take

Every other member device of the group rings (a full mesh of up to 6 participants). The
offer, answer and ICE candidates travel inside the group's MLS messages, so the relay can
neither read nor change them; media is SFrame-encrypted with keys exported from the MLS
epoch. In another terminal, the callee runs `cove answer friends`.

With --record DIR: audio-<user>.wav (what each peer sent), video-<user>/frame-N.ppm and
stats.json (dial to first decoded audio, packets sent/received/lost, jitter, round-trip time).
Ctrl-C hangs up cleanly (the others are told; recordings and stats.json are finished).";

const ANSWER_HELP: &str = "\
Examples:
  cove answer                                        # answer the next call in any group
  cove answer friends --record ./rec --duration 10   # answer a call in `friends`, record it

Waits (up to --wait seconds) for a call; a call placed up to a minute before also rings.
Ctrl-C hangs up cleanly (the others are told; recordings and stats.json are finished).";

/// Options shared by `cove call` and `cove answer`.
#[derive(Debug, Args)]
pub struct MediaArgs {
    /// Audio to send: `default` (the default microphone), a capture device name (see
    /// `cove devices`), `tone` (440 Hz), `tone:HZ`, `silence` or a WAV file (16-bit PCM,
    /// 48 kHz; a name ending in `.wav`, containing `/`, or an existing file).
    #[arg(
        long,
        value_name = "default|DEVICE|tone[:HZ]|FILE.wav",
        default_value = "tone:440"
    )]
    pub audio_in: String,
    /// Where to play received audio: `default` (the default speaker), a playback device name
    /// (see `cove devices`), `none`, or a WAV file (a name ending in `.wav` or containing `/`).
    #[arg(
        long,
        value_name = "default|DEVICE|none|FILE.wav",
        default_value = "none"
    )]
    pub audio_out: String,
    /// Video to send: `pattern`, `pattern:WxH` or a Y4M file (no video by default).
    #[arg(long, value_name = "pattern|FILE.y4m")]
    pub video_in: Option<String>,
    /// Record what is received into DIR (`audio-<user>.wav`, video frames, `stats.json`).
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Hang up this many seconds after connecting (0: stay until the others hang up or
    /// Ctrl-C). Ctrl-C always hangs up cleanly, recordings and statistics finished.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub duration: u64,
    /// Use only the relay's TURN server for media (hides addresses from the peers).
    #[arg(long)]
    pub relay_only: bool,
    /// Local UDP address for media (repeatable) [default: 127.0.0.1:0].
    #[arg(long, value_name = "ADDR")]
    pub bind: Vec<String>,
    /// Print the statistics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `cove call`.
#[derive(Debug, Args)]
#[command(after_help = CALL_HELP)]
pub struct CallArgs {
    /// The group to call.
    pub group: String,
    /// Give up if nobody answers within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub ring_timeout: u64,
    /// Media options.
    #[command(flatten)]
    pub media: MediaArgs,
}

/// Arguments of `cove answer`.
#[derive(Debug, Args)]
#[command(after_help = ANSWER_HELP)]
pub struct AnswerArgs {
    /// Only answer calls in this group.
    pub group: Option<String>,
    /// Give up if no call comes within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait: u64,
    /// Media options.
    #[command(flatten)]
    pub media: MediaArgs,
}

fn options(media: &MediaArgs, ring: u64) -> anyhow::Result<CallOptions> {
    let audio: AudioInput = media
        .audio_in
        .parse()
        .map_err(|e| anyhow::anyhow!("--audio-in {}: {e}", media.audio_in))?;
    let audio_out: AudioOutput = media
        .audio_out
        .parse()
        .map_err(|e| anyhow::anyhow!("--audio-out {}: {e}", media.audio_out))?;
    // An unknown device fails now, listing the available ones, not when a call rings.
    audio
        .check()
        .map_err(|e| anyhow::anyhow!("--audio-in {}: {e}", media.audio_in))?;
    audio_out
        .check()
        .map_err(|e| anyhow::anyhow!("--audio-out {}: {e}", media.audio_out))?;
    let video = match &media.video_in {
        Some(v) => Some(
            v.parse()
                .map_err(|e| anyhow::anyhow!("--video-in {v}: {e}"))?,
        ),
        None => None,
    };
    Ok(CallOptions {
        audio: Some(audio),
        audio_out: Some(audio_out),
        video,
        record: media.record.clone(),
        duration: (media.duration > 0).then(|| Duration::from_secs(media.duration)),
        relay_only: media.relay_only,
        ring_timeout: Duration::from_secs(ring.max(1)),
        bind: if media.bind.is_empty() {
            vec!["127.0.0.1:0".into()]
        } else {
            media.bind.clone()
        },
        verbose: !media.json,
        device_fallback: false,
    })
}

/// Runs `cove call`.
pub async fn run_call(home: Home, args: CallArgs) -> anyhow::Result<()> {
    let options = options(&args.media, args.ring_timeout)?;
    let mut device = Device::open(&home).await?;
    let result = super::place(&mut device, &args.group, &options).await;
    device.close().await;
    print_report(&result?, &args.media)
}

/// Runs `cove answer`.
pub async fn run_answer(home: Home, args: AnswerArgs) -> anyhow::Result<()> {
    let options = options(&args.media, args.wait)?;
    let mut device = Device::open(&home).await?;
    if !args.media.json {
        println!("waiting for a call...");
    }
    let result = super::answer(&mut device, args.group.as_deref(), &options).await;
    device.close().await;
    print_report(&result?, &args.media)
}

fn print_report(report: &CallReport, media: &MediaArgs) -> anyhow::Result<()> {
    if media.json {
        println!("{}", serde_json::to_string_pretty(&report.stats)?);
        return Ok(());
    }
    println!(
        "call {} ended",
        &report.call_id[..8.min(report.call_id.len())]
    );
    for p in &report.stats.peers {
        println!(
            "  {}: first audio {} ms, audio frames sent {} / received {}, video frames received {}, \
             packets sent {} / received {} / lost {}, jitter {:.1} ms, rtt {}",
            crate::views::escape(&p.peer.to_string()),
            p.dial_to_first_audio_ms
                .map_or("-".into(), |v| format!("{v:.0}")),
            p.audio_frames_sent,
            p.audio_frames_received,
            p.video_frames_received,
            p.packets_sent,
            p.packets_received,
            p.packets_lost,
            p.jitter_ms,
            p.rtt_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
        );
    }
    if let Some(dir) = &media.record {
        println!("recorded into {}", dir.display());
    }
    Ok(())
}
