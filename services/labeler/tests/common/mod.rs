//! Harness for the labeler's integration tests: a real labeler per test on the local Postgres
//! and NATS, each test in its own database and NATS namespace; events are published the way
//! the predictor would.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use petrel_events::{Bus, Envelope, Event, Namespace};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// How long a test waits for something asynchronous before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// One test's isolated world: a fresh database and NATS namespace.
#[derive(Debug)]
pub struct TestEnv {
    pub db: String,
    pub prefix: String,
    pub nats: async_nats::Client,
}

impl TestEnv {
    pub async fn new() -> Self {
        init_logging();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let nats = async_nats::connect(NATS_URL)
            .await
            .expect("nats-server must run at 127.0.0.1:4222");
        Self {
            db: petrel_db::testing::fresh_database_url(),
            prefix: format!("t{id}"),
            nats,
        }
    }

    /// The absolute subject of a relative one in this test's namespace.
    pub fn subject(&self, relative: &str) -> String {
        format!("{}.{relative}", self.prefix)
    }

    /// A core subscription, registered on the server before this returns.
    pub async fn subscribe(&self, relative: &str) -> async_nats::Subscriber {
        let sub = self.nats.subscribe(self.subject(relative)).await.unwrap();
        self.nats.flush().await.unwrap();
        sub
    }

    /// Drops the test's stream and database (best effort).
    pub async fn cleanup(self) {
        let js = async_nats::jetstream::new(self.nats.clone());
        let stream = petrel_events::Namespace::new(Some(&self.prefix)).stream_name();
        let _ = js.delete_stream(&stream).await;
        if let Some((server, name)) = self.db.rsplit_once('/') {
            let admin = format!("{server}/postgres");
            if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

fn init_logging() {
    // Service logs only when asked for: `RUST_LOG=info cargo test ...`.
    if std::env::var_os("RUST_LOG").is_some() {
        let args = petrel_runtime::config::LogArgs {
            log_format: "text".into(),
        };
        let _guard = petrel_runtime::telemetry::init("test", &args);
    }
}

/// A service running in this process.
#[derive(Debug)]
pub struct Service {
    pub base: String,
    pub cancel: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Cancels the service and checks that it stops cleanly and promptly.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("service did not stop within 20 s of cancellation")
            .expect("service task panicked");
        assert!(result.is_ok(), "service stopped with an error: {result:?}");
    }
}

pub async fn start_labeler(env: &TestEnv) -> Service {
    let config = petrel_labeler::Config::parse_from([
        "petrel-labeler",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &env.db,
        "--database-max-connections",
        "4",
        "--nats-url",
        NATS_URL,
        "--nats-prefix",
        &env.prefix,
    ]);
    let cancel = CancellationToken::new();
    let app = petrel_labeler::App::build(config, cancel.clone())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = tokio::spawn(app.run());
    Service {
        base,
        cancel,
        handle,
    }
}

/// A bus on the test's namespace, for publishing events as another service would.
pub async fn bus(env: &TestEnv) -> Bus {
    Bus::connect(NATS_URL, Namespace::new(Some(&env.prefix)), "petrel/test")
        .await
        .unwrap()
}

/// Waits until the durable consumer `name` has acknowledged every event published so far on
/// the subjects it reads, i.e. has finished processing them.
pub async fn wait_consumer_caught_up(bus: &Bus, name: &str) {
    let stream = bus.namespace().stream_name();
    let js = bus.jetstream().clone();
    eventually(&format!("consumer {name} to catch up"), || {
        let (js, stream) = (js.clone(), stream.clone());
        async move {
            let s = js.get_stream(&stream).await.ok()?;
            let info = s.consumer_info(name).await.ok()?;
            let done = info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0;
            done.then_some(())
        }
    })
    .await
}

/// Polls `probe` every 100 ms until it yields a value, failing after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next message on `sub`, parsed as an event of type `T`.
pub async fn next_event<T: Event>(sub: &mut async_nats::Subscriber) -> Envelope<T> {
    let msg = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {} event within {PATIENCE:?}", T::TYPE))
        .expect("subscription closed");
    Envelope::<T>::from_bytes(&msg.payload).unwrap_or_else(|e| {
        panic!(
            "{} is not a {}: {e}",
            String::from_utf8_lossy(&msg.payload),
            T::TYPE
        )
    })
}

/// Sends a JSON request and returns the status and the JSON body.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, body)
}

/// Checks `body` is Petrel's error shape with `code`, and returns its message.
pub fn error_message(body: &Value, code: &str) -> String {
    assert_eq!(body["error"]["code"], code, "unexpected error body {body}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a message: {body}"))
        .to_owned()
}
