//! The trainer's part of its integration tests' harness (the rest is `petrel-testkit`): a
//! registry and a trainer started in-process against the real Postgres and NATS, in the test's
//! own world, plus a bus to publish `data.ready` events the way ingest does.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use petrel_events::Bus;
use petrel_events::payloads::DataReady;
use petrel_ml::Schema;
pub use petrel_testkit::Events;
use petrel_testkit::{PENGUINS_CSV, Service, TestEnv, send};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long to wait for something that should happen, training included.
pub const TRAINING_PATIENCE: Duration = Duration::from_secs(60);

/// How long each service gets to stop: the trainer may be in the middle of training.
const STOP_LIMIT: Duration = Duration::from_secs(30);

pub struct Stack {
    pub env: TestEnv,
    /// Publishes as ingest would.
    pub bus: Bus,
    http: reqwest::Client,
    registry: Service,
    trainer: Service,
    trainer_args: Vec<String>,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A stack whose trainer takes `trainer_args` besides the usual ones.
    pub async fn start_with(trainer_args: &[&str]) -> Self {
        let env = TestEnv::new().await;

        let args = env.args_without_store("petrel-registry", &[]);
        let cancel = CancellationToken::new();
        let app =
            petrel_registry::App::build(petrel_registry::Config::parse_from(args), cancel.clone())
                .await
                .expect("the registry starts");
        let registry =
            Service::spawn("the registry", app.port(), cancel, app.run()).stop_limit(STOP_LIMIT);

        let mut extra = vec!["--registry-url", registry.base.as_str()];
        extra.extend_from_slice(trainer_args);
        let trainer_args: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let trainer = start_trainer(&env, &trainer_args).await;

        let bus = env.bus_as("petrel/ingest").await;
        Self {
            env,
            bus,
            http: reqwest::Client::new(),
            registry,
            trainer,
            trainer_args,
        }
    }

    /// Shuts the trainer down (checking it stops cleanly, whatever it was training) and starts
    /// a new one with the same options, as a redeploy does.
    pub async fn restart_trainer(&mut self) {
        let fresh = start_trainer(&self.env, &self.trainer_args).await;
        let old = std::mem::replace(&mut self.trainer, fresh);
        old.stop().await;
    }

    /// POST on the registry's MLflow REST API: status and JSON body.
    pub async fn mlflow(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{}/api/2.0/mlflow/{path}", self.registry.base);
        let (status, body) = send(self.http.post(url).json(&body)).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    /// GET on the registry's MLflow REST API (`path` with its query): status and JSON body.
    pub async fn mlflow_get(&self, path: &str) -> (StatusCode, Value) {
        let url = format!("{}/api/2.0/mlflow/{path}", self.registry.base);
        let (status, body) = send(self.http.get(url)).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    /// GET on the registry's own API: status and JSON body.
    pub async fn registry_get(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = send(self.http.get(self.registry.url(path))).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    /// PUT of a JSON body on the registry's own API: status and JSON body.
    pub async fn registry_put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, body) = send(self.http.put(self.registry.url(path)).json(&body)).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    pub fn registry(&self) -> petrel_api::registry::RegistryClient {
        petrel_api::registry::RegistryClient::new(&self.registry.base)
    }

    /// GET on the trainer: status and JSON body.
    pub async fn trainer_get(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = send(self.http.get(self.trainer.url(path))).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    /// POST of a JSON body on the trainer: status and JSON body.
    pub async fn trainer_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, body) = send(self.http.post(self.trainer.url(path)).json(&body)).await;
        (StatusCode::from_u16(status).unwrap(), body)
    }

    /// Polls one job until it has `status`, failing fast if it ends otherwise.
    pub async fn wait_job(&self, id: &str, status: &str) -> Value {
        self.wait_job_until(id, &format!("job {id} to be {status}"), |job| {
            if job["status"] == status {
                return true;
            }
            let ended = ["succeeded", "failed", "cancelled"]
                .contains(&job["status"].as_str().unwrap_or(""));
            assert!(
                !ended,
                "job ended {} instead of {status}: {job}",
                job["status"]
            );
            false
        })
        .await
    }

    /// Polls one job (`GET /v1/jobs/{id}`, with its trials) until `done` holds for it.
    pub async fn wait_job_until(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + TRAINING_PATIENCE;
        loop {
            let (code, job) = self.trainer_get(&format!("/v1/jobs/{id}")).await;
            assert_eq!(code, StatusCode::OK, "{job}");
            if done(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let deadline = tokio::time::Instant::now() + TRAINING_PATIENCE;
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
        let deadline = tokio::time::Instant::now() + TRAINING_PATIENCE;
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
        let bytes = std::fs::read(PENGUINS_CSV).expect("data/penguins.csv is in the repository");
        let hash = petrel_store::content_hash(&bytes);
        let store = petrel_store::open(self.env.artifact_root()).unwrap();
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
            purpose: Default::default(),
        }
    }

    /// Subscribes to this stack's events under `relative` (e.g. `model.>`), waiting for each
    /// up to [`TRAINING_PATIENCE`].
    pub async fn events(&self, relative: &str) -> Events {
        self.env
            .events(relative)
            .await
            .with_patience(TRAINING_PATIENCE)
    }

    /// Stops both services (checking each shuts down cleanly), then removes the test's world.
    pub async fn stop(self) {
        self.trainer.stop().await;
        self.registry.stop().await;
        self.env.cleanup().await;
    }
}

async fn start_trainer(env: &TestEnv, extra: &[String]) -> Service {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let args = env.args("petrel-trainer", &extra);
    let cancel = CancellationToken::new();
    let app = petrel_trainer::App::build(petrel_trainer::Config::parse_from(args), cancel.clone())
        .await
        .expect("the trainer starts");
    Service::spawn("the trainer", app.port(), cancel, app.run()).stop_limit(STOP_LIMIT)
}
