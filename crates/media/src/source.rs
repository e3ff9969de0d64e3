//! Headless media sources and sinks: tones, WAV files, a generated test pattern, Y4M files,
//! PPM frame dumps. Real audio devices sit behind the `devices` feature
//! ([`AudioInput::Device`], [`AudioOutput::Device`], [`open_microphone`]).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::MediaIoError;
use crate::codec::{AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE, I420Frame};

/// Where a call's outgoing audio comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AudioInput {
    /// A sine tone at this frequency (Hz).
    Tone(f32),
    /// A WAV file (16-bit PCM, 48 kHz; mono or stereo, which is down-mixed); loops at the end.
    Wav(PathBuf),
    /// Digital silence.
    Silence,
    /// A capture device (`default` or a device name; needs the `devices` feature).
    Device(String),
}

/// True if `s` names a WAV file rather than a device: it ends in `.wav`, contains a path
/// separator, or is an existing file.
fn looks_like_file(s: &str) -> bool {
    s.to_ascii_lowercase().ends_with(".wav")
        || s.contains(std::path::MAIN_SEPARATOR)
        || s.contains('/')
        || Path::new(s).is_file()
}

impl std::str::FromStr for AudioInput {
    type Err = MediaIoError;
    /// Parses the CLI syntax `tone` (440 Hz), `tone:HZ`, `silence`, `default` (the default
    /// capture device), a WAV path (ends in `.wav`, contains `/` or exists) or a device name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "tone" {
            return Ok(Self::Tone(440.0));
        }
        if s.is_empty() {
            return Err(MediaIoError::Format("empty audio input"));
        }
        if let Some(hz) = s.strip_prefix("tone:") {
            let hz: f32 = hz
                .parse()
                .map_err(|_| MediaIoError::Format("bad tone frequency"))?;
            if !(1.0..=20_000.0).contains(&hz) {
                return Err(MediaIoError::Format("tone frequency out of range"));
            }
            return Ok(Self::Tone(hz));
        }
        if s == "silence" {
            return Ok(Self::Silence);
        }
        if looks_like_file(s) {
            return Ok(Self::Wav(PathBuf::from(s)));
        }
        Ok(Self::Device(s.to_owned()))
    }
}

impl AudioInput {
    /// Opens the source.
    pub fn open(&self) -> Result<Box<dyn AudioSource>, MediaIoError> {
        Ok(match self {
            Self::Tone(hz) => Box::new(ToneSource::new(*hz, 0.5)),
            Self::Wav(p) => Box::new(WavSource::open(p)?),
            Self::Silence => Box::new(ToneSource::new(0.0, 0.0)),
            Self::Device(name) => open_capture_device(name)?,
        })
    }

    /// Checks, without opening it, that a device input names an existing capture device
    /// (fails with [`MediaIoError::UnknownDevice`] listing the available ones, or
    /// [`MediaIoError::DevicesUnavailable`] without the `devices` feature). Other inputs pass.
    pub fn check(&self) -> Result<(), MediaIoError> {
        match self {
            Self::Device(name) => check_device(name, true),
            _ => Ok(()),
        }
    }
}

#[cfg(feature = "devices")]
fn check_device(name: &str, input: bool) -> Result<(), MediaIoError> {
    crate::device::check_device(name, input)
}

#[cfg(not(feature = "devices"))]
fn check_device(_name: &str, _input: bool) -> Result<(), MediaIoError> {
    Err(MediaIoError::DevicesUnavailable)
}

#[cfg(feature = "devices")]
fn open_capture_device(name: &str) -> Result<Box<dyn AudioSource>, MediaIoError> {
    Ok(Box::new(crate::device::open_input(name)?))
}

#[cfg(not(feature = "devices"))]
fn open_capture_device(_name: &str) -> Result<Box<dyn AudioSource>, MediaIoError> {
    Err(MediaIoError::DevicesUnavailable)
}

/// Where a call's received audio goes (besides `--record`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AudioOutput {
    /// Nowhere.
    None,
    /// A 16-bit 48 kHz mono WAV file with every peer's decoded audio as it arrives.
    Wav(PathBuf),
    /// A playback device (`default` or a device name; needs the `devices` feature), fed
    /// through a jitter buffer per peer.
    Device(String),
}

