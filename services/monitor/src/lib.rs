//! Petrel monitor: collects logged predictions and joined labels, closes them into windows, and
//! for each window compares live features with the served model's training data (two-sample
//! Kolmogorov-Smirnov for numeric columns, chi-square for categorical ones), measures accuracy
//! and mean confidence, stores a report, and raises `alerts.<kind>` when a threshold is crossed.

mod ingest;
mod reference;
mod routes;
mod window;

use std::time::Duration;

use clap::Parser;
use petrel_api::registry::RegistryClient;
use petrel_events::consumer::ConsumerSpec;
use petrel_events::payloads::subjects;
use petrel_runtime::config::{LogArgs, NatsArgs, PostgresArgs, StoreArgs};
use petrel_runtime::infra::Infra;
use petrel_runtime::service::{ServiceConfig, Tasks};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use window::Thresholds;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Monitor configuration.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "petrel-monitor",
    version,
    about = "Petrel's monitor: drift, accuracy and confidence alerts"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "PETREL_MONITOR_LISTEN", default_value = "127.0.0.1:8086")]
    pub listen: String,
    /// Base URL of the registry (to find a model version's bundle and training profile).
    #[arg(
        long,
        env = "PETREL_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    #[command(flatten)]
    pub thresholds: Thresholds,
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

#[derive(Clone, Debug)]
pub struct AppState {
    pub infra: Infra,
    pub references: reference::References,
    pub thresholds: Thresholds,
}

#[derive(Debug)]
pub struct App {
    port: u16,
    listener: TcpListener,
    state: AppState,
    cancel: CancellationToken,
}

impl App {
    pub async fn build(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        config.thresholds.validate()?;
        let infra = Infra::connect(
            "monitor",
            "monitor",
            &config.postgres,
            &config.nats,
            &MIGRATOR,
        )
        .await?;
        let store = petrel_store::open(&config.store.artifact_root)?;
        let references =
            reference::References::new(RegistryClient::new(&config.registry_url), store);
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "monitor listening");
        let state = AppState {
            infra,
            references,
            thresholds: config.thresholds,
        };
        Ok(Self {
            port,
            listener,
            state,
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let mut tasks = Tasks::new(self.cancel.clone());
        tasks.spawn_http(self.listener, routes::router(self.state.clone()));
        tasks.spawn_outbox(self.state.infra.relay.clone());
        let bus = self.state.infra.bus.clone();
        let state = self.state.clone();
        let mut spec = ConsumerSpec::durable("monitor-predictions", subjects::PREDICTIONS_LOGGED);
        spec.batch = 64;
        // Bulk inserts take milliseconds; a batch held by a crashed replica comes back soon.
        spec.ack_wait = Duration::from_secs(10);
        tasks.spawn_batch_consumer("predictions", bus.clone(), spec, move |batch| {
            let state = state.clone();
            async move { ingest::on_predictions(&state, batch).await }
        });
        let state = self.state.clone();
        let spec = ConsumerSpec::durable("monitor-labels", subjects::LABELS_JOINED);
        tasks.spawn_consumer("labels", bus, spec, move |env| {
            let state = state.clone();
            async move { ingest::on_labels(&state, env).await }
        });
        let state = self.state.clone();
        let cancel = self.cancel.clone();
        tasks.spawn("windows", async move {
            window::run(state, cancel).await;
            Ok(())
        });
        tasks.join().await
    }
}
