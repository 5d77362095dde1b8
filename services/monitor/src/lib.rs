//! Petrel monitor: collects logged predictions and joined labels and closes them into windows
//! of prediction time per model version. For each window it tests feature drift against the
//! training split (`petrel_drift`), prediction drift and estimated accuracy against the model's
//! held-out outputs, data quality, confidence and trends; labels, joined by inference id
//! whenever they arrive, revise the window's quality. Conditions feed alert episodes that open
//! once, renotify on worsening or after a cool-down, and resolve (`alerts.resolved`).

mod analysis;
mod calibration;
mod episodes;
mod ingest;
mod quality;
mod reference;
mod routes;
mod trend;
mod webhook;
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
    /// A registry token (`write` scope for the trainer, `read` for the others), needed when
    /// the registry runs with `--auth on`. Never logged.
    #[arg(long, env = "PETREL_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<petrel_runtime::config::Secret>,
    /// POST every alert notification here (signed when `--webhook-secret` is set).
    #[arg(long, env = "PETREL_MONITOR_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Key of the webhook's `X-Petrel-Signature` (HMAC-SHA256 of `<timestamp>.<body>`).
    #[arg(long, env = "PETREL_MONITOR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<petrel_runtime::config::Secret>,
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
    /// The drift rules the thresholds describe, parsed once at start.
    pub drift_config: petrel_drift::DriftConfig,
    pub webhook: Option<webhook::Webhook>,
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
        let store = config.store.open().await?;
        let references = reference::References::new(
            RegistryClient::new(&config.registry_url)
                .with_token(config.registry_token.as_ref().map(|t| t.expose())),
            store,
        );
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "monitor listening");
        let webhook = match config.webhook_url {
            Some(url) => {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "the webhook URL must start with http:// or https://"
                );
                Some(webhook::Webhook {
                    url,
                    secret: config.webhook_secret,
                    client: reqwest::Client::new(),
                })
            }
            None => None,
        };
        let drift_config = config.thresholds.drift_config()?;
        let state = AppState {
            infra,
            references,
            drift_config,
            thresholds: config.thresholds,
            webhook,
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
        petrel_runtime::metrics::describe_with(crate::window::describe_metrics);
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
        if let Some(hook) = self.state.webhook.clone() {
            let state = self.state.clone();
            let spec = ConsumerSpec::durable("monitor-webhook", subjects::ALERTS);
            tasks.spawn_consumer("webhook", self.state.infra.bus.clone(), spec, move |env| {
                let (state, hook) = (state.clone(), hook.clone());
                async move { webhook::deliver(&state, &hook, env).await }
            });
        }
        let state = self.state.clone();
        let cancel = self.cancel.clone();
        tasks.spawn("windows", async move {
            window::run(state, cancel).await;
            Ok(())
        });
        tasks.join().await
    }
}
