//! Measurement plumbing shared by both servers: the completion tracker (closed loop), a
//! lock-free latency histogram, the payload header and a CPU-time reader.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Bytes at the start of every benchmark payload: message id and send time (both u64 LE).
pub const HEADER: usize = 16;

/// Size of the completion ring. The closed loop keeps at most `window` messages in flight
/// and the open loop runs far below saturation, so ids a ring apart never overlap.
const RING: usize = 1 << 16;

/// Builds a payload of `size` bytes (at least [`HEADER`]) carrying `id` and `sent_ns`.
pub fn payload(size: usize, id: u64, sent_ns: u64) -> Vec<u8> {
    let mut p = vec![0x5a; size.max(HEADER)];
    p[..8].copy_from_slice(&id.to_le_bytes());
    p[8..HEADER].copy_from_slice(&sent_ns.to_le_bytes());
    p
}

/// Reads `(id, sent_ns)` back from a payload.
pub fn parse(p: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let ts = u64::from_le_bytes(p.get(8..HEADER)?.try_into().ok()?);
    Some((id, ts))
}

/// Counts deliveries per message, tells the sender when a message reached every receiver,
/// and records post-to-delivery latency while a measurement is on.
pub struct Tracker {
    /// Receivers per message.
    n: u32,
    base: Instant,
    counters: Box<[AtomicU32]>,
    /// Messages delivered to all `n` receivers.
    pub done: AtomicU64,
    /// Woken whenever a message completes.
    pub notify: Notify,
    /// Deliveries seen while recording.
    pub deliveries: AtomicU64,
    /// Frames a receiver could not interpret (should stay 0).
    pub bad_frames: AtomicU64,
    /// Group entries a receiver got at or below a seq it already had (a duplicate or an
    /// out-of-order delivery; should stay 0). Not counted as deliveries.
    pub repeated: AtomicU64,
    /// Ack requests the receivers sent (all phases).
    pub acks: AtomicU64,
    /// Read bursts of the receivers (a wake-up that found frames).
    pub bursts: AtomicU64,
    recording: AtomicBool,
    /// Latency histogram in nanoseconds.
    pub hist: Histogram,
}

impl Tracker {
    /// A tracker for messages going to `n` receivers.
    pub fn new(n: u32) -> Self {
        Tracker {
            n,
            base: Instant::now(),
            counters: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            done: AtomicU64::new(0),
            notify: Notify::new(),
            deliveries: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            bursts: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            hist: Histogram::new(),
        }
    }

    /// Nanoseconds since the tracker was made (the payload clock).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A receiver got message `id`, sent at `sent_ns`.
    pub fn on_delivery(&self, id: u64, sent_ns: u64) {
        if self.recording.load(Ordering::Relaxed) {
            self.deliveries.fetch_add(1, Ordering::Relaxed);
            self.hist.record(self.now_ns().saturating_sub(sent_ns));
        }
        let slot = &self.counters[(id as usize) % RING];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            slot.store(0, Ordering::Release);
            self.done.fetch_add(1, Ordering::AcqRel);
            self.notify.notify_one();
        }
    }

    /// Starts a measurement: clears the histogram and delivery count.
    pub fn start_recording(&self) {
        self.hist.clear();
        self.deliveries.store(0, Ordering::Relaxed);
        self.recording.store(true, Ordering::Release);
    }

    /// Stops recording.
    pub fn stop_recording(&self) {
        self.recording.store(false, Ordering::Release);
    }

    /// Waits until `sent` messages are complete (or `timeout` passes; then returns false).
    pub async fn drain(&self, sent: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.done.load(Ordering::Acquire) < sent {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

/// Sub-buckets per power of two: relative error below 1/128.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram with atomic buckets (HdrHistogram-like, < 1% error).
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(v: u64) -> usize {
        let msb = 63 - v.max(1).leading_zeros();
        if msb < SUB_BITS {
            v as usize
        } else {
            let shift = msb - SUB_BITS;
            let sub = ((v >> shift) as usize) & (SUB - 1);
            (shift as usize + 1) * SUB + sub
        }
    }

    fn value(i: usize) -> u64 {
        if i < SUB {
            i as u64
        } else {
            let shift = (i / SUB - 1) as u32;
            let sub = (i % SUB) as u64;
            // Middle of the bucket.
            ((SUB as u64 + sub) << shift) + ((1u64 << shift) >> 1)
        }
    }

    /// Records one value.
    pub fn record(&self, v: u64) {
        if let Some(b) = self.buckets.get(Self::index(v)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn clear(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..=1), in nanoseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::value(i);
            }
        }
        0
    }
}

/// CPU time (user + system) used so far by `(server side, load generator)`. The load
/// generator is the threads named `fanout-load*` plus the main thread; the server side is
/// every other thread of the process (threads that already exited count via the process
/// total).
pub fn cpu_times() -> (Duration, Duration) {
    let total = proc_ticks("/proc/self/stat");
    let mut client = 0;
    let pid = std::process::id().to_string();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let name = t.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if name == pid || comm.starts_with("fanout-load") {
                client += proc_ticks(&t.path().join("stat").to_string_lossy());
            }
        }
    }
    (
        ticks_to_duration(total.saturating_sub(client)),
        ticks_to_duration(client),
    )
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // Linux reports these in USER_HZ, which is 100 on every mainstream configuration.
    Duration::from_millis(ticks * 10)
}

/// utime + stime from a `/proc/.../stat` file.
fn proc_ticks(path: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0;
    };
    // The command name may contain spaces; fields resume after the last ')'.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the full line, utime 14 and stime 15.
    let get = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}
