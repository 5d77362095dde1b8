//! An ingest service started in-process against the real Postgres and NATS, isolated per test by
//! a fresh database, subject namespace, artifact root and data directory.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long to wait for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub const PENGUINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/penguins.csv");

pub fn penguins_csv() -> String {
    std::fs::read_to_string(PENGUINS).expect("data/penguins.csv is in the repository")
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "petrel-test-{what}-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Ingest {
    pub base: String,
    pub prefix: String,
    /// Where the service stores artifacts.
    pub artifacts: PathBuf,
    /// The directory requests may ingest from by `path`.
    pub data_dir: PathBuf,
    http: reqwest::Client,
    cancel: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Ingest {
    /// Starts ingest with its data directory at `<scratch>/data` (created, empty).
    pub async fn start() -> Self {
        let db = petrel_db::testing::fresh_database_url();
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let artifacts = temp_dir("artifacts");
        let data_dir = temp_dir("scratch").join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let config = petrel_ingest::Config::parse_from([
            "petrel-ingest",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--nats-prefix",
            &prefix,
            "--artifact-root",
            artifacts.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]);
        let cancel = CancellationToken::new();
        let app = petrel_ingest::App::build(config, cancel.clone())
            .await
            .expect("ingest starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let handle = tokio::spawn(app.run());
        Self {
            base,
            prefix,
            artifacts,
            data_dir,
            http: reqwest::Client::new(),
            cancel,
            handle,
        }
    }

    /// Sends `body` as JSON (if any) and returns the status and the JSON answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.expect("ingest answers")).await
    }

    /// Sends a raw body as `application/json`.
    pub async fn send_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        read(req.send().await.expect("ingest answers")).await
    }

    /// Subscribes to this service's events under `relative` (e.g. `data.>`).
    pub async fn events(&self, relative: &str) -> Events {
        Events::subscribe(&self.prefix, relative).await
    }

    /// Cancels the service and checks that it shuts down cleanly and promptly.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("ingest stops within the timeout")
            .expect("the ingest task does not panic");
        assert!(result.is_ok(), "graceful shutdown failed: {result:?}");
        // The test's stream is of no further use.
        if let Ok(client) = async_nats::connect("127.0.0.1:4222").await {
            let stream = petrel_events::Namespace::new(Some(&self.prefix)).stream_name();
            async_nats::jetstream::new(client)
                .delete_stream(stream)
                .await
                .ok();
        }
        std::fs::remove_dir_all(&self.artifacts).ok();
        if let Some(scratch) = self.data_dir.parent() {
            std::fs::remove_dir_all(scratch).ok();
        }
    }
}

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = resp.bytes().await.expect("a body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, value)
}

/// Checks that a response is a Petrel JSON error with `status` and `code`.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error needs a message: {}",
        got.1
    );
}

/// A core-NATS subscription on a test's namespace (it sees JetStream-stored subjects too).
pub struct Events {
    _client: async_nats::Client,
    sub: async_nats::Subscriber,
    prefix: String,
}

impl Events {
    pub async fn subscribe(prefix: &str, relative: &str) -> Self {
        let client = async_nats::connect("127.0.0.1:4222")
            .await
            .expect("NATS is running");
        let sub = client
            .subscribe(format!("{prefix}.{relative}"))
            .await
            .unwrap();
        // The server has the subscription once it answers a ping.
        client.flush().await.unwrap();
        Self {
            _client: client,
            sub,
            prefix: prefix.to_owned(),
        }
    }

    /// The next event: its subject relative to the namespace, and its bytes.
    pub async fn next(&mut self) -> (String, Vec<u8>) {
        let msg = tokio::time::timeout(PATIENCE, self.sub.next())
            .await
            .expect("an event arrives in time")
            .expect("the subscription is open");
        let subject = msg
            .subject
            .as_str()
            .strip_prefix(&format!("{}.", self.prefix))
            .expect("the subject is in the test's namespace")
            .to_owned();
        (subject, msg.payload.to_vec())
    }

    /// Checks that nothing more arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(wait, self.sub.next()).await {
            panic!(
                "unexpected event on {}: {}",
                msg.subject,
                String::from_utf8_lossy(&msg.payload)
            );
        }
    }
}
