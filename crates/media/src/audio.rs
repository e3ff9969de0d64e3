//! Device-independent audio plumbing for real microphones and speakers: down-mixing, a
//! streaming linear resampler, RTP sequence unwrapping and the playback jitter buffer.
//!
//! All of it is plain computation (no I/O, no clocks), so it is tested without a device; the
//! cpal glue in `device` (feature `devices`) runs it inside the device callbacks.
//!
//! Why a linear resampler of our own rather than `rubato`: calls carry 48 kHz mono voice
//! through Opus, most devices (and the ALSA PulseAudio plugin) run at 44.1 or 48 kHz, and at
//! those ratios linear interpolation keeps a voice band tone's frequency exactly (it is a
//! time-base change) with small, inaudible-for-voice images; it needs no allocation per call,
//! no extra dependency and no FFT latency. A device at 96 kHz or more would alias above
//! 24 kHz, which Opus at 48 kHz cuts anyway.

use std::collections::BTreeMap;

use crate::codec::AUDIO_FRAME_SAMPLES;

/// One 20 ms frame of 48 kHz mono audio.
pub type Frame = [i16; AUDIO_FRAME_SAMPLES];

/// Averages interleaved `channels`-channel samples into mono, appending to `out`.
/// A trailing partial frame is ignored; `channels == 0` appends nothing.
pub fn downmix_into(interleaved: &[f32], channels: usize, out: &mut Vec<f32>) {
    if channels == 0 {
        return;
    }
    let scale = 1.0 / channels as f32;
    for frame in interleaved.chunks_exact(channels) {
        out.push(frame.iter().sum::<f32>() * scale);
    }
}

/// A streaming linear-interpolation resampler (mono, `f32`). Feed chunks of any size; the
/// output is continuous across chunks.
#[derive(Debug, Clone)]
pub struct LinearResampler {
    /// Input samples advanced per output sample (`from / to`).
    step: f64,
    /// Position of the next output sample, in input samples, relative to `prev`.
    pos: f64,
    /// The last input sample of the previous chunk.
    prev: f32,
}

impl LinearResampler {
    /// A resampler from `from` Hz to `to` Hz. Zero rates are treated as 1 Hz (no panic).
    pub fn new(from: u32, to: u32) -> Self {
        Self {
            step: f64::from(from.max(1)) / f64::from(to.max(1)),
            pos: 1.0,
            prev: 0.0,
        }
    }

    /// True when input and output rates are equal (samples pass through unchanged).
    pub fn is_identity(&self) -> bool {
        (self.step - 1.0).abs() < f64::EPSILON
    }

    /// Resamples `input`, appending the output samples to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if input.is_empty() {
            return;
        }
        if self.is_identity() {
            out.extend_from_slice(input);
            self.prev = input[input.len() - 1];
            return;
        }
        // Virtual signal v[0] = prev, v[k] = input[k - 1] for k in 1..=n.
        let n = input.len();
        let at = |k: usize| -> f32 {
            if k == 0 {
                self.prev
            } else {
                input.get(k - 1).copied().unwrap_or(0.0)
            }
        };
        while self.pos < n as f64 {
            let i = self.pos.floor();
            let frac = (self.pos - i) as f32;
            let i = i as usize;
            let (a, b) = (at(i), at(i + 1));
            out.push(a + (b - a) * frac);
            self.pos += self.step;
        }
        self.pos -= n as f64;
        self.prev = input[n - 1];
    }
}

/// Converts a float sample (nominally -1..=1) to `i16`, clamping.
pub fn to_i16(x: f32) -> i16 {
    (x.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16
}

/// Extends 16-bit RTP sequence numbers to a monotonic `u64` (wrap-around and reordering within
/// half the sequence space are handled).
#[derive(Debug, Clone, Default)]
pub struct SeqUnwrapper {
    last: Option<u64>,
}

impl SeqUnwrapper {
    /// The extended value of `seq`.
    pub fn unwrap(&mut self, seq: u16) -> u64 {
        let Some(last) = self.last else {
            // Start high so reordered packets before the first one do not underflow.
            let ext = (1u64 << 32) + u64::from(seq);
            self.last = Some(ext);
            return ext;
        };
        let delta = seq.wrapping_sub(last as u16) as i16;
        let ext = last.saturating_add_signed(i64::from(delta));
        if ext > last {
            self.last = Some(ext);
        }
        ext
    }
}

/// Counters of a [`JitterBuffer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Frames played as received.
    pub played: u64,
    /// Frames missing at their turn, replaced by silence.
    pub concealed: u64,
    /// Frames that arrived after their turn (dropped).
    pub late: u64,
    /// Frames dropped because the buffer was too far behind (overflow).
    pub dropped: u64,
    /// Duplicate frames ignored.
    pub duplicates: u64,
}

