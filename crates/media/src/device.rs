//! Real audio devices through cpal (feature `devices`): ALSA, which also reaches PulseAudio
//! and PipeWire through their ALSA plugins.
//!
//! Neither direction ever blocks the media engine, and the engine never blocks a device:
//! - capture: the cpal callback down-mixes to mono, resamples to 48 kHz and hands chunks to
//!   the engine over a bounded channel with `try_send` (a slow engine loses audio); the
//!   engine's 20 ms tick takes what is there ([`DeviceSource`], an [`AudioSource`]), padding
//!   with silence while the device has not delivered yet (the first samples can take ~2 s)
//!   and dropping the oldest beyond [`MAX_CAPTURE_BACKLOG`];
//! - playback: the engine pushes decoded frames with `try_send` ([`DevicePlayback::push`]);
//!   the cpal callback owns one [`JitterBuffer`] per peer, mixes, resamples from 48 kHz to
//!   the device rate and writes; a device that stops pulling loses frames, never stalls the
//!   engine.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, StreamConfig};

use crate::MediaIoError;
use crate::audio::{Frame, JitterBuffer, LinearResampler, SeqUnwrapper, downmix_into, to_i16};
use crate::codec::{AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE};
use crate::source::AudioSource;

/// Most 48 kHz samples a capture keeps waiting for the engine (100 ms); older ones are dropped.
pub const MAX_CAPTURE_BACKLOG: usize = 4_800;
/// Capacity of the capture and playback channels (chunks or frames).
pub const CHANNEL_CAPACITY: usize = 64;
/// Most peers mixed on playback.
pub const MAX_PLAYBACK_PEERS: usize = crate::call::MAX_PARTICIPANTS;

/// An audio device as `cove devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The name to pass to `--audio-in`/`--audio-out` (the ALSA PCM, e.g. `pulse`, `cove_a`).
    pub name: String,
    /// A human description, if the host gives one.
    pub description: String,
    /// Can capture.
    pub input: bool,
    /// Can play.
    pub output: bool,
    /// The default input device.
    pub default_input: bool,
    /// The default output device.
    pub default_output: bool,
    /// Supported sample rates as (min, max) ranges, deduplicated.
    pub rates: Vec<(u32, u32)>,
}

fn device_error(e: impl std::fmt::Display) -> MediaIoError {
    MediaIoError::Device(e.to_string())
}

fn short_name(device: &cpal::Device) -> Option<String> {
    device.id().ok().map(|id| id.id().to_owned())
}

/// Every input and output device of the default host (ALSA on Linux).
pub fn list_devices() -> Result<Vec<DeviceInfo>, MediaIoError> {
    let host = cpal::default_host();
    let default_in = host.default_input_device().and_then(|d| short_name(&d));
    let default_out = host.default_output_device().and_then(|d| short_name(&d));
    let mut out = Vec::new();
    for d in host.devices().map_err(device_error)? {
        let Some(name) = short_name(&d) else { continue };
        let mut rates = Vec::new();
        let mut input = false;
        let mut output = false;
        if let Ok(configs) = d.supported_input_configs() {
            for c in configs {
                input = true;
                rates.push((c.min_sample_rate(), c.max_sample_rate()));
            }
        }
        if let Ok(configs) = d.supported_output_configs() {
            for c in configs {
                output = true;
                rates.push((c.min_sample_rate(), c.max_sample_rate()));
            }
        }
        rates.sort_unstable();
        rates.dedup();
        let description = d
            .description()
            .map(|desc| desc.name().to_owned())
            .unwrap_or_default();
        out.push(DeviceInfo {
            default_input: default_in.as_deref() == Some(&name),
            default_output: default_out.as_deref() == Some(&name),
            name,
            description,
            input,
            output,
            rates,
        });
    }
    Ok(out)
}

