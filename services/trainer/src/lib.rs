//! Petrel trainer: on `data.ready` (or `POST /v1/jobs`), trains a burn MLP classifier on the
//! dataset, scores the model's current alias holder on the same held-out rows, writes the model
//! bundle to the artifact store, and registers the run and a model version with the registry.
//!
//! Each training is a job row keyed by the triggering event, so a redelivered event resumes or
//! acknowledges its job rather than training twice, and the registry calls carry the job id as
//! their idempotency key.

mod jobs;
mod retrain;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use petrel_api::registry::RegistryClient;
use petrel_events::consumer::ConsumerSpec;
use petrel_events::payloads::subjects;
use petrel_ml::{SweepSpec, TrainConfig};
use petrel_runtime::config::{LogArgs, NatsArgs, PostgresArgs, StoreArgs};
use petrel_runtime::infra::Infra;
use petrel_runtime::service::{ServiceConfig, Tasks};
use petrel_store::ArtifactStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Trainer configuration.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "petrel-trainer",
    version,
    about = "Petrel's trainer: burn models from data.ready events"
)]
pub struct Config {
    /// Address to serve HTTP on (job status, health).
    #[arg(long, env = "PETREL_TRAINER_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: String,
    /// Base URL of the registry.
    #[arg(
        long,
        env = "PETREL_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// Base URL of the labeler: retraining reads labelled production rows from it.
    #[arg(
        long,
        env = "PETREL_LABELER_URL",
        default_value = "http://127.0.0.1:8085"
    )]
    pub labeler_url: String,
    /// Base URL of ingest: retraining ingests its training set there, for lineage.
    #[arg(
        long,
        env = "PETREL_INGEST_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub ingest_url: String,
    /// A registry token (`write` scope for the trainer, `read` for the others), needed when
    /// the registry runs with `--auth on`. Never logged.
    #[arg(long, env = "PETREL_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<petrel_runtime::config::Secret>,
    /// The kind of model: `mlp` (a burn MLP), `gbt` (gradient-boosted trees) or `cnn` (a burn
    /// convolutional network, for a schema of one image column).
    #[arg(long, env = "PETREL_TRAIN_KIND", default_value = "mlp", value_parser = parse_kind)]
    pub kind: petrel_ml::ModelKind,
    /// Gradient-boosted trees: boosting rounds.
    #[arg(long, env = "PETREL_TRAIN_ROUNDS", default_value_t = TrainConfig::default().rounds)]
    pub rounds: usize,
    /// Gradient-boosted trees: the deepest a tree grows.
    #[arg(long, env = "PETREL_TRAIN_MAX_DEPTH", default_value_t = TrainConfig::default().max_depth)]
    pub max_depth: usize,
    /// Gradient-boosted trees: the learning rate (XGBoost's eta).
    #[arg(long, env = "PETREL_TRAIN_ETA", default_value_t = TrainConfig::default().eta)]
    pub eta: f64,
    /// Width of each hidden layer of the MLP.
    #[arg(long, env = "PETREL_TRAIN_HIDDEN_SIZE", default_value_t = TrainConfig::default().hidden_size)]
    pub hidden_size: usize,
    /// Hidden layers of the MLP.
    #[arg(long, env = "PETREL_TRAIN_DEPTH", default_value_t = TrainConfig::default().depth)]
    pub depth: usize,
    /// Share of hidden activations dropped in each training step (0: no dropout).
    #[arg(long, env = "PETREL_TRAIN_DROPOUT", default_value_t = TrainConfig::default().dropout)]
    pub dropout: f64,
    /// L2 weight decay of Adam (0: none).
    #[arg(long, env = "PETREL_TRAIN_WEIGHT_DECAY", default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Early stopping: epochs without a lower validation loss before training stops (0: off).
    #[arg(long, env = "PETREL_TRAIN_PATIENCE", default_value_t = TrainConfig::default().patience)]
    pub patience: usize,
    /// Buckets each text column hashes into: the width of its TF-IDF features.
    #[arg(long, env = "PETREL_TRAIN_TEXT_BUCKETS", default_value_t = TrainConfig::default().text_buckets)]
    pub text_buckets: usize,
    /// Text terms join up to this many consecutive words (1: words, 2: words and word pairs).
    #[arg(long, env = "PETREL_TRAIN_TEXT_NGRAMS", default_value_t = TrainConfig::default().text_ngrams)]
    pub text_ngrams: usize,
    /// Stratified k-fold cross-validation of every job's configuration on its training split,
    /// logged as `cv_*` metrics (0: off; 2 to 20 folds).
    #[arg(long, env = "PETREL_TRAIN_CV_FOLDS", default_value_t = 0)]
    pub cv_folds: usize,
    /// A sweep for every job: a JSON file with `grid` (lists of hidden_size, depth,
    /// learning_rate, epochs, dropout, weight_decay), `folds`, `concurrency` and optionally
    /// `samples` for a random search. Each trial is cross-validated and logged as a child run;
    /// the best is trained on the whole training split and registered.
    #[arg(long, env = "PETREL_TRAIN_SWEEP")]
    pub sweep: Option<std::path::PathBuf>,
    /// CNN: channels of the first convolution block (the second has twice as many).
    #[arg(long, env = "PETREL_TRAIN_CHANNELS", default_value_t = TrainConfig::default().channels)]
    pub channels: usize,
    /// Rows per optimisation step (0: the whole split for the MLP, 64 for the CNN).
    #[arg(long, env = "PETREL_TRAIN_BATCH_SIZE", default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Training epochs (full passes over the training split).
    #[arg(long, env = "PETREL_TRAIN_EPOCHS", default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Adam learning rate.
    #[arg(long, env = "PETREL_TRAIN_LEARNING_RATE", default_value_t = TrainConfig::default().learning_rate)]
    pub learning_rate: f64,
    /// Share of rows held out for the test split.
    #[arg(long, env = "PETREL_TRAIN_TEST_FRACTION", default_value_t = TrainConfig::default().test_fraction)]
    pub test_fraction: f64,
    /// Seed for the split, initialisation and shuffling: same data and seed, same model.
    #[arg(long, env = "PETREL_TRAIN_SEED", default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogArgs {
        &self.log
    }
}

