//! A Postgres server of a test's own, for tests that stop and restart Postgres: the shared one
//! is never stopped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// A Postgres cluster in a scratch directory on a free loopback port (trust auth), stopped and
/// removed on drop. `initdb` refuses root, so the cluster belongs to the `postgres` user.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// The newest installed server's binaries (Debian: `/usr/lib/postgresql/<major>/bin`).
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (Debian package postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("an installed PostgreSQL with initdb")
}

fn as_postgres(bin: &std::path::Path, tool: &str, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runuser runs");
    assert!(status.success(), "{tool} {args:?} failed");
}

impl ThrowawayPostgres {
    /// Creates and starts a cluster.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!("petrel-pg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let chown = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown runs");
        assert!(chown.success());
        let bin = bin_dir();
        let data = dir.join("data");
        let data_s = data.to_str().unwrap().to_owned();
        as_postgres(
            &bin,
            "initdb",
            &["-D", &data_s, "-A", "trust", "-U", "postgres"],
        );
        let pg = Self { port, dir, bin };
        pg.restart();
        pg
    }

    /// A URL naming database `name` on it (created by the first service that connects).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    /// Stops it at once, as a crash would (`-m immediate`).
    pub fn stop(&self) {
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn restart(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data(), "-o", &options, "-w", "start"],
        );
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