/// Finds a device: `default` (or empty) is the host's default; otherwise the ALSA name
/// (`cove_a`), the full id (`alsa:cove_a`) or the description. Unknown names fail with
/// [`MediaIoError::UnknownDevice`], listing the available ones.
fn find_device(name: &str, input: bool) -> Result<cpal::Device, MediaIoError> {
    let host = cpal::default_host();
    let kind = if input { "input" } else { "output" };
    if name.is_empty() || name == "default" {
        let d = if input {
            host.default_input_device()
        } else {
            host.default_output_device()
        };
        return d.ok_or_else(|| MediaIoError::UnknownDevice {
            kind,
            name: name.to_owned(),
            available: String::from("(no default device)"),
        });
    }
    let devices: Vec<cpal::Device> = if input {
        host.input_devices().map_err(device_error)?.collect()
    } else {
        host.output_devices().map_err(device_error)?.collect()
    };
    let mut names = Vec::new();
    for d in devices {
        let id = d.id().ok();
        let short = id.as_ref().map(|i| i.id().to_owned()).unwrap_or_default();
        let full = id.as_ref().map(ToString::to_string).unwrap_or_default();
        let desc = d
            .description()
            .map(|x| x.name().to_owned())
            .unwrap_or_default();
        if name == short || name == full || (!desc.is_empty() && name == desc) {
            return Ok(d);
        }
        if !short.is_empty() {
            names.push(short);
        }
    }
    Err(MediaIoError::UnknownDevice {
        kind,
        name: name.to_owned(),
        available: if names.is_empty() {
            "(none)".into()
        } else {
            names.join(", ")
        },
    })
}

/// Checks that `name` resolves to an input (or output) device, without opening a stream.
pub fn check_device(name: &str, input: bool) -> Result<(), MediaIoError> {
    find_device(name, input).map(|_| ())
}

/// A stream error callback that logs the first error and then at most one line every
/// [`ERROR_LOG_INTERVAL`] with the number suppressed: a device in trouble can report an error
/// on every callback (hundreds in a millisecond were seen through the PulseAudio plug-in).
fn rate_limited_warning(what: &'static str) -> impl FnMut(cpal::Error) + Send + 'static {
    let mut last: Option<std::time::Instant> = None;
    let mut suppressed: u64 = 0;
    move |e| {
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < ERROR_LOG_INTERVAL) {
            suppressed += 1;
            return;
        }
        if suppressed > 0 {
            tracing::warn!("{what}: {e} ({suppressed} more errors since the last report)");
        } else {
            tracing::warn!("{what}: {e}");
        }
        last = Some(now);
        suppressed = 0;
    }
}

/// Shortest interval between two logged errors of one stream.
pub const ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Picks a stream configuration: 48 kHz if the device offers it, else its default rate.
fn pick_config(
    device: &cpal::Device,
    input: bool,
) -> Result<(StreamConfig, SampleFormat), MediaIoError> {
    let default = if input {
        device.default_input_config()
    } else {
        device.default_output_config()
    }
    .map_err(device_error)?;
    let mut config = default.config();
    let format = default.sample_format();
    let ranges: Vec<_> = if input {
        device
            .supported_input_configs()
            .map(|c| c.collect())
            .unwrap_or_default()
    } else {
        device
            .supported_output_configs()
            .map(|c| c.collect())
            .unwrap_or_default()
    };
    if ranges.iter().any(|r| {
        r.sample_format() == format
            && r.channels() == config.channels
            && r.contains_rate(AUDIO_SAMPLE_RATE)
    }) {
        config.sample_rate = AUDIO_SAMPLE_RATE;
    }
    if config.channels == 0 || config.sample_rate == 0 {
        return Err(MediaIoError::Device(
            "device reports 0 channels or 0 Hz".into(),
        ));
    }
    Ok((config, format))
}

/// A microphone (any capture device) as an [`AudioSource`] of 20 ms 48 kHz mono frames.
pub struct DeviceSource {
    rx: Receiver<Vec<f32>>,
    backlog: VecDeque<f32>,
    _stream: StreamHolder,
    /// The device's name, rate and channels (for logs).
    pub description: String,
}