impl Config {
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            kind: self.kind,
            rounds: self.rounds,
            max_depth: self.max_depth,
            eta: self.eta,
            hidden_size: self.hidden_size,
            depth: self.depth,
            dropout: self.dropout,
            epochs: self.epochs,
            patience: self.patience,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            test_fraction: self.test_fraction,
            seed: self.seed,
            text_buckets: self.text_buckets,
            text_ngrams: self.text_ngrams,
            channels: self.channels,
            batch_size: self.batch_size,
            ..TrainConfig::default()
        }
    }

    /// How each job chooses its configuration, checked against the base configuration so a bad
    /// sweep file stops the service at start rather than failing every job.
    pub fn tuning(&self, base: &TrainConfig) -> anyhow::Result<Tuning> {
        use anyhow::Context as _;
        if self.cv_folds == 1 || self.cv_folds > petrel_ml::MAX_FOLDS {
            anyhow::bail!(
                "--cv-folds must be 0 (off) or 2 to {}",
                petrel_ml::MAX_FOLDS
            );
        }
        let sweep = match &self.sweep {
            None => None,
            Some(path) => {
                let text = std::fs::read(path)
                    .with_context(|| format!("cannot read the sweep file {}", path.display()))?;
                let spec: SweepSpec = serde_json::from_slice(&text)
                    .with_context(|| format!("{} is not a valid sweep", path.display()))?;
                spec.trials(base)
                    .with_context(|| format!("{} is not a valid sweep", path.display()))?;
                Some(spec)
            }
        };
        Ok(Tuning {
            cv_folds: self.cv_folds,
            sweep,
        })
    }
}