/// A playback jitter buffer of 20 ms frames keyed by (extended) sequence number.
///
/// It waits until `target` frames are buffered before playing (the fixed target depth),
/// plays frames in sequence order, puts silence in place of a missing frame, drops late
/// frames and duplicates, and when a frame arrives `capacity` or more ahead of the playout
/// point (the consumer fell behind) skips ahead to `target` frames behind it, dropping the
/// oldest. It never holds more than `capacity` frames. When it runs dry it re-buffers to
/// `target` before playing again.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    target: usize,
    capacity: usize,
    frames: BTreeMap<u64, Box<Frame>>,
    next: Option<u64>,
    playing: bool,
    stats: JitterStats,
}

/// Default target depth: 3 frames (60 ms).
pub const JITTER_TARGET_FRAMES: usize = 3;
/// Default capacity: 10 frames (200 ms).
pub const JITTER_CAPACITY_FRAMES: usize = 10;

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new(JITTER_TARGET_FRAMES, JITTER_CAPACITY_FRAMES)
    }
}

impl JitterBuffer {
    /// A buffer that plays once `target` frames are queued and holds at most `capacity`
    /// (at least `target + 1`; both at least 1).
    pub fn new(target: usize, capacity: usize) -> Self {
        let target = target.max(1);
        Self {
            target,
            capacity: capacity.max(target + 1),
            frames: BTreeMap::new(),
            next: None,
            playing: false,
            stats: JitterStats::default(),
        }
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Queues frame `seq`.
    pub fn push(&mut self, seq: u64, frame: &Frame) {
        if let Some(next) = self.next {
            if seq < next {
                self.stats.late += 1;
                return;
            }
            // Too far behind: skip ahead so `seq` is `target` frames from the playout point.
            let behind = seq - next;
            if behind >= self.capacity as u64 {
                let new_next = seq + 1 - self.target as u64;
                let keep = self.frames.split_off(&new_next);
                self.stats.dropped += self.frames.len() as u64;
                self.frames = keep;
                self.next = Some(new_next);
            }
        }
        if self.frames.contains_key(&seq) {
            self.stats.duplicates += 1;
            return;
        }
        self.frames.insert(seq, Box::new(*frame));
        while self.frames.len() > self.capacity {
            if self.frames.pop_first().is_some() {
                self.stats.dropped += 1;
            }
            if let (Some(next), Some((&first, _))) = (self.next, self.frames.first_key_value()) {
                self.next = Some(next.max(first));
            }
        }
    }

    /// The next 20 ms to play: a frame, or silence while buffering or in place of a lost one.
    pub fn pop(&mut self) -> Frame {
        let silence = [0i16; AUDIO_FRAME_SAMPLES];
        if !self.playing {
            if self.frames.len() < self.target {
                return silence;
            }
            self.playing = true;
            let first = self.frames.first_key_value().map(|(k, _)| *k);
            self.next = match (self.next, first) {
                (Some(n), Some(f)) => Some(n.max(f)),
                (_, f) => f,
            };
        }
        let Some(n) = self.next else {
            return silence;
        };
        self.next = Some(n + 1);
        match self.frames.remove(&n) {
            Some(f) => {
                self.stats.played += 1;
                *f
            }
            None => {
                self.stats.concealed += 1;
                if self.frames.is_empty() {
                    self.playing = false;
                }
                silence
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::source::dominant_frequency;

    fn tone(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() as f32 * 0.5
            })
            .collect()
    }

    fn frame(v: i16) -> Frame {
        [v; AUDIO_FRAME_SAMPLES]
    }

    /// Resampling 44.1 kHz and 16 kHz tones to 48 kHz in odd-sized chunks keeps the
    /// frequency (Goertzel at 48 kHz) and the length ratio; 48 kHz -> 44.1 kHz -> 48 kHz too.
    #[test]
    fn resampler_preserves_frequency() {
        let candidates = [300.0, 440.0, 500.0, 1000.0, 1500.0];
        for (rate, freq) in [(44_100u32, 440.0), (16_000, 1000.0), (96_000, 440.0)] {
            let input = tone(freq, rate, rate as usize); // 1 s
            let mut r = LinearResampler::new(rate, 48_000);
            let mut out = Vec::new();
            for chunk in input.chunks(377) {
                r.process(chunk, &mut out);
            }
            assert!(
                out.len().abs_diff(48_000) <= 2,
                "{rate}: {} samples",
                out.len()
            );
            let pcm: Vec<i16> = out.iter().map(|&x| to_i16(x)).collect();
            let (f, share) = dominant_frequency(&pcm, &candidates).unwrap();
            assert_eq!(f, freq, "{rate} Hz input");
            assert!(share > 0.99, "{rate} Hz input: share {share}");
        }
        // Round trip through a device rate.
        let input = tone(500.0, 48_000, 48_000);
        let (mut down, mut up) = (
            LinearResampler::new(48_000, 44_100),
            LinearResampler::new(44_100, 48_000),
        );
        let (mut mid, mut out) = (Vec::new(), Vec::new());
        down.process(&input, &mut mid);
        up.process(&mid, &mut out);
        let pcm: Vec<i16> = out.iter().map(|&x| to_i16(x)).collect();
        assert_eq!(dominant_frequency(&pcm, &candidates).unwrap().0, 500.0);
    }

    /// A 440 Hz tone resampled to 44.1 kHz is not found at 440 Hz when read as 48 kHz: the
    /// Goertzel check can fail (it would catch a resampler that did nothing).
    #[test]
    fn goertzel_detects_a_wrong_rate() {
        let input = tone(440.0, 48_000, 48_000);
        let mut r = LinearResampler::new(48_000, 32_000);
        let mut out = Vec::new();
        r.process(&input, &mut out);
        let pcm: Vec<i16> = out.iter().map(|&x| to_i16(x)).collect();
        // Played back at 48 kHz, 440 Hz sampled at 32 kHz sounds at 660 Hz.
        let (f, _) = dominant_frequency(&pcm, &[440.0, 660.0]).unwrap();
        assert_eq!(f, 660.0);
    }

    #[test]
    fn downmix_averages_channels() {
        let mut out = Vec::new();
        downmix_into(&[1.0, 0.0, 0.5, 0.5, 0.25], 2, &mut out);
        assert_eq!(out, vec![0.5, 0.5]);
        downmix_into(&[1.0], 0, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn seq_unwrapper_handles_wrap_and_reorder() {
        let mut u = SeqUnwrapper::default();
        let a = u.unwrap(65_534);
        assert_eq!(u.unwrap(65_535), a + 1);
        assert_eq!(u.unwrap(1), a + 3);
        assert_eq!(u.unwrap(0), a + 2); // reordered across the wrap
        assert_eq!(u.unwrap(2), a + 4);
    }

    /// Frames pushed out of order within the target depth play in sequence order.
    #[test]
    fn jitter_buffer_reorders() {
        let mut jb = JitterBuffer::new(3, 10);
        jb.push(12, &frame(3));
        jb.push(10, &frame(1));
        assert_eq!(jb.pop(), frame(0), "still buffering below the target depth");
        jb.push(11, &frame(2));
        jb.push(13, &frame(4));
        for v in 1..=4 {
            assert_eq!(jb.pop(), frame(v));
        }
        assert_eq!(jb.stats().played, 4);
        // A frame older than the playout point is late and dropped.
        jb.push(11, &frame(9));
        assert_eq!(jb.stats().late, 1);
    }

    /// A lost frame is replaced by silence and playback continues with the next one.
    #[test]
    fn jitter_buffer_conceals_loss_with_silence() {
        let mut jb = JitterBuffer::new(2, 10);
        for (seq, v) in [(0, 1), (1, 2), (3, 4), (4, 5)] {
            jb.push(seq, &frame(v));
        }
        assert_eq!(jb.pop(), frame(1));
        assert_eq!(jb.pop(), frame(2));
        assert_eq!(jb.pop(), frame(0), "frame 2 was lost");
        assert_eq!(jb.pop(), frame(4));
        assert_eq!(jb.pop(), frame(5));
        assert_eq!(jb.stats().concealed, 1);
        // Empty: silence, then it re-buffers to the target depth.
        assert_eq!(jb.pop(), frame(0));
        jb.push(6, &frame(7));
        assert_eq!(
            jb.pop(),
            frame(0),
            "one frame is below the target depth of 2"
        );
        jb.push(7, &frame(8));
        assert_eq!(jb.pop(), frame(7));
        assert_eq!(jb.pop(), frame(8));
    }

    /// A consumer that falls far behind (or a burst) drops the oldest frames: the buffer
    /// never holds more than its capacity and playback resumes near the newest frame.
    #[test]
    fn jitter_buffer_overflow_drops_and_stays_bounded() {
        let mut jb = JitterBuffer::new(3, 10);
        for seq in 0..1000u64 {
            jb.push(seq, &frame((seq % 1000) as i16));
            assert!(jb.len() <= 10, "len {} at {seq}", jb.len());
        }
        assert_eq!(jb.stats().dropped, 990);
        assert_eq!(jb.pop(), frame(990));
        // Now playing at 991: a frame 10 or more ahead of it skips ahead to 3 behind it.
        jb.push(2000, &frame(77));
        assert!(jb.len() <= 10);
        assert_eq!(jb.pop(), frame(0), "1998 is missing");
        assert_eq!(jb.pop(), frame(0), "1999 is missing");
        assert_eq!(jb.pop(), frame(77));
        assert!(jb.stats().dropped >= 999);
    }

    #[test]
    fn jitter_buffer_ignores_duplicates() {
        let mut jb = JitterBuffer::new(1, 4);
        jb.push(5, &frame(1));
        jb.push(5, &frame(2));
        assert_eq!(jb.stats().duplicates, 1);
        assert_eq!(jb.pop(), frame(1));
    }
}
