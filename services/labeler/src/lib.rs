//! Petrel labeler: takes ground truth over HTTP, joins it to logged predictions (whichever
//! arrives first waits for the other), and announces each join on `labels.joined`.

mod body;
mod join;
mod stats;
mod upkeep;

use std::time::Duration;

use clap::Parser;
use petrel_events::consumer::ConsumerSpec;
use petrel_events::payloads::subjects;
use petrel_runtime::config::{LogArgs, NatsArgs, PostgresArgs};
use petrel_runtime::infra::Infra;
use petrel_runtime::service::{ServiceConfig, Tasks};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Labeler configuration.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "petrel-labeler",
    version,
    about = "Petrel's labeler: joins ground truth to predictions"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "PETREL_LABELER_LISTEN", default_value = "127.0.0.1:8085")]
    pub listen: String,
    /// Most labels one request may carry. Each request is one transaction and one statement per
    /// side, so bulk uploads are fast; the body limit (32 MiB) bounds it too.
    #[arg(long, env = "PETREL_LABELER_MAX_LABELS", default_value_t = 100_000)]
    pub max_labels: usize,
    /// Seconds a label may wait for its prediction before it counts as unknown (in
    /// `GET /v1/labels/stats`, and in the warning logged when unknown labels grow). Predictions
    /// reach the labeler within seconds normally, so an hour means the id was most likely never
    /// served. Unknown labels are still joined if the prediction turns up before retention.
    #[arg(
        long,
        env = "PETREL_LABELER_UNKNOWN_AFTER_SECS",
        default_value_t = 3600
    )]
    pub unknown_after_secs: u64,
    /// Hours rows are kept: a prediction older than this is deleted, joined or never
    /// labelled, and so is a label that waited this long for its prediction. Without it, the
    /// predictions nobody labels would grow the table forever.
    #[arg(
        long,
        env = "PETREL_LABELER_RETENTION_HOURS",
        default_value_t = 168,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub retention_hours: u32,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
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
    pub max_labels: usize,
    /// `--unknown-after-secs`.
    pub unknown_after: Duration,
    /// `--retention-hours`.
    pub retention_hours: u32,
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
        let infra = Infra::connect(
            "labeler",
            "labeler",
            &config.postgres,
            &config.nats,
            &MIGRATOR,
        )
        .await?;
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "labeler listening");
        Ok(Self {
            port,
            listener,
            state: AppState {
                infra,
                max_labels: config.max_labels,
                unknown_after: Duration::from_secs(config.unknown_after_secs),
                retention_hours: config.retention_hours,
            },
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        petrel_runtime::metrics::describe_with(crate::join::describe_metrics);
        let mut tasks = Tasks::new(self.cancel.clone());
        tasks.spawn_http(self.listener, join::router(self.state.clone()));
        tasks.spawn_outbox(self.state.infra.relay.clone());
        tasks.spawn(
            "upkeep",
            upkeep::run(
                self.state.infra.pool.clone(),
                self.state.retention_hours,
                self.state.unknown_after,
                self.cancel.clone(),
            ),
        );
        let state = self.state.clone();
        let mut spec = ConsumerSpec::durable("labeler", subjects::PREDICTIONS_LOGGED);
        spec.batch = 64;
        // Bulk inserts take milliseconds; a batch held by a crashed replica comes back soon.
        spec.ack_wait = Duration::from_secs(10);
        tasks.spawn_batch_consumer("consumer", state.infra.bus.clone(), spec, move |batch| {
            let state = state.clone();
            async move { join::on_predictions(&state, batch).await }
        });
        tasks.join().await
    }
}
