//! Operational endpoints on the relay's HTTPS listener: `GET /health` for load balancers and
//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! The counters are plain atomics bumped on the hot paths without locks: posts and store
//! batch latency once per batch in the post writer, deliveries once per fan-out batch (and
//! per backlog frame), acks once per ack request, blob bytes once per transferred chunk.
//! Gauges (connections, devices online, outbound queue bytes) are read when scraped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cove_wire::DeviceId;
use tokio::sync::Semaphore;

use crate::shared::Shared;

/// How long `/health` waits for its store probe before it answers `503`.
pub(crate) const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many `/health` store probes may run at once; more concurrent requests get `503`
/// without touching the store (bounded work however many probes arrive).
const HEALTH_PROBES_AT_ONCE: usize = 4;

/// Upper bounds (seconds) of the store batch latency histogram's buckets (`+Inf` besides).
const BATCH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The relay's counters (one per relay, shared by every connection).
pub(crate) struct Metrics {
    started: Instant,
    /// Posts the store accepted (appended).
    pub posts_accepted: AtomicU64,
    /// `Ack` and `QuietAck` requests received.
    pub acks: AtomicU64,
    /// Bus notices published (cluster mode).
    pub bus_published: AtomicU64,
    /// Other nodes' bus notices received.
    pub bus_received: AtomicU64,
    /// Bus notices not published (the queue to the publisher was full, or NATS refused).
    pub bus_dropped: AtomicU64,
    /// Bus notices received that did not decode.
    pub bus_malformed: AtomicU64,
    batch: Histogram,
    /// `/health` store probes running (a permit is held until the store call returns, even
    /// after the request gave up waiting, so a hung store holds at most this many threads).
    probes: Arc<Semaphore>,
}

impl Metrics {
    /// Counters at zero, uptime from now.
    pub fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            posts_accepted: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            bus_published: AtomicU64::new(0),
            bus_received: AtomicU64::new(0),
            bus_dropped: AtomicU64::new(0),
            bus_malformed: AtomicU64::new(0),
            batch: Histogram::new(),
            probes: Arc::new(Semaphore::new(HEALTH_PROBES_AT_ONCE)),
        }
    }

    /// Records one store batch append that took `took`.
    pub fn observe_batch(&self, took: Duration) {
        self.batch.observe(took);
    }
}

/// A fixed-bucket histogram of durations, lock-free.
struct Histogram {
    /// Cumulative counts are computed when rendered; each slot counts its own bucket.
    buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = BATCH_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BATCH_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (bucket, le) in self.buckets.iter().zip(BATCH_BUCKETS) {
            cumulative = cumulative.saturating_add(bucket.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        if let Some(inf) = self.buckets.last() {
            cumulative = cumulative.saturating_add(inf.load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Why `/health` is not ok.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Unhealthy {
    /// The relay is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The store did not answer its probe in time.
    #[error("store timed out")]
    StoreTimeout,
    /// The store answered its probe with an error.
    #[error("store failed")]
    StoreFailed,
    /// Too many health probes are running at once.
    #[error("busy")]
    Busy,
}

/// Checks that the relay serves: not shutting down, and its store answers a primary-key
/// look-up within [`HEALTH_PROBE_TIMEOUT`].
pub(crate) async fn health(shared: &Shared) -> Result<(), Unhealthy> {
    if *shared.shutdown.borrow() {
        return Err(Unhealthy::ShuttingDown);
    }
    let Ok(permit) = Arc::clone(&shared.metrics.probes).try_acquire_owned() else {
        return Err(Unhealthy::Busy);
    };
    let probe = crate::shared::blocking(shared, move |store| {
        let _permit = permit;
        store.device(DeviceId(0)).map(|_| ())
    });
    match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health probe: the store failed");
            Err(Unhealthy::StoreFailed)
        }
        Err(_) => Err(Unhealthy::StoreTimeout),
    }
}

/// The metrics in the Prometheus text format.
pub(crate) fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let mut out = String::with_capacity(4096);
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    one(
        "cove_relay_uptime_seconds",
        "gauge",
        "Seconds since the relay started.",
        format!("{:.3}", m.started.elapsed().as_secs_f64()),
    );
    one(
        "cove_relay_connections_open",
        "gauge",
        "TCP connections being served (HTTP and WebSocket, authenticated or not).",
        shared.connections.total().to_string(),
    );
    one(
        "cove_relay_devices_online",
        "gauge",
        "Authenticated device connections.",
        shared.hub.online_count().to_string(),
    );
    one(
        "cove_relay_posts_accepted_total",
        "counter",
        "Posts appended to the store.",
        m.posts_accepted.load(Ordering::Relaxed).to_string(),
    );
    one(
        "cove_relay_deliveries_total",
        "counter",
        "Entries queued to device connections (live fan-out and backlog).",
        shared.hub.deliveries().to_string(),
    );
    one(
        "cove_relay_acks_total",
        "counter",
        "Ack and QuietAck requests received.",
        m.acks.load(Ordering::Relaxed).to_string(),
    );
    one(
        "cove_relay_outbound_queue_bytes",
        "gauge",
        "Bytes queued to authenticated connections and not yet written to their sockets.",
        shared.hub.queued_bytes().to_string(),
    );
    if shared.hub.is_clustered() {
        let _ = writeln!(
            out,
            "# HELP cove_relay_bus_notices_total Bus notices between relay nodes: published, \
             received from other nodes, dropped before publishing, malformed on receipt."
        );
        let _ = writeln!(out, "# TYPE cove_relay_bus_notices_total counter");
        for (what, counter) in [
            ("published", &m.bus_published),
            ("received", &m.bus_received),
            ("dropped", &m.bus_dropped),
            ("malformed", &m.bus_malformed),
        ] {
            let n = counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "cove_relay_bus_notices_total{{what=\"{what}\"}} {n}");
        }
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        one(
            "cove_relay_resyncs_total",
            "counter",
            "Backlog re-reads of live devices (a gap, a lost notice, a large entry).",
            shared.hub.resyncs().to_string(),
        );
    }
    let (up, down) = shared.blob.transferred();
    let _ = writeln!(
        out,
        "# HELP cove_relay_blob_bytes_total Blob bytes received (up) and sent (down)."
    );
    let _ = writeln!(out, "# TYPE cove_relay_blob_bytes_total counter");
    let _ = writeln!(out, "cove_relay_blob_bytes_total{{direction=\"up\"}} {up}");
    let _ = writeln!(
        out,
        "cove_relay_blob_bytes_total{{direction=\"down\"}} {down}"
    );
    m.batch.render(
        &mut out,
        "cove_relay_store_batch_seconds",
        "Time the post writer spends appending one batch to the store.",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 10.0033\n"), "{out}");
    }
}
