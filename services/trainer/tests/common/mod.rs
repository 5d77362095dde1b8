//! A registry and a trainer started in-process against the real Postgres and NATS, sharing one
//! fresh database, subject namespace and artifact root per test, plus a bus to publish
//! `data.ready` events the way ingest does.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use petrel_events::payloads::DataReady;
use petrel_events::{Bus, Namespace};
use petrel_ml::Schema;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long to wait for something that should happen (training included).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub const PENGUINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/penguins.csv");

struct Service {
    cancel: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    async fn stop(self, what: &str) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .unwrap_or_else(|_| panic!("{what} stops within the timeout"))
            .unwrap_or_else(|e| panic!("{what} does not panic: {e}"));
        assert!(
            result.is_ok(),
            "{what}: graceful shutdown failed: {result:?}"
        );
    }
}

pub struct Stack {
    pub registry_url: String,
    pub trainer_url: String,
    pub prefix: String,
    pub artifacts: PathBuf,
    /// Publishes as ingest would.
    pub bus: Bus,
    http: reqwest::Client,
    registry: Service,
    trainer: Service,
}

impl Stack {
    pub async fn start() -> Self {
        let db = petrel_db::testing::fresh_database_url();
        let prefix = format!("t{}", Uuid::now_v7().simple());
        let artifacts =
            std::env::temp_dir().join(format!("petrel-test-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&artifacts).unwrap();

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
        let registry_url = format!("http://127.0.0.1:{}", app.port());
        let registry = Service {
            cancel,
            handle: tokio::spawn(app.run()),
        };

        let config = petrel_trainer::Config::parse_from([
            "petrel-trainer",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--nats-prefix",
            &prefix,
            "--registry-url",
            &registry_url,
            "--artifact-root",
            artifacts.to_str().unwrap(),
        ]);
        let cancel = CancellationToken::new();
        let app = petrel_trainer::App::build(config, cancel.clone())
            .await
            .expect("the trainer starts");
        let trainer_url = format!("http://127.0.0.1:{}", app.port());
        let trainer = Service {
            cancel,
            handle: tokio::spawn(app.run()),
        };

        let bus = Bus::connect(
            "nats://127.0.0.1:4222",
            Namespace::new(Some(&prefix)),
            "petrel/ingest",
        )
        .await
        .expect("NATS is running");
        Self {
            registry_url,
            trainer_url,
            prefix,
            artifacts,
            bus,
            http: reqwest::Client::new(),
            registry,
            trainer,
        }
    }

    pub fn registry(&self) -> petrel_api::registry::RegistryClient {
        petrel_api::registry::RegistryClient::new(&self.registry_url)
    }

    /// GET on the trainer: status and JSON body.
    pub async fn trainer_get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.trainer_url))
            .send()
            .await
            .expect("the trainer answers");
        let status = resp.status();
        (status, resp.json().await.expect("a JSON body"))
    }

    /// The trainer's jobs, newest first.
    pub async fn jobs(&self) -> Vec<Value> {
        let (status, body) = self.trainer_get("/v1/jobs").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["jobs"].as_array().unwrap().clone()
    }

    /// Waits until every `data.ready` event in the stream has been handled and acknowledged
    /// by the trainer's consumer (`deliveries` counts every delivery, redeliveries included).
    pub async fn wait_consumed(&self, deliveries: u64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let info = self
                .bus
                .jetstream()
                .get_stream(self.bus.namespace().stream_name())
                .await
                .unwrap()
                .consumer_info("trainer")
                .await;
            if let Ok(info) = info
                && info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.consumer_sequence >= deliveries
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the trainer did not consume {deliveries} deliveries in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the trainer's jobs until `done` holds for them.
    pub async fn wait_jobs(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let jobs = self.jobs().await;
            if done(&jobs) {
                return jobs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {jobs:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stores the penguins file in the artifact store, as ingest does, and describes it.
    pub async fn penguins_dataset(&self) -> DataReady {
        let bytes = std::fs::read(PENGUINS).expect("data/penguins.csv is in the repository");
        let hash = petrel_store::content_hash(&bytes);
        let store = petrel_store::open(self.artifacts.to_str().unwrap()).unwrap();
        let key = format!(
            "datasets/penguins/{}.csv",
            hash.trim_start_matches("sha256:")
        );
        let uri = store.put(&key, Bytes::from(bytes)).await.unwrap();
        DataReady {
            dataset_id: Uuid::now_v7(),
            name: "penguins".to_owned(),
            version: 1,
            uri,
            content_hash: hash,
            row_count: 344,
            rejected_rows: 0,
            schema: Schema::penguins(),
        }
    }

    /// Subscribes to this stack's events under `relative` (e.g. `model.>`).
    pub async fn events(&self, relative: &str) -> Events {
        let client = self.bus.client().clone();
        let sub = client
            .subscribe(format!("{}.{relative}", self.prefix))
            .await
            .unwrap();
        client.flush().await.unwrap();
        Events {
            sub,
            prefix: self.prefix.clone(),
        }
    }

    /// Stops both services (checking each shuts down cleanly) and removes the test's stream.
    pub async fn stop(self) {
        self.trainer.stop("the trainer").await;
        self.registry.stop("the registry").await;
        self.bus
            .jetstream()
            .delete_stream(self.bus.namespace().stream_name())
            .await
            .ok();
        std::fs::remove_dir_all(&self.artifacts).ok();
    }
}

/// A core-NATS subscription on a test's namespace (it sees JetStream-stored subjects too).
pub struct Events {
    sub: async_nats::Subscriber,
    prefix: String,
}

impl Events {
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
