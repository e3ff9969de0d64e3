//! A throwaway PostgreSQL cluster for tests of the relay store on PostgreSQL: `initdb` in a
//! temporary directory, the server on a free loopback port (`fsync=off`, trust auth for the
//! user `cove`), one fresh database per test ([`PgCluster::database`]) so tests run in
//! parallel, and the cluster stopped at the end.
//!
//! Needs PostgreSQL's server binaries (Debian's `postgresql`, installed by
//! `.ci/install-deps`): found in `$COVE_PG_BIN`, else the newest
//! `/usr/lib/postgresql/<version>/bin`, else `initdb` on the `PATH`. Without them
//! [`PgCluster::start`] panics with a message saying so (the tests fail, never skip). Run as
//! root, the server runs as the `postgres` user (`runuser -u postgres`), as PostgreSQL
//! refuses to run as root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running throwaway cluster; stopped (and its directory removed) on drop.
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    next_db: AtomicUsize,
    /// Removes the directory on drop (`None` for the shared cluster, which a watchdog
    /// removes when the process ends).
    _tmp: Option<tempfile::TempDir>,
}

/// Where PostgreSQL's server binaries are, if installed.
pub fn pg_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("COVE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    Path::new(path.trim()).parent().map(Path::to_path_buf)
}

/// `found` (what [`pg_bin`] found), or a panic saying PostgreSQL is not installed and how
/// to install it.
pub fn require_pg_bin(found: Option<PathBuf>) -> PathBuf {
    found.unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no initdb in $COVE_PG_BIN, \
             /usr/lib/postgresql/*/bin or the PATH): run .ci/install-deps, \
             which installs Debian's `postgresql`"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl PgCluster {
    /// Starts a cluster of its own (stopped on drop). Panics, saying what is missing, if
    /// PostgreSQL is not installed, or if the server does not start.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mut cluster = Self::start_in(tmp.path().to_path_buf());
        cluster._tmp = Some(tmp);
        cluster
    }

    /// The cluster shared by every test of this process, started on first use. It is
    /// stopped, and its directory removed, when the process ends (by a watchdog process
    /// that waits for this one to exit, so also after a crash or `kill -9`).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temporary directory").keep();
            let cluster = Self::start_in(dir);
            cluster.watch(std::process::id());
            cluster
        })
    }

    fn start_in(dir: PathBuf) -> Self {
        let bin = require_pg_bin(pg_bin());
        let as_postgres = is_root();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The postgres user must reach the data directory below it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cluster = PgCluster {
            bin,
            dir,
            port: 0,
            as_postgres,
            next_db: AtomicUsize::new(0),
            _tmp: None,
        };
        let pg = cluster.dir.join("pg");
        if as_postgres {
            cluster.run_ok(
                Command::new("install")
                    .args(["-d", "-o", "postgres", "-m", "700"])
                    .arg(&pg),
                "install",
            );
        } else {
            std::fs::create_dir(&pg).unwrap();
        }
        let mut initdb = cluster.pg_command("initdb");
        cluster.run_ok(
            initdb.arg("-D").arg(pg.join("data")).args([
                "-U",
                "cove",
                "-A",
                "trust",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        // A free port: taken from the OS, let go, then given to the server (a start that
        // loses the port to another process is tried again on another).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                pg.display()
            );
            let status = cluster
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(pg.join("data"))
                .arg("-l")
                .arg(pg.join("log"))
                .args(["-w", "-t", "120", "-o", &options, "start"])
                .stdout(Stdio::null())
                .status()
                .expect("run pg_ctl");
            if status.success() {
                cluster.port = port;
                return cluster;
            }
        }
        let log = std::fs::read_to_string(pg.join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start; its log:\n{log}");
    }

    /// A command running PostgreSQL's `name` (as the `postgres` user when we are root).
    fn pg_command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn run_ok(&self, command: &mut Command, what: &str) {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("run {what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a detached shell that stops the cluster and removes its directory once the
    /// process `pid` has exited.
    // The watchdog outlives this process on purpose: nothing waits for it.
    #[allow(clippy::zombie_processes)]
    fn watch(&self, pid: u32) {
        let stop = format!(
            "{} -D {} -m immediate stop",
            self.bin.join("pg_ctl").display(),
            self.dir.join("pg/data").display()
        );
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {}",
            self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog");
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` as the user `cove`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://cove@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh, empty database; it is dropped when the returned guard is.
    pub fn database(&self) -> PgDatabase<'_> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("cove_{}_{n}", std::process::id());
        self.run_ok(
            Command::new(self.bin.join("createdb"))
                .args(self.client_args())
                .arg(&name),
            "createdb",
        );
        PgDatabase {
            url: self.url(&name),
            name,
            cluster: self,
        }
    }

    fn client_args(&self) -> [String; 6] {
        [
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "cove".into(),
        ]
    }
}

/// A database of a [`PgCluster`], dropped (with `--force`, closing what is still
/// connected) when this guard is, so a long test run does not fill the disk.
pub struct PgDatabase<'a> {
    url: String,
    name: String,
    cluster: &'a PgCluster,
}

impl PgDatabase<'_> {
    /// Its URL, as the user `cove`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.cluster.bin.join("dropdb"))
            .args(self.cluster.client_args())
            .args(["--force", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("pg/data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
