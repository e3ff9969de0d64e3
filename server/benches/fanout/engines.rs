//! The engines of the scale-out runs and what the bench reads from them: a throwaway
//! PostgreSQL cluster (`cove_test_utils::postgres::PgCluster`, one database per relay
//! target) and a `nats-server` with its monitoring port, both optionally pinned to the
//! server core; their CPU time from `/proc/<pid>/stat` (PostgreSQL: the postmaster and every
//! child), PostgreSQL's `pg_stat_database` counters and nats-server's `/varz` counters.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cove_test_utils::postgres::{PgCluster, PgDatabase};

/// PostgreSQL and NATS for one run.
pub struct Engines {
    pg: PgCluster,
    postmaster: u32,
    nats: Nats,
}

impl Engines {
    /// Starts both (pinned to CPU 0 with the relays when `pin`).
    pub fn start(pin: bool) -> Result<Engines> {
        let pg = PgCluster::start();
        let postmaster = find_postmaster(pg.port())
            .ok_or_else(|| anyhow!("no postmaster listening on port {}", pg.port()))?;
        let nats = Nats::start()?;
        // The postmaster runs in its data directory; the cluster's log is next to it.
        if let Ok(data) = std::fs::read_link(format!("/proc/{postmaster}/cwd")) {
            let log = data.parent().map(|d| d.join("log")).unwrap_or_default();
            eprintln!(
                "fanout: PostgreSQL on port {} (log {}), nats-server at {}",
                pg.port(),
                log.display(),
                nats.url()
            );
        }
        if pin {
            let mut pids = vec![postmaster, nats.pid()];
            pids.extend(children(postmaster));
            for pid in pids {
                let status = Command::new("taskset")
                    .args(["-a", "-p", "-c", "0", &pid.to_string()])
                    .stdout(Stdio::null())
                    .status()
                    .context("running taskset")?;
                if !status.success() {
                    bail!("taskset failed for pid {pid}");
                }
            }
        }
        Ok(Engines {
            pg,
            postmaster,
            nats,
        })
    }

    /// A fresh database.
    pub fn database(&self) -> PgDatabase<'_> {
        self.pg.database()
    }

    /// The NATS URL.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// A snapshot of everything the engines count, with `db`'s statistics.
    pub fn snapshot(&self, db: &PgStats) -> Result<EngineSnapshot> {
        let (commits, rows) = db.read()?;
        let (nats_in, nats_out) = self.nats.varz()?;
        Ok(EngineSnapshot {
            pg_cpu: pg_cpu(self.postmaster),
            nats_cpu: ticks(proc_ticks(self.nats.pid(), false)),
            pg_commits: commits,
            pg_rows: rows,
            nats_in,
            nats_out,
        })
    }
}

/// What the engines counted at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineSnapshot {
    /// PostgreSQL's CPU time (postmaster and children).
    pub pg_cpu: Duration,
    /// nats-server's CPU time.
    pub nats_cpu: Duration,
    /// `xact_commit` of the database.
    pub pg_commits: u64,
    /// `tup_inserted + tup_updated + tup_deleted` of the database.
    pub pg_rows: u64,
    /// nats-server's `in_msgs`.
    pub nats_in: u64,
    /// nats-server's `out_msgs`.
    pub nats_out: u64,
}

impl EngineSnapshot {
    /// `self - earlier`.
    pub fn since(&self, earlier: &EngineSnapshot) -> EngineSnapshot {
        EngineSnapshot {
            pg_cpu: self.pg_cpu.saturating_sub(earlier.pg_cpu),
            nats_cpu: self.nats_cpu.saturating_sub(earlier.nats_cpu),
            pg_commits: self.pg_commits.saturating_sub(earlier.pg_commits),
            pg_rows: self.pg_rows.saturating_sub(earlier.pg_rows),
            nats_in: self.nats_in.saturating_sub(earlier.nats_in),
            nats_out: self.nats_out.saturating_sub(earlier.nats_out),
        }
    }
}

/// A connection reading one database's `pg_stat_database` row.
pub struct PgStats {
    client: Mutex<Option<postgres::Client>>,
}

impl PgStats {
    /// Connects to `url`.
    pub fn connect(url: &str) -> Result<PgStats> {
        let client = outside_tokio(|| postgres::Client::connect(url, postgres::NoTls))?
            .with_context(|| "connecting to PostgreSQL for its statistics")?;
        Ok(PgStats {
            client: Mutex::new(Some(client)),
        })
    }

