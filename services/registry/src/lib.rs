//! Petrel registry: experiment tracking and the model registry, with MLflow's nouns
//! (experiments, runs, params, metrics, registered models, versions, aliases) kept in Postgres.
//!
//! Registering a version and moving an alias each announce themselves (`model.registered`,
//! `model.promoted`) through the outbox, in the same transaction as the change.
//!
//! Beside Petrel's own `/api/v1`, the same tables answer MLflow's REST API 2.0 and its artifact
//! proxy ([`mlflow`]), so unchanged MLflow clients can track runs and register models here.

mod auth;
mod error;
mod mlflow;
mod policy;
mod routes;
mod store;

use std::sync::Arc;

use clap::Parser;
use petrel_runtime::config::{LogArgs, NatsArgs, PostgresArgs, StoreArgs};
use petrel_runtime::infra::Infra;
use petrel_runtime::service::{ServiceConfig, Tasks};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Registry configuration.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "petrel-registry",
    version,
    about = "Petrel's experiment tracking and model registry"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "PETREL_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: String,
    #[command(flatten)]
    pub auth: auth::AuthArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where MLflow clients' artifacts go (under `mlflow/`), through the artifact proxy.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Largest file one MLflow artifact upload may write, in MiB.
    #[arg(long, env = "PETREL_REGISTRY_MAX_ARTIFACT_MB", default_value_t = 2048)]
    pub max_artifact_mb: u64,
    #[command(flatten)]
    pub log: LogArgs,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogArgs {
        &self.log
    }
}

/// Shared state of the request handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub infra: Infra,
    pub auth: auth::Auth,
    /// MLflow's artifacts, streamed in and out by the artifact proxy.
    pub store: Arc<dyn petrel_store::ArtifactStore>,
    pub max_artifact_bytes: u64,
}

/// A built registry: connected, listening, not yet serving.
#[derive(Debug)]
pub struct App {
    port: u16,
    listener: TcpListener,
    state: AppState,
    cancel: CancellationToken,
}

impl App {
    /// Connects to Postgres and NATS and binds the listener (port 0 picks a free port).
    pub async fn build(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        let auth = auth::Auth::from_args(&config.auth)?;
        let infra = Infra::connect(
            "registry",
            "registry",
            &config.postgres,
            &config.nats,
            &MIGRATOR,
        )
        .await?;
        let store = config.store.open().await?;
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "registry listening");
        Ok(Self {
            port,
            listener,
            state: AppState {
                infra,
                auth,
                store,
                max_artifact_bytes: config.max_artifact_mb.saturating_mul(1024 * 1024),
            },
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until cancelled.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut tasks = Tasks::new(self.cancel.clone());
        tasks.spawn_http(self.listener, routes::router(self.state.clone()));
        tasks.spawn_outbox(self.state.infra.relay.clone());
        tasks.join().await
    }
}
