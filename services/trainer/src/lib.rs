//! Petrel trainer: on `data.ready`, trains a burn MLP classifier on the dataset, writes the model
//! bundle to the artifact store, and registers the run and a model version with the registry.
//!
//! Each training is a job row keyed by the triggering event, so a redelivered event resumes or
//! acknowledges its job rather than training twice, and the registry calls carry the job id as
//! their idempotency key.

mod jobs;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use petrel_api::registry::RegistryClient;
use petrel_events::consumer::ConsumerSpec;
use petrel_events::payloads::subjects;
use petrel_ml::TrainConfig;
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
    /// A registry token (`write` scope for the trainer, `read` for the others), needed when
    /// the registry runs with `--auth on`. Never logged.
    #[arg(long, env = "PETREL_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<petrel_runtime::config::Secret>,
    /// Hidden layer width of the MLP.
    #[arg(long, env = "PETREL_TRAIN_HIDDEN_SIZE", default_value_t = TrainConfig::default().hidden_size)]
    pub hidden_size: usize,
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
            hidden_size: self.hidden_size,
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            test_fraction: self.test_fraction,
            seed: self.seed,
            ..TrainConfig::default()
        }
    }
}

/// Shared state of handlers and the consumer.
#[derive(Clone, Debug)]
pub struct AppState {
    pub infra: Infra,
    pub store: Arc<dyn ArtifactStore>,
    pub registry: RegistryClient,
    pub train: TrainConfig,
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
                train,
            },
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let mut tasks = Tasks::new(self.cancel.clone());
        tasks.spawn_http(self.listener, routes::router(self.state.clone()));
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
        tasks.join().await
    }
}
