//! A NATS server of a test's own, for tests that stop and restart NATS: the shared one at
//! [`crate::NATS_URL`] is never stopped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `nats-server -js` on a free loopback port with its own store directory, killed on drop.
#[derive(Debug)]
pub struct ThrowawayNats {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The `nats-server` binary: `PETREL_TEST_NATS_SERVER`, else Debian's, else whatever is on the
/// `PATH`.
fn binary() -> String {
    if let Ok(b) = std::env::var("PETREL_TEST_NATS_SERVER") {
        return b;
    }
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        return "/usr/sbin/nats-server".to_owned();
    }
    "nats-server".to_owned()
}

impl ThrowawayNats {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!("petrel-nats-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats = Self {
            port,
            dir,
            child: None,
        };
        nats.restart().await;
        nats
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: as abrupt as an outage gets).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (Debian package nats-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        let mut last;
        loop {
            match async_nats::connect(self.url()).await {
                // The server accepts clients once JetStream has started (it logs "Server is
                // ready" after JetStream's store is up).
                Ok(c) => match c.flush().await {
                    Ok(()) => return,
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the throwaway nats-server did not start: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ThrowawayNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
