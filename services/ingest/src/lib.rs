//! Petrel ingest: validates CSV and Parquet files against a declared schema and checks (from
//! a streamed upload, the data directory, S3 or a generator), stores them in
//! the artifact store, records each dataset in Postgres and announces `data.ready` (or, for a
//! rejected file, `alerts.data_quality`) through the outbox; runs schedules that ingest a
//! source once per interval.

mod cadence;
mod datasets;
mod lineage;
mod schedules;
mod source;
mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use petrel_api::ApiClient;
use petrel_api::registry::RegistryClient;
use petrel_runtime::config::{LogArgs, NatsArgs, PostgresArgs, StoreArgs};
use petrel_runtime::infra::Infra;
use petrel_runtime::service::{ServiceConfig, Tasks};
use petrel_store::ArtifactStore;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Ingest configuration.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "petrel-ingest",
    version,
    about = "Petrel's ingest: validated datasets and data.ready events"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "PETREL_INGEST_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: String,
    /// Refuse a file when more than this share of its rows is invalid (the rest are reported
    /// and left out either way).
    #[arg(
        long,
        env = "PETREL_INGEST_MAX_REJECTED_FRACTION",
        default_value_t = 0.1
    )]
    pub max_rejected_fraction: f64,
    /// Directory whose files may be ingested by `path` (requests cannot read outside it).
    #[arg(long, env = "PETREL_INGEST_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Largest JSON request body (a CSV sent inline travels inside it), in MiB.
    #[arg(long, env = "PETREL_INGEST_MAX_BODY_MB", default_value_t = 64)]
    pub max_body_mb: usize,
    /// Largest file streamed to `POST /v1/datasets/upload` or read from S3, in MiB (a 413
    /// beyond it).
    #[arg(long, env = "PETREL_INGEST_MAX_UPLOAD_MB", default_value_t = 10240)]
    pub max_upload_mb: u64,
    /// Where uploads and S3 objects are spooled while they are validated; needs room for the
    /// largest file twice (the file and its accepted rows). The system's temporary directory
    /// when unset.
    #[arg(long, env = "PETREL_INGEST_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Run schedules from this instance (any number of instances may: each interval runs
    /// once).
    #[arg(
        long,
        env = "PETREL_INGEST_SCHEDULER",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub scheduler: bool,
    /// How often the scheduler looks for due intervals, in milliseconds.
    #[arg(long, env = "PETREL_INGEST_SCHEDULE_TICK_MS", default_value_t = 1000)]
    pub schedule_tick_ms: u64,
    /// How long a claimed run is held without renewal before another instance may take it,
    /// in seconds (renewed every third of it while the run works).
    #[arg(long, env = "PETREL_INGEST_RUN_LEASE_S", default_value_t = 60)]
    pub run_lease_s: u64,
    /// Base URL of the predictor: lineage reads logged predictions there.
    #[arg(
        long,
        env = "PETREL_PREDICTOR_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    pub predictor_url: String,
    /// Base URL of the registry: lineage reads model versions and runs there.
    #[arg(
        long,
        env = "PETREL_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// A registry token with the `read` scope, needed when the registry runs with
    /// `--auth on`. Never logged.
    #[arg(long, env = "PETREL_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<petrel_runtime::config::Secret>,
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
    pub store: Arc<dyn ArtifactStore>,
    pub max_rejected_fraction: f64,
    pub data_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub max_upload_bytes: u64,
    /// How `uri` sources reach S3 (the artifact store's settings).
    pub s3: petrel_store::S3Options,
    /// Wakes the scheduler early (a backfill queued runs).
    pub scheduler_wake: Arc<Notify>,
    /// For lineage.
    pub predictor: ApiClient,
    pub registry: RegistryClient,
}

#[derive(Debug)]
pub struct App {
    port: u16,
    listener: TcpListener,
    state: AppState,
    body_limit: usize,
    /// None when this instance runs no schedules.
    pace: Option<schedules::Pace>,
    cancel: CancellationToken,
}

impl App {
    pub async fn build(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&config.max_rejected_fraction),
            "--max-rejected-fraction must be between 0 and 1"
        );
        anyhow::ensure!(
            (10..=600_000).contains(&config.schedule_tick_ms),
            "--schedule-tick-ms must be between 10 and 600000"
        );
        anyhow::ensure!(
            (3..=86_400).contains(&config.run_lease_s),
            "--run-lease-s must be between 3 and 86400"
        );
        anyhow::ensure!(
            config.max_upload_mb >= 1,
            "--max-upload-mb must be at least 1"
        );
        let infra = Infra::connect(
            "ingest",
            "ingest",
            &config.postgres,
            &config.nats,
            &MIGRATOR,
        )
        .await?;
        let store = config.store.open().await?;
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "ingest listening");
        let state = AppState {
            infra,
            store,
            max_rejected_fraction: config.max_rejected_fraction,
            data_dir: config.data_dir.clone(),
            spool_dir: config.spool_dir.clone().unwrap_or_else(std::env::temp_dir),
            max_upload_bytes: config.max_upload_mb << 20,
            s3: config.store.s3_options(),
            scheduler_wake: Arc::new(Notify::new()),
            predictor: ApiClient::new(&config.predictor_url),
            registry: RegistryClient::new(&config.registry_url)
                .with_token(config.registry_token.as_ref().map(|t| t.expose())),
        };
        let pace = config.scheduler.then(|| schedules::Pace {
            tick: Duration::from_millis(config.schedule_tick_ms),
            lease: Duration::from_secs(config.run_lease_s),
        });
        Ok(Self {
            port,
            listener,
            state,
            body_limit: config.max_body_mb << 20,
            pace,
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        petrel_runtime::metrics::describe_with(crate::datasets::describe_metrics);
        let mut tasks = Tasks::new(self.cancel.clone());
        tasks.spawn_http(
            self.listener,
            datasets::router(self.state.clone(), self.body_limit),
        );
        tasks.spawn_outbox(self.state.infra.relay.clone());
        if let Some(pace) = self.pace {
            let (state, cancel) = (self.state.clone(), self.cancel.clone());
            tasks.spawn("scheduler", schedules::run(state, pace, cancel));
        }
        tasks.join().await
    }
}