impl std::str::FromStr for AudioOutput {
    type Err = MediaIoError;
    /// Parses `none`, `default`, a WAV path (ends in `.wav` or contains `/`) or a device name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(MediaIoError::Format("empty audio output"));
        }
        if s == "none" {
            return Ok(Self::None);
        }
        if s.to_ascii_lowercase().ends_with(".wav") || s.contains('/') {
            return Ok(Self::Wav(PathBuf::from(s)));
        }
        Ok(Self::Device(s.to_owned()))
    }
}

impl AudioOutput {
    /// Checks, without opening it, that a device output names an existing playback device
    /// (see [`AudioInput::check`]). Other outputs pass.
    pub fn check(&self) -> Result<(), MediaIoError> {
        match self {
            Self::Device(name) => check_device(name, false),
            _ => Ok(()),
        }
    }
}

/// Produces 20 ms mono frames at 48 kHz.
pub trait AudioSource: Send {
    /// The next 960 samples.
    fn next_frame(&mut self) -> [i16; AUDIO_FRAME_SAMPLES];
}

/// A sine tone.
pub struct ToneSource {
    freq: f64,
    amplitude: f64,
    n: u64,
}

impl ToneSource {
    /// A tone of `freq` Hz at `amplitude` (0..=1 of full scale).
    pub fn new(freq: f32, amplitude: f32) -> Self {
        Self {
            freq: f64::from(freq),
            amplitude: f64::from(amplitude.clamp(0.0, 1.0)),
            n: 0,
        }
    }
}

impl AudioSource for ToneSource {
    fn next_frame(&mut self) -> [i16; AUDIO_FRAME_SAMPLES] {
        let mut out = [0i16; AUDIO_FRAME_SAMPLES];
        for s in out.iter_mut() {
            let t = self.n as f64 / f64::from(AUDIO_SAMPLE_RATE);
            let v = (2.0 * std::f64::consts::PI * self.freq * t).sin() * self.amplitude;
            *s = (v * f64::from(i16::MAX)) as i16;
            self.n = self.n.wrapping_add(1);
        }
        out
    }
}

/// A WAV file played in a loop (16-bit PCM at 48 kHz, mono or down-mixed stereo).
pub struct WavSource {
    samples: Vec<i16>,
    pos: usize,
}

/// Longest WAV file loaded into memory (10 minutes of 48 kHz mono).
pub const MAX_WAV_SAMPLES: usize = 48_000 * 600;

impl WavSource {
    /// Loads a WAV file.
    pub fn open(path: &Path) -> Result<Self, MediaIoError> {
        let reader = hound::WavReader::open(path).map_err(|e| MediaIoError::Wav(e.to_string()))?;
        let spec = reader.spec();
        if spec.sample_rate != AUDIO_SAMPLE_RATE
            || spec.bits_per_sample != 16
            || spec.sample_format != hound::SampleFormat::Int
            || !(1..=2).contains(&spec.channels)
        {
            return Err(MediaIoError::Format(
                "WAV must be 16-bit PCM, 48 kHz, mono or stereo",
            ));
        }
        let channels = usize::from(spec.channels);
        let mut samples = Vec::new();
        let mut acc = 0i32;
        for (i, s) in reader.into_samples::<i16>().enumerate() {
            let s = s.map_err(|e| MediaIoError::Wav(e.to_string()))?;
            acc += i32::from(s);
            if (i + 1) % channels == 0 {
                samples.push((acc / channels as i32) as i16);
                acc = 0;
            }
            if samples.len() >= MAX_WAV_SAMPLES {
                break;
            }
        }
        if samples.is_empty() {
            return Err(MediaIoError::Format("empty WAV file"));
        }
        Ok(Self { samples, pos: 0 })
    }
}

impl AudioSource for WavSource {
    fn next_frame(&mut self) -> [i16; AUDIO_FRAME_SAMPLES] {
        let mut out = [0i16; AUDIO_FRAME_SAMPLES];
        for s in out.iter_mut() {
            *s = self.samples.get(self.pos).copied().unwrap_or(0);
            self.pos = (self.pos + 1) % self.samples.len().max(1);
        }
        out
    }
}

/// Writes received audio to a 16-bit 48 kHz mono WAV file.
pub struct WavSink {
    writer: hound::WavWriter<BufWriter<File>>,
}