    /// `(xact_commit, tup_inserted + tup_updated + tup_deleted)` of the current database.
    /// PostgreSQL's backends publish their counters at most once a second while busy (and
    /// within 10 s when idle), so these lag by up to a second.
    fn read(&self) -> Result<(u64, u64)> {
        let mut client = self
            .client
            .lock()
            .map_err(|_| anyhow!("statistics connection poisoned"))?;
        let client: &mut postgres::Client = client
            .as_mut()
            .ok_or_else(|| anyhow!("statistics connection closed"))?;
        let row = outside_tokio(|| {
            client.query_one(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted \
                 FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
        })??;
        let commits: i64 = row.get(0);
        let rows: i64 = row.get(1);
        Ok((commits.max(0) as u64, rows.max(0) as u64))
    }
}

impl Drop for PgStats {
    fn drop(&mut self) {
        // Closing the client blocks on its runtime: not on a thread of the bench's.
        if let Ok(mut client) = self.client.lock() {
            let client = client.take();
            let _ = outside_tokio(move || drop(client));
        }
    }
}

/// Runs `f` on a thread of its own: the synchronous `postgres` client runs a runtime of its
/// own, which may not be started from a thread driving the bench's.
fn outside_tokio<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .map_err(|_| anyhow!("the statistics thread panicked"))
    })
}

/// A `nats-server` on 127.0.0.1 with its HTTP monitoring port; killed on drop.
struct Nats {
    child: Child,
    port: u16,
    monitor: u16,
}

impl Nats {
    fn start() -> Result<Nats> {
        let bin = std::env::var("COVE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        for _ in 0..5 {
            let (port, monitor) = (free_port()?, free_port()?);
            let mut child = Command::new(&bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &monitor.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("running {bin}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", monitor)).is_ok()
                {
                    return Ok(Nats {
                        child,
                        port,
                        monitor,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("nats-server did not start")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `(in_msgs, out_msgs)` from `/varz`.
    fn varz(&self) -> Result<(u64, u64)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok((json_u64(&body, "in_msgs")?, json_u64(&body, "out_msgs")?))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unsigned integer after `"key":` in a JSON text.
fn json_u64(text: &str, key: &str) -> Result<u64> {
    let pat = format!("\"{key}\":");
    let at = text
        .find(&pat)
        .ok_or_else(|| anyhow!("{key} missing from /varz"))?;
    let digits: String = text[at + pat.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .map_err(|_| anyhow!("{key} in /varz is not a number"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Every process id with its `/proc/<pid>/stat` text.
fn processes() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((pid, stat))
        })
        .collect()
}

/// The fields of a stat line after the command name (field 3, the state, first).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default()
}

/// Field `i` (1-based, as in proc(5)) of a stat line.
fn stat_field(stat: &str, i: usize) -> u64 {
    stat_fields(stat)
        .get(i - 3)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// The postmaster started with `-p port`.
fn find_postmaster(port: u16) -> Option<u32> {
    let port = port.to_string();
    processes().into_iter().find_map(|(pid, _)| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_pg = args
            .first()
            .is_some_and(|a| a.ends_with(b"/postgres") || *a == b"postgres");
        let on_port = args
            .windows(2)
            .any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
        (is_pg && on_port).then_some(pid)
    })
}

/// The children of `parent`.
fn children(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, stat)| stat_field(stat, 4) == u64::from(parent))
        .map(|(pid, _)| pid)
        .collect()
}

/// utime + stime of `pid` (with its waited-for children's when `reaped`), in ticks.
fn proc_ticks(pid: u32, reaped: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let own = stat_field(&stat, 14) + stat_field(&stat, 15);
    if reaped {
        own + stat_field(&stat, 16) + stat_field(&stat, 17)
    } else {
        own
    }
}

/// CPU time of the postmaster, its live children and the children it has reaped.
fn pg_cpu(postmaster: u32) -> Duration {
    let live: u64 = processes()
        .iter()
        .filter(|(_, stat)| stat_field(stat, 4) == u64::from(postmaster))
        .map(|(_, stat)| stat_field(stat, 14) + stat_field(stat, 15))
        .sum();
    ticks(live + proc_ticks(postmaster, true))
}

fn ticks(t: u64) -> Duration {
    // USER_HZ is 100 on every mainstream Linux configuration.
    Duration::from_millis(t * 10)
}

/// The resident set of this process (`VmRSS`), in KiB.
pub fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))
}