fn parse_kind(s: &str) -> Result<petrel_ml::ModelKind, String> {
    match s {
        "mlp" => Ok(petrel_ml::ModelKind::Mlp),
        "gbt" => Ok(petrel_ml::ModelKind::Gbt),
        "cnn" => Ok(petrel_ml::ModelKind::Cnn),
        other => Err(format!(
            "{other:?} is not a model kind; use mlp, gbt or cnn"
        )),
    }
}

/// How a job chooses its configuration: as configured (optionally cross-validated), or by a
/// sweep.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Tuning {
    pub cv_folds: usize,
    pub sweep: Option<SweepSpec>,
}

/// Shared state of handlers and the consumer.
#[derive(Clone, Debug)]
pub struct AppState {
    pub infra: Infra,
    pub store: Arc<dyn ArtifactStore>,
    pub registry: RegistryClient,
    pub labeler: petrel_api::ApiClient,
    pub ingest: petrel_api::ApiClient,
    pub train: TrainConfig,
    pub tuning: Tuning,
    /// Fires when the service shuts down: a job training then stops within an epoch and is
    /// left for redelivery, to resume on the next start (or another instance).
    pub shutdown: CancellationToken,
}

/// A built trainer: connected, listening, not yet consuming.
#[derive(Debug)]
pub struct App {
    port: u16,
    listener: TcpListener,
    state: AppState,
    cancel: CancellationToken,
}

impl App {
    pub async fn build(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        let train = config.train_config();
        train.validate()?;
        let tuning = config.tuning(&train)?;
        let infra = Infra::connect(
            "trainer",
            "trainer",
            &config.postgres,
            &config.nats,
            &MIGRATOR,
        )
        .await?;
        let store = config.store.open().await?;
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "trainer listening");
        let registry = RegistryClient::new(&config.registry_url)
            .with_token(config.registry_token.as_ref().map(|t| t.expose()));
        Ok(Self {
            port,
            listener,
            state: AppState {
                infra,
                store,
                registry,
                labeler: petrel_api::ApiClient::new(&config.labeler_url),
                ingest: petrel_api::ApiClient::new(&config.ingest_url),
                train,
                tuning,
                shutdown: cancel.clone(),
            },
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        petrel_runtime::metrics::describe_with(crate::jobs::describe_metrics);
        let mut tasks = Tasks::new(self.cancel.clone());
        tasks.spawn_http(self.listener, routes::router(self.state.clone()));
        tasks.spawn_outbox(self.state.infra.relay.clone());
        let spec = ConsumerSpec {
            // Training can take long: progress acks keep the event ours meanwhile, and one event
            // per pull keeps the ones behind it free for other replicas.
            ack_wait: Duration::from_secs(60),
            batch: 1,
            ..ConsumerSpec::durable("trainer", subjects::DATA_READY)
        };
        let state = self.state.clone();
        tasks.spawn_consumer("consumer", state.infra.bus.clone(), spec, move |env| {
            let state = state.clone();
            async move { jobs::on_data_ready(&state, env.id, env.data).await }
        });
        // Jobs asked for over HTTP (or by a retraining policy): the same way, on their own
        // consumer, so a long data.ready job does not hold them up.
        let spec = ConsumerSpec {
            ack_wait: Duration::from_secs(60),
            batch: 1,
            ..ConsumerSpec::durable("trainer-requests", subjects::MODEL_TRAINING_REQUESTED)
        };
        let state = self.state.clone();
        tasks.spawn_consumer("requests", state.infra.bus.clone(), spec, move |env| {
            let state = state.clone();
            async move { jobs::on_training_requested(&state, env.data).await }
        });
        // Alerts, for models whose retraining policy asks for it.
        let spec = ConsumerSpec {
            ack_wait: Duration::from_secs(60),
            batch: 1,
            ..ConsumerSpec::durable("trainer-alerts", subjects::ALERTS)
        };
        let state = self.state.clone();
        tasks.spawn_consumer("alerts", state.infra.bus.clone(), spec, move |env| {
            let state = state.clone();
            async move { retrain::on_alert(&state, env).await }
        });
        tasks.join().await
    }
}