impl WavSink {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<Self, MediaIoError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: AUDIO_SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer =
            hound::WavWriter::create(path, spec).map_err(|e| MediaIoError::Wav(e.to_string()))?;
        Ok(Self { writer })
    }

    /// Appends samples.
    pub fn write(&mut self, pcm: &[i16]) -> Result<(), MediaIoError> {
        for s in pcm {
            self.writer
                .write_sample(*s)
                .map_err(|e| MediaIoError::Wav(e.to_string()))?;
        }
        Ok(())
    }

    /// Finishes the header and closes the file.
    pub fn finish(self) -> Result<(), MediaIoError> {
        self.writer
            .finalize()
            .map_err(|e| MediaIoError::Wav(e.to_string()))
    }
}

/// Where a call's outgoing video comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum VideoInput {
    /// The generated test pattern ([`PatternSource`]) at this size.
    Pattern {
        /// Width (even).
        width: u32,
        /// Height (even).
        height: u32,
    },
    /// A Y4M file (4:2:0), looped.
    Y4m(PathBuf),
}

impl std::str::FromStr for VideoInput {
    type Err = MediaIoError;
    /// Parses the CLI syntax `pattern`, `pattern:WxH` or a `.y4m` path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "pattern" {
            return Ok(Self::Pattern {
                width: 320,
                height: 240,
            });
        }
        if let Some(dims) = s.strip_prefix("pattern:") {
            let (w, h) = dims
                .split_once('x')
                .ok_or(MediaIoError::Format("pattern:WxH"))?;
            let width = w.parse().map_err(|_| MediaIoError::Format("pattern:WxH"))?;
            let height = h.parse().map_err(|_| MediaIoError::Format("pattern:WxH"))?;
            I420Frame::new(width, height).map_err(|_| MediaIoError::Format("bad pattern size"))?;
            return Ok(Self::Pattern { width, height });
        }
        Ok(Self::Y4m(PathBuf::from(s)))
    }
}

impl VideoInput {
    /// Opens the source.
    pub fn open(&self) -> Result<Box<dyn VideoSource>, MediaIoError> {
        Ok(match self {
            Self::Pattern { width, height } => Box::new(PatternSource::new(*width, *height)?),
            Self::Y4m(p) => Box::new(Y4mSource::open(p)?),
        })
    }
}

/// Produces video frames.
pub trait VideoSource: Send {
    /// Frame size.
    fn dimensions(&self) -> (u32, u32);
    /// The next frame.
    fn next_frame(&mut self) -> I420Frame;
}

/// The eight SMPTE-like bar colours of the test pattern, as (Y, U, V).
pub const PATTERN_BARS: [(u8, u8, u8); 8] = [
    (235, 128, 128), // white
    (210, 16, 146),  // yellow
    (170, 166, 16),  // cyan
    (145, 54, 34),   // green
    (106, 202, 222), // magenta
    (81, 90, 240),   // red
    (41, 240, 110),  // blue
    (16, 128, 128),  // black
];

/// Color bars in the top two thirds, a moving white box and a binary frame counter below.
pub struct PatternSource {
    width: u32,
    height: u32,
    n: u64,
}

impl PatternSource {
    /// A pattern of `width`x`height` (even, at least 64x48).
    pub fn new(width: u32, height: u32) -> Result<Self, MediaIoError> {
        if width < 64 || height < 48 {
            return Err(MediaIoError::Format("pattern must be at least 64x48"));
        }
        I420Frame::new(width, height).map_err(|_| MediaIoError::Format("bad pattern size"))?;
        Ok(Self {
            width,
            height,
            n: 0,
        })
    }