/// Keeps a cpal stream alive; dropping it stops the stream on a thread of its own.
///
/// Stopping joins cpal's device thread, and that can hang: the ALSA PulseAudio plugin
/// deadlocks when the sound server went away under an open stream (seen in the device test).
/// The holder is dropped by the media engine (a Tokio task), which must never block on a
/// device, so the stream is dropped on a detached thread.
struct StreamHolder(Option<cpal::Stream>);

impl Drop for StreamHolder {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            // If no thread can be spawned, the closure (and the stream) is dropped here.
            let _ = std::thread::Builder::new()
                .name("cove-audio-stop".into())
                .spawn(move || drop(stream));
        }
    }
}

/// Opens a capture device by name: `default` (or empty) for the default, else the ALSA name
/// (`cove_a`), the full id (`alsa:cove_a`) or the description; unknown names fail with
/// [`MediaIoError::UnknownDevice`] listing the available ones.
pub fn open_input(name: &str) -> Result<DeviceSource, MediaIoError> {
    let device = find_device(name, true)?;
    let (config, format) = pick_config(&device, true)?;
    let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
    let description = format!(
        "{name}: {} Hz, {} ch, {format:?}",
        config.sample_rate, config.channels
    );
    let stream = match format {
        SampleFormat::F32 => build_input::<f32>(&device, config, tx),
        SampleFormat::I16 => build_input::<i16>(&device, config, tx),
        SampleFormat::I32 => build_input::<i32>(&device, config, tx),
        SampleFormat::U16 => build_input::<u16>(&device, config, tx),
        other => Err(MediaIoError::Device(format!(
            "unsupported sample format {other:?}"
        ))),
    }?;
    stream.play().map_err(device_error)?;
    Ok(DeviceSource {
        rx,
        backlog: VecDeque::with_capacity(MAX_CAPTURE_BACKLOG + AUDIO_FRAME_SAMPLES),
        _stream: StreamHolder(Some(stream)),
        description,
    })
}

fn build_input<T>(
    device: &cpal::Device,
    config: StreamConfig,
    tx: SyncSender<Vec<f32>>,
) -> Result<cpal::Stream, MediaIoError>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels);
    let mut resampler = LinearResampler::new(config.sample_rate, AUDIO_SAMPLE_RATE);
    let mut floats = Vec::new();
    let mut mono = Vec::new();
    device
        .build_input_stream::<T, _, _>(
            config,
            move |data: &[T], _| {
                floats.clear();
                floats.extend(data.iter().map(|s| s.to_sample::<f32>()));
                mono.clear();
                downmix_into(&floats, channels, &mut mono);
                let mut out = Vec::with_capacity(mono.len() * 2 + 2);
                resampler.process(&mono, &mut out);
                // Never block the device thread: a full channel (slow engine) drops audio.
                match tx.try_send(out) {
                    Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
                }
            },
            rate_limited_warning("audio capture"),
            None,
        )
        .map_err(device_error)
}

impl AudioSource for DeviceSource {
    fn next_frame(&mut self) -> Frame {
        while let Ok(chunk) = self.rx.try_recv() {
            self.backlog.extend(chunk);
        }
        // Keep latency bounded: drop the oldest beyond the backlog limit.
        let excess = self.backlog.len().saturating_sub(MAX_CAPTURE_BACKLOG);
        self.backlog.drain(..excess);
        let mut out = [0i16; AUDIO_FRAME_SAMPLES];
        for s in out.iter_mut() {
            match self.backlog.pop_front() {
                Some(x) => *s = to_i16(x),
                None => break,
            }
        }
        out
    }
}

/// A speaker (any playback device): mixes the peers' decoded audio through per-peer jitter
/// buffers at the device's clock.
pub struct DevicePlayback {
    tx: SyncSender<(u8, u16, Box<Frame>)>,
    _stream: StreamHolder,
    /// The device's name, rate and channels (for logs).
    pub description: String,
}

impl DevicePlayback {
    /// Queues a decoded 48 kHz frame from peer `slot` with RTP sequence number `seq`. Never
    /// blocks: if the device has stopped pulling and the queue is full, the frame is dropped.
    pub fn push(&self, slot: u8, seq: u16, pcm: &[i16]) {
        let Ok(frame) = <Frame>::try_from(pcm) else {
            return;
        };
        let _ = self.tx.try_send((slot, seq, Box::new(frame)));
    }
}

