//! A throwaway PostgreSQL cluster of a test's own: `initdb` into a temporary folder, served on a
//! free port of 127.0.0.1, with its server log in a file the test can read. For tests that must
//! start the database late, stop it under a running daemon, or count the lines the server logs,
//! none of which can be done to the shared server of [`crate::postgres_url`].
//!
//! The server binaries come from `PROJECTIONIST_TEST_PG_BINDIR`, else `pg_config --bindir`.
//! PostgreSQL refuses to run as root, so as root the cluster is made and run as the `postgres`
//! user (with `runuser`). The cluster is stopped (immediately) and its folder removed on drop.

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The variable naming the folder of `initdb`, `pg_ctl` and `postgres`.
pub const BINDIR_ENV: &str = "PROJECTIONIST_TEST_PG_BINDIR";

/// Why a cluster could not be made, started or stopped.
#[derive(Debug)]
pub struct ClusterError(String);

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

fn err(message: impl Into<String>) -> ClusterError {
    ClusterError(message.into())
}

/// A PostgreSQL cluster in a temporary folder; see the module documentation.
#[derive(Debug)]
pub struct TempCluster {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl TempCluster {
    /// The CI-or-skip form of [`TempCluster::create`]: the cluster (made, not started), or
    /// `None` after a loud SKIP when the server binaries are missing and skipping is allowed.
    pub fn require(test: &str) -> Option<TempCluster> {
        crate::require(
            test,
            "a PostgreSQL server installation (initdb, pg_ctl) for a throwaway cluster",
            &format!("install the PostgreSQL server package, or set {BINDIR_ENV}"),
            TempCluster::create(test),
        )
    }

    /// Makes a new cluster (`initdb`, trust authentication, user `postgres`) for `test`, on a
    /// free port. It is not started: see [`TempCluster::start`].
    pub fn create(test: &str) -> Result<TempCluster, ClusterError> {
        let bindir = bindir()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "projectionist-pg-{test}-{}-{}",
            std::process::id(),
            unique()
        ));
        fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let cluster = TempCluster {
            bindir,
            dir,
            port: free_port()?,
            as_postgres,
            running: false,
        };
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&cluster.dir))?;
        }
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(cluster.data_dir()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(&mut initdb)?;
        Ok(cluster)
    }

    /// Starts the server and waits until it accepts connections (at most 60 s). The server log
    /// goes to [`TempCluster::log_path`], appended across restarts.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c synchronous_commit=off -c max_connections=100 -c logging_collector=off",
            self.port,
            self.dir.display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-o", &options, "-w", "-t", "60", "start"]);
        run(&mut pg_ctl)?;
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(err(format!(
            "the cluster on port {} did not answer within 60 s",
            self.port
        )))
    }

    /// Stops the server: `mode` is pg_ctl's `fast` (disconnects clients, clean shutdown) or
    /// `immediate` (like a crash).
    pub fn stop(&mut self, mode: &str) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        run(&mut pg_ctl)?;
        self.running = false;
        Ok(())
    }

    /// The port the cluster serves (fixed for its life, so a URL stays valid across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The server log so far (empty when there is none yet).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The lines of the server log so far that hold `needle` (for example `"ERROR:"`).
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program` of the server installation, run as `postgres` when this process is root.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn bindir() -> Result<PathBuf, ClusterError> {
    let dir = match std::env::var_os(BINDIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let out = Command::new("pg_config")
                .arg("--bindir")
                .output()
                .map_err(|e| err(format!("pg_config: {e}")))?;
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    for program in ["initdb", "pg_ctl", "postgres"] {
        if !dir.join(program).is_file() {
            return Err(err(format!("{} has no {program}", dir.display())));
        }
    }
    Ok(dir)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("no free port: {e}")))
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn run(command: &mut Command) -> Result<Output, ClusterError> {
    let shown = format!("{command:?}");
    let out = command.output().map_err(|e| err(format!("{shown}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_logs_and_stops() {
        let Some(mut cluster) = TempCluster::require("a_cluster_starts_logs_and_stops") else {
            return;
        };
        cluster.start().expect("the cluster starts");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
                .await
                .expect("connects");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            assert!(client.simple_query("SELECT 1/0").await.is_err());
        });
        assert_eq!(
            cluster.log_lines_with("division by zero").len(),
            1,
            "{}",
            cluster.log()
        );
        cluster.stop("fast").expect("stops");
        assert!(std::net::TcpStream::connect(("127.0.0.1", cluster.port())).is_err());
    }
}