    /// Frame `n` of the pattern.
    pub fn frame(&self, n: u64) -> I420Frame {
        let (w, h) = (self.width, self.height);
        let mut f = I420Frame::new(w, h).unwrap_or_else(|_| unreachable!("checked in new"));
        let bars_h = h * 2 / 3;
        let box_size = h / 6;
        let travel = u64::from(w.saturating_sub(box_size).max(1));
        let box_x = (n * 4 % travel) as u32;
        for yy in 0..h {
            for xx in 0..w {
                let (yv, uv, vv) = if yy < bars_h {
                    PATTERN_BARS[((xx * 8) / w).min(7) as usize]
                } else if yy < bars_h + box_size && xx >= box_x && xx < box_x + box_size {
                    (235, 128, 128)
                } else if yy >= bars_h + box_size {
                    // 32-bit counter, one block per bit, MSB first.
                    let bit = (xx * 32) / w;
                    if (n >> (31 - bit)) & 1 == 1 {
                        (235, 128, 128)
                    } else {
                        (40, 128, 128)
                    }
                } else {
                    (60, 128, 128)
                };
                let i = (yy * w + xx) as usize;
                if let Some(p) = f.y.get_mut(i) {
                    *p = yv;
                }
                if xx % 2 == 0 && yy % 2 == 0 {
                    let c = ((yy / 2) * (w / 2) + xx / 2) as usize;
                    if let Some(p) = f.u.get_mut(c) {
                        *p = uv;
                    }
                    if let Some(p) = f.v.get_mut(c) {
                        *p = vv;
                    }
                }
            }
        }
        f
    }
}

impl VideoSource for PatternSource {
    fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn next_frame(&mut self) -> I420Frame {
        let f = self.frame(self.n);
        self.n += 1;
        f
    }
}

/// How closely a received frame shows the test pattern's color bars: the fraction (0..=1) of
/// the 8 bars whose mean Y, U and V are each within `tolerance` of the sent values.
pub fn pattern_bar_match(frame: &I420Frame, tolerance: u8) -> f64 {
    let (w, h) = (frame.width, frame.height);
    let bars_h = h * 2 / 3;
    let mut good = 0;
    for (i, &(ey, eu, ev)) in PATTERN_BARS.iter().enumerate() {
        let i = i as u32;
        // Sample the middle half of each bar, away from edges blurred by the codec.
        let x0 = i * w / 8 + w / 32;
        let x1 = (i + 1) * w / 8 - w / 32;
        let (mut sy, mut su, mut sv, mut n) = (0u64, 0u64, 0u64, 0u64);
        for yy in (bars_h / 8..bars_h * 7 / 8).step_by(2) {
            for xx in (x0..x1).step_by(2) {
                let (y, u, v) = frame.yuv(xx, yy);
                sy += u64::from(y);
                su += u64::from(u);
                sv += u64::from(v);
                n += 1;
            }
        }
        if n == 0 {
            continue;
        }
        let close = |s: u64, e: u8| (s / n).abs_diff(u64::from(e)) <= u64::from(tolerance);
        if close(sy, ey) && close(su, eu) && close(sv, ev) {
            good += 1;
        }
    }
    f64::from(good) / 8.0
}

/// A Y4M (YUV4MPEG2) 4:2:0 file, looped at the end.
pub struct Y4mSource {
    reader: BufReader<File>,
    path: PathBuf,
    width: u32,
    height: u32,
    data_start: u64,
}

impl Y4mSource {
    /// Opens a Y4M file and parses its header.
    pub fn open(path: &Path) -> Result<Self, MediaIoError> {
        let file = File::open(path)?;
        let mut reader = BufReader::new(file);
        let mut header = Vec::new();
        (&mut reader).take(1024).read_until(b'\n', &mut header)?;
        let text = std::str::from_utf8(&header).map_err(|_| MediaIoError::Format("Y4M header"))?;
        let mut parts = text.trim_end().split(' ');
        if parts.next() != Some("YUV4MPEG2") {
            return Err(MediaIoError::Format("not a YUV4MPEG2 file"));
        }
        let (mut width, mut height) = (0u32, 0u32);
        for p in parts {
            let (tag, val) = p.split_at(p.len().min(1));
            match tag {
                "W" => width = val.parse().map_err(|_| MediaIoError::Format("Y4M width"))?,
                "H" => {
                    height = val
                        .parse()
                        .map_err(|_| MediaIoError::Format("Y4M height"))?
                }
                "C" if !val.starts_with("420") => {
                    return Err(MediaIoError::Format("Y4M colour space must be 4:2:0"));
                }
                _ => {}
            }
        }
        if I420Frame::new(width, height).is_err() {
            return Err(MediaIoError::Format(
                "Y4M dimensions must be even and at most 4096",
            ));
        }
        let data_start = header.len() as u64;
        Ok(Self {
            reader,
            path: path.to_owned(),
            width,
            height,
            data_start,
        })
    }

