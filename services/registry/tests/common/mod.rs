//! A registry started in-process against the real Postgres and NATS, isolated per test by a fresh
//! database and a fresh subject namespace, plus a subscriber for the events it publishes.

use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long to wait for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct Registry {
    pub base: String,
    pub prefix: String,
    http: reqwest::Client,
    cancel: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Registry {
    pub async fn start() -> Self {
        let db = petrel_db::testing::fresh_database_url();
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let config = petrel_registry::Config::parse_from([
            "petrel-registry",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--nats-prefix",
            &prefix,
        ]);
        let cancel = CancellationToken::new();
        let app = petrel_registry::App::build(config, cancel.clone())
            .await
            .expect("the registry starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let handle = tokio::spawn(app.run());
        Self {
            base,
            prefix,
            http: reqwest::Client::new(),
            cancel,
            handle,
        }
    }

    /// A typed client for this registry.
    pub fn client(&self) -> petrel_api::registry::RegistryClient {
        petrel_api::registry::RegistryClient::new(&self.base)
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
        read(req.send().await.expect("the registry answers")).await
    }

    /// Sends a raw body with the given content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        read(req.send().await.expect("the registry answers")).await
    }

    /// Subscribes to this registry's events under `relative` (e.g. `model.>`).
    pub async fn events(&self, relative: &str) -> Events {
        Events::subscribe(&self.prefix, relative).await
    }

    /// Cancels the registry and checks that it shuts down cleanly and promptly.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the registry stops within the timeout")
            .expect("the registry task does not panic");
        assert!(result.is_ok(), "graceful shutdown failed: {result:?}");
        // The test's stream is of no further use.
        if let Ok(client) = async_nats::connect("127.0.0.1:4222").await {
            let stream = petrel_events::Namespace::new(Some(&self.prefix)).stream_name();
            async_nats::jetstream::new(client)
                .delete_stream(stream)
                .await
                .ok();
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