/// Opens a playback device by name (`default` for the default).
pub fn open_output(name: &str) -> Result<DevicePlayback, MediaIoError> {
    let device = find_device(name, false)?;
    let (config, format) = pick_config(&device, false)?;
    let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
    let description = format!(
        "{name}: {} Hz, {} ch, {format:?}",
        config.sample_rate, config.channels
    );
    let stream = match format {
        SampleFormat::F32 => build_output::<f32>(&device, config, rx),
        SampleFormat::I16 => build_output::<i16>(&device, config, rx),
        SampleFormat::I32 => build_output::<i32>(&device, config, rx),
        SampleFormat::U16 => build_output::<u16>(&device, config, rx),
        other => Err(MediaIoError::Device(format!(
            "unsupported sample format {other:?}"
        ))),
    }?;
    stream.play().map_err(device_error)?;
    Ok(DevicePlayback {
        tx,
        _stream: StreamHolder(Some(stream)),
        description,
    })
}

/// The playback state the output callback owns.
struct Mixer {
    rx: Receiver<(u8, u16, Box<Frame>)>,
    peers: Vec<(u8, SeqUnwrapper, JitterBuffer)>,
    resampler: LinearResampler,
    mixed: Vec<f32>,
    out: VecDeque<f32>,
}

impl Mixer {
    fn drain_input(&mut self) {
        while let Ok((slot, seq, frame)) = self.rx.try_recv() {
            let i = match self.peers.iter().position(|p| p.0 == slot) {
                Some(i) => i,
                None if self.peers.len() < MAX_PLAYBACK_PEERS => {
                    self.peers
                        .push((slot, SeqUnwrapper::default(), JitterBuffer::default()));
                    self.peers.len() - 1
                }
                None => continue,
            };
            if let Some((_, unwrap, jb)) = self.peers.get_mut(i) {
                let ext = unwrap.unwrap(seq);
                jb.push(ext, &frame);
            }
        }
    }

    /// Plays one 20 ms period: pops a frame from every peer, mixes, resamples into `out`.
    fn render_period(&mut self) {
        let mut sum = [0f32; AUDIO_FRAME_SAMPLES];
        for (_, _, jb) in &mut self.peers {
            let f = jb.pop();
            for (acc, s) in sum.iter_mut().zip(f.iter()) {
                *acc += f32::from(*s) / f32::from(i16::MAX);
            }
        }
        self.mixed.clear();
        let mut resampled = Vec::with_capacity(AUDIO_FRAME_SAMPLES * 4);
        self.mixed.extend(sum.iter().map(|x| x.clamp(-1.0, 1.0)));
        self.resampler.process(&self.mixed, &mut resampled);
        self.out.extend(resampled);
    }
}

fn build_output<T>(
    device: &cpal::Device,
    config: StreamConfig,
    rx: Receiver<(u8, u16, Box<Frame>)>,
) -> Result<cpal::Stream, MediaIoError>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(config.channels);
    let mut mixer = Mixer {
        rx,
        peers: Vec::new(),
        resampler: LinearResampler::new(AUDIO_SAMPLE_RATE, config.sample_rate),
        mixed: Vec::with_capacity(AUDIO_FRAME_SAMPLES),
        out: VecDeque::new(),
    };
    device
        .build_output_stream::<T, _, _>(
            config,
            move |data: &mut [T], _| {
                mixer.drain_input();
                let frames = data.len() / channels.max(1);
                while mixer.out.len() < frames {
                    mixer.render_period();
                }
                for frame in data.chunks_exact_mut(channels.max(1)) {
                    let v = mixer.out.pop_front().unwrap_or(0.0);
                    for s in frame {
                        *s = T::from_sample(v);
                    }
                }
            },
            rate_limited_warning("audio playback"),
            None,
        )
        .map_err(device_error)
}