    fn read_frame(&mut self) -> Result<Option<I420Frame>, MediaIoError> {
        let mut line = Vec::new();
        let n = (&mut self.reader).take(256).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if !line.starts_with(b"FRAME") {
            return Err(MediaIoError::Format("Y4M frame marker"));
        }
        let mut f = I420Frame::new(self.width, self.height)
            .map_err(|_| MediaIoError::Format("Y4M dimensions"))?;
        self.reader.read_exact(&mut f.y)?;
        self.reader.read_exact(&mut f.u)?;
        self.reader.read_exact(&mut f.v)?;
        Ok(Some(f))
    }
}

impl VideoSource for Y4mSource {
    fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn next_frame(&mut self) -> I420Frame {
        if let Ok(Some(f)) = self.read_frame() {
            return f;
        }
        // Loop: reopen at the first frame; on any failure produce black.
        if let Ok(file) = File::open(&self.path) {
            self.reader = BufReader::new(file);
            let mut skip = vec![0u8; usize::try_from(self.data_start).unwrap_or(0)];
            if self.reader.read_exact(&mut skip).is_ok()
                && let Ok(Some(f)) = self.read_frame()
            {
                return f;
            }
        }
        I420Frame::new(self.width, self.height)
            .unwrap_or_else(|_| unreachable!("dimensions checked in open"))
    }
}

/// Writes frames to a Y4M file.
pub struct Y4mSink {
    out: BufWriter<File>,
    width: u32,
    height: u32,
}

impl Y4mSink {
    /// Creates `path` for frames of `width`x`height` at `fps`.
    pub fn create(path: &Path, width: u32, height: u32, fps: u32) -> Result<Self, MediaIoError> {
        let mut out = BufWriter::new(File::create(path)?);
        writeln!(
            out,
            "YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg"
        )?;
        Ok(Self { out, width, height })
    }

    /// Appends a frame (frames of another size are skipped).
    pub fn write(&mut self, f: &I420Frame) -> Result<(), MediaIoError> {
        if f.width != self.width || f.height != self.height {
            return Ok(());
        }
        self.out.write_all(b"FRAME\n")?;
        self.out.write_all(&f.y)?;
        self.out.write_all(&f.u)?;
        self.out.write_all(&f.v)?;
        Ok(())
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<(), MediaIoError> {
        self.out.flush()?;
        Ok(())
    }
}

/// Writes one frame as a binary PPM (P6) image.
pub fn write_ppm(path: &Path, f: &I420Frame) -> Result<(), MediaIoError> {
    let mut out = BufWriter::new(File::create(path)?);
    write!(out, "P6\n{} {}\n255\n", f.width, f.height)?;
    out.write_all(&f.to_rgb())?;
    out.flush()?;
    Ok(())
}

/// Opens the default microphone. Needs the `devices` feature; without it, a clear error.
pub fn open_microphone() -> Result<Box<dyn AudioSource>, MediaIoError> {
    open_capture_device("default")
}

/// Opens the default camera. Needs the `devices` feature; without it, a clear error.
pub fn open_camera() -> Result<Box<dyn VideoSource>, MediaIoError> {
    Err(devices_error())
}

fn devices_error() -> MediaIoError {
    if cfg!(feature = "devices") {
        MediaIoError::DeviceNotImplemented
    } else {
        MediaIoError::DevicesUnavailable
    }
}

/// Dominant frequency of `samples` (48 kHz) among `candidates`, by the Goertzel algorithm:
/// returns the candidate with the most energy and its share of the total candidate energy.
pub fn dominant_frequency(samples: &[i16], candidates: &[f64]) -> Option<(f64, f64)> {
    let n = samples.len();
    if n == 0 || candidates.is_empty() {
        return None;
    }
    let mut powers = Vec::with_capacity(candidates.len());
    for &f in candidates {
        let k = (0.5 + n as f64 * f / f64::from(AUDIO_SAMPLE_RATE)).floor();
        let w = 2.0 * std::f64::consts::PI * k / n as f64;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in samples {
            let s0 = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        powers.push(s1 * s1 + s2 * s2 - coeff * s1 * s2);
    }
    let total: f64 = powers.iter().sum();
    let (i, p) = powers
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal))?;
    let f = *candidates.get(i)?;
    Some((f, if total > 0.0 { p / total } else { 0.0 }))
}
