//! Harness for the monitor's integration tests: a real registry and monitor per test, on
//! the local Postgres and NATS, each test in its own database, NATS namespace and artifact
//! directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use petrel_api::registry::{CreateModelVersion, CreateRun, ModelVersion, RegistryClient};
use petrel_events::{Bus, Envelope, Event, Namespace};
use petrel_ml::{ModelBundle, Schema, TrainConfig, parse_csv, train_classifier};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const PENGUINS_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/penguins.csv");
pub const SPECIES: [&str; 3] = ["Adelie", "Chinstrap", "Gentoo"];

/// How long a test waits for something asynchronous before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// One test's isolated world: a fresh database, NATS namespace and artifact directory.
#[derive(Debug)]
pub struct TestEnv {
    pub db: String,
    pub prefix: String,
    pub artifacts: PathBuf,
    pub nats: async_nats::Client,
}

impl TestEnv {
    pub async fn new() -> Self {
        init_logging();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let artifacts = std::env::temp_dir().join(format!("petrel-test-{id}"));
        std::fs::create_dir_all(&artifacts).unwrap();
        let nats = async_nats::connect(NATS_URL)
            .await
            .expect("nats-server must run at 127.0.0.1:4222");
        Self {
            db: petrel_db::testing::fresh_database_url(),
            prefix: format!("t{id}"),
            artifacts,
            nats,
        }
    }

    pub fn artifact_root(&self) -> &str {
        self.artifacts.to_str().unwrap()
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

    /// Drops the test's stream, database and artifacts (best effort).
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
        let _ = std::fs::remove_dir_all(&self.artifacts);
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

pub async fn start_registry(env: &TestEnv) -> Service {
    let config = petrel_registry::Config::parse_from([
        "petrel-registry",
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
    let app = petrel_registry::App::build(config, cancel.clone())
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

pub async fn start_monitor(env: &TestEnv, registry: &Service) -> Service {
    let config = petrel_monitor::Config::parse_from([
        "petrel-monitor",
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
        "--artifact-root",
        env.artifact_root(),
        "--registry-url",
        &registry.base,
        "--window-size",
        "50",
        "--min-window",
        "20",
        "--min-labels",
        "10",
        "--window-max-secs",
        "2",
    ]);
    let cancel = CancellationToken::new();
    let app = petrel_monitor::App::build(config, cancel.clone())
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

/// The penguins model trained with the default configuration (once per test binary).
pub fn bundle() -> &'static ModelBundle {
    static BUNDLE: OnceLock<ModelBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let bytes = std::fs::read(PENGUINS_CSV).unwrap();
        let report = parse_csv(&bytes, &Schema::penguins()).unwrap();
        train_classifier(&report.table, &TrainConfig::default(), &mut |_, _| {}).unwrap()
    })
}

/// Stores the bundle under `key` and registers it as a new version of `penguins` from a new
/// run. The registry promotes it to `production` when its accuracy is at least production's.
pub async fn register_model(env: &TestEnv, registry: &Service, key: &str) -> ModelVersion {
    let bundle = bundle();
    let store = petrel_store::open(env.artifact_root()).unwrap();
    let uri = store
        .put(key, bytes::Bytes::from(bundle.to_bytes().unwrap()))
        .await
        .unwrap();
    let client = RegistryClient::new(&registry.base);
    let run = client
        .create_run(&CreateRun {
            experiment: "penguins".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let metrics = BTreeMap::from([("test_accuracy".to_owned(), bundle.metrics.test_accuracy)]);
    client
        .create_version(
            "penguins",
            &CreateModelVersion {
                run_id: run.id,
                artifact_uri: uri,
                metrics,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

/// The rows of the penguins CSV as `(species, features)`, features as a JSON object of column
/// name to number, string, or null for `NA`.
pub fn penguin_rows() -> Vec<(String, Map<String, Value>)> {
    let text = std::fs::read_to_string(PENGUINS_CSV).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let schema = Schema::penguins();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut species = String::new();
            let mut features = Map::new();
            for (name, raw) in header.iter().zip(line.split(',')) {
                if *name == schema.target {
                    species = raw.to_owned();
                    continue;
                }
                let kind = schema.features[schema.feature_index(name).unwrap()].kind;
                let value = match (raw, kind) {
                    ("NA", _) => Value::Null,
                    (_, petrel_ml::ColumnKind::Numeric) => {
                        serde_json::json!(raw.parse::<f64>().unwrap())
                    }
                    (_, petrel_ml::ColumnKind::Categorical) => Value::String(raw.to_owned()),
                };
                features.insert((*name).to_owned(), value);
            }
            (species, features)
        })
        .collect()
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
