//! Petrel predictor: serves the model behind an alias (`production` by default) over HTTP.
//!
//! The served model is swapped atomically when the alias moves (`model.promoted`), so requests
//! never wait on a reload and never see a half-loaded model. Every prediction is written to
//! Postgres before its response leaves (group commit: concurrent requests share a transaction),
//! and each commit announces its rows in one `predictions.logged` event through the outbox.

pub mod container;
mod log;
mod model;
pub mod protocol;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use petrel_api::registry::RegistryClient;
use petrel_events::consumer::{ConsumerSpec, Outcome};
use petrel_events::payloads::subjects;
use petrel_runtime::config::{LogArgs, NatsArgs, PostgresArgs, StoreArgs};
use petrel_runtime::infra::Infra;
use petrel_runtime::service::{ServiceConfig, Tasks};
use petrel_store::ArtifactStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use model::{Served, ServedSlot};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long HTTP lets requests in flight finish on shutdown, as `Tasks::spawn_http` does.
const HTTP_DRAIN: Duration = Duration::from_secs(30);

/// Predictor configuration.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "petrel-predictor",
    version,
    about = "Petrel's predictor: serves the production model over HTTP"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "PETREL_PREDICTOR_LISTEN",
        default_value = "127.0.0.1:8084"
    )]
    pub listen: String,
    /// Base URL of the registry.
    #[arg(
        long,
        env = "PETREL_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// Registered model to serve.
    #[arg(long, env = "PETREL_MODEL_NAME", default_value = "penguins")]
    pub model_name: String,
    /// Alias of the version to serve.
    #[arg(long, env = "PETREL_MODEL_ALIAS", default_value = "production")]
    pub model_alias: String,
    /// Most rows one request may carry.
    #[arg(long, env = "PETREL_PREDICTOR_MAX_ROWS", default_value_t = 1000)]
    pub max_rows: usize,
    /// How often to ask the registry which version the alias names, in case an event was
    /// missed (seconds).
    #[arg(long, env = "PETREL_PREDICTOR_RECONCILE_SECS", default_value_t = 30)]
    pub reconcile_secs: u64,
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
    pub slot: ServedSlot,
    pub logger: log::Logger,
    pub max_rows: usize,
}

#[derive(Debug)]
pub struct App {
    port: u16,
    listener: TcpListener,
    state: AppState,
    writer: log::Writer,
    loader: model::Loader,
    reconcile: Duration,
    cancel: CancellationToken,
}

impl App {
    pub async fn build(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_rows > 0, "--max-rows must be at least 1");
        let infra = Infra::connect(
            "predictor",
            "predictor",
            &config.postgres,
            &config.nats,
            &MIGRATOR,
        )
        .await?;
        let store: Arc<dyn ArtifactStore> = petrel_store::open(&config.store.artifact_root)?;
        let slot = ServedSlot::default();
        let loader = model::Loader::new(
            RegistryClient::new(&config.registry_url),
            store,
            slot.clone(),
            &config.model_name,
            &config.model_alias,
        );
        // Serve at once if a model is ready; otherwise the reconcile loop keeps trying.
        if let Err(e) = loader.reconcile().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "no model loaded at start; will retry"
            );
        }
        let (logger, writer) = log::channel(infra.clone());
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "predictor listening");
        let state = AppState {
            infra,
            slot,
            logger,
            max_rows: config.max_rows,
        };
        Ok(Self {
            port,
            listener,
            state,
            writer,
            loader,
            reconcile: Duration::from_secs(config.reconcile_secs.max(1)),
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let mut tasks = Tasks::new(self.cancel.clone());
        // The prediction log stops once HTTP has ended (drained, or given up after the drain
        // period), so requests in flight still commit their predictions. It does not wait for
        // every sender to be dropped: connection tasks that outlive a timed-out drain keep the
        // router, and with it a sender, alive.
        let http_done = CancellationToken::new();
        let (listener, router) = (self.listener, routes::router(self.state.clone()));
        let (cancel, ended) = (self.cancel.clone(), http_done.clone());
        tasks.spawn("http", async move {
            // Cancels on every way out: drained, timed out, failed or aborted.
            let _ended = ended.drop_guard();
            petrel_runtime::http::serve(listener, router, cancel, HTTP_DRAIN).await?;
            Ok(())
        });
        let writer = self.writer;
        let writer_done = CancellationToken::new();
        let done = writer_done.clone();
        tasks.spawn("prediction-log", async move {
            writer.run(http_done).await;
            done.cancel();
            Ok(())
        });
        let state = self.state;
        let relay = state.infra.relay.clone();
        let cancel = self.cancel.clone();
        tasks.spawn("outbox", async move {
            relay.clone().run(cancel).await;
            // Publish what the log's last commits enqueued.
            writer_done.cancelled().await;
            relay.drain().await?;
            Ok(())
        });
        let loader = self.loader.clone();
        let cancel = self.cancel.clone();
        let every = self.reconcile;
        tasks.spawn("reconcile", async move {
            loader.reconcile_loop(every, cancel).await;
            Ok(())
        });
        let loader = self.loader;
        let bus = state.infra.bus.clone();
        // The router holds the other senders of the prediction log; this one goes too, so the log
        // also ends by itself once nothing can send to it.
        drop(state);
        let spec = ConsumerSpec::ephemeral("predictor-reloads", subjects::MODEL_PROMOTED);
        tasks.spawn_consumer("reloads", bus, spec, move |env| {
            let loader = loader.clone();
            async move {
                match loader.on_promoted(&env.data).await {
                    Ok(()) => Outcome::Done,
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "reload failed; retrying");
                        Outcome::Retry(Duration::from_secs(2))
                    }
                }
            }
        });
        tasks.join().await
    }
}
