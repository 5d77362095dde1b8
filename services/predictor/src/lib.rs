//! Petrel predictor: serves the model behind an alias (`production` by default) over HTTP.
//!
//! The served model is swapped atomically when the alias moves (`model.promoted`), so requests
//! never wait on a reload and never see a half-loaded model. Every prediction is durable before
//! its response leaves: JetStream is the prediction log ([`log`]), concurrent requests share one
//! `predictions.logged` message, and the response waits for JetStream's acknowledgement.
//! Postgres is written downstream, in bulk ([`store`]), and only read for idempotent replays of
//! caller-chosen inference ids ([`replay`]).

pub mod backend;
pub mod batch;
pub mod container;
pub mod fence;
pub mod log;
mod model;
pub mod protocol;
pub mod replay;
pub mod routes;
mod serving;
mod store;

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

pub use model::{ModelRef, Served, ServedSlot};

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
    /// A registry token (`write` scope for the trainer, `read` for the others), needed when
    /// the registry runs with `--auth on`. Never logged.
    #[arg(long, env = "PETREL_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<petrel_runtime::config::Secret>,
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
    /// Requests scored at once; past it requests get 503 with `Retry-After` (load shedding).
    #[arg(long, env = "PETREL_PREDICTOR_MAX_CONCURRENCY", default_value_t = 4096)]
    pub max_concurrency: usize,
    /// Longest a scoring request may take, logging included, before it gets a 503 (ms).
    #[arg(
        long,
        env = "PETREL_PREDICTOR_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_timeout_ms: u64,
    /// Largest request body (bytes); larger ones get 413.
    #[arg(long, env = "PETREL_PREDICTOR_BODY_LIMIT", default_value_t = 16 << 20)]
    pub body_limit: usize,
    /// What to do with a category the model never saw in training: `encode` it as unknown
    /// (none of the known categories) or `reject` the row with a 422.
    #[arg(long, env = "PETREL_PREDICTOR_UNSEEN_CATEGORIES", value_enum, default_value_t = UnseenCategories::Encode)]
    pub unseen_categories: UnseenCategories,
    /// Pinned versions (`name/3`, `name@alias` in a request's `model`) kept loaded at most.
    #[arg(long, env = "PETREL_PREDICTOR_PINNED_VERSIONS", default_value_t = 4)]
    pub pinned_versions: usize,
    /// Answers to caller-chosen inference ids kept in memory for idempotent replays (older ones
    /// are read back from Postgres).
    #[arg(
        long,
        env = "PETREL_PREDICTOR_REPLAY_CAPACITY",
        default_value_t = 100_000
    )]
    pub replay_capacity: usize,
    /// `predictions.logged` messages published and not yet acknowledged at once.
    #[arg(long, env = "PETREL_PREDICTOR_LOG_IN_FLIGHT", default_value_t = 32)]
    pub log_in_flight: usize,
    /// Bytes of predictions waiting for NATS at most; past it requests get 503 with
    /// `Retry-After` instead of queueing without bound.
    #[arg(long, env = "PETREL_PREDICTOR_LOG_BUFFER", default_value_t = 64 << 20)]
    pub log_buffer: usize,
    /// How long a `predictions.logged` message may wait for JetStream's acknowledgement,
    /// retries included, before its requests get 503 (ms).
    #[arg(
        long,
        env = "PETREL_PREDICTOR_LOG_DEADLINE_MS",
        default_value_t = 5_000
    )]
    pub log_deadline_ms: u64,
    /// How long a running batch job may go without a heartbeat before another runner takes it
    /// for abandoned (its runner died) and resumes it (seconds).
    #[arg(long, env = "PETREL_PREDICTOR_BATCH_LEASE_SECS", default_value_t = 60)]
    pub batch_lease_secs: u64,
    /// Where predictions are computed: `local` (in process) or `sagemaker` (a SageMaker
    /// endpoint hosting the same model; see the `--sagemaker-*` options).
    #[arg(long, env = "PETREL_PREDICTOR_BACKEND", value_enum, default_value_t = backend::BackendKind::Local)]
    pub backend: backend::BackendKind,
    #[command(flatten)]
    pub sagemaker: backend::sagemaker::SageMakerArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The unseen-category policy.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnseenCategories {
    Encode,
    Reject,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogArgs {
        &self.log
    }
}

#[derive(Clone, Debug)]
pub struct AppState {
    pub infra: Infra,
    /// Where predictions are computed.
    pub backend: Arc<dyn backend::Backend>,
    pub slot: ServedSlot,
    pub loader: model::Loader,
    pub logger: log::Logger,
    pub replay: replay::Replay,
    /// Open once the Postgres copy of the log holds what was logged before this process
    /// started; replay lookups wait for it.
    pub log_fence: fence::LogFence,
    pub max_rows: usize,
    pub reject_unseen: bool,
    pub admission: routes::Admission,
    pub body_limit: usize,
    /// Where batch jobs read their input and write their results.
    pub store: Arc<dyn ArtifactStore>,
    /// Where batch jobs record their runs.
    pub registry: RegistryClient,
    pub batch: batch::Batch,
}

impl AppState {
    /// Ready when NATS is connected and the log has room. Postgres is only reported:
    /// predictions are answered without it. A predictor still waiting for its first model is
    /// ready (its dependencies work; `GET /ping` and `/v1/model` say whether a model is served),
    /// so the services that produce the model can be started after it.
    pub fn readiness(&self) -> petrel_runtime::http::Readiness {
        let mut r = self.infra.readiness();
        r.needs_postgres = false;
        let logger = self.logger.clone();
        r.checks.push(Arc::new(move || logger.unready()));
        r
    }
}

#[derive(Debug)]
pub struct App {
    port: u16,
    listener: TcpListener,
    state: AppState,
    shipper: log::Shipper,
    fence_keeper: fence::FenceKeeper,
    loader: model::Loader,
    reconcile: Duration,
    cancel: CancellationToken,
}

impl App {
    pub async fn build(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_rows > 0, "--max-rows must be at least 1");
        anyhow::ensure!(
            config.max_concurrency > 0,
            "--max-concurrency must be at least 1"
        );
        anyhow::ensure!(
            config.log_buffer >= log::MAX_MESSAGE_BYTES && config.log_buffer <= u32::MAX as usize,
            "--log-buffer must be between {} and {} bytes",
            log::MAX_MESSAGE_BYTES,
            u32::MAX
        );
        let infra = Infra::connect(
            "predictor",
            "predictor",
            &config.postgres,
            &config.nats,
            &MIGRATOR,
        )
        .await?;
        let store: Arc<dyn ArtifactStore> = config.store.open().await?;
        let slot = ServedSlot::default();
        let registry = RegistryClient::new(&config.registry_url)
            .with_token(config.registry_token.as_ref().map(|t| t.expose()));
        let loader = model::Loader::new(
            registry.clone(),
            store.clone(),
            slot.clone(),
            &config.model_name,
            &config.model_alias,
        )
        .with_pinned_capacity(config.pinned_versions);
        // Serve at once if a model is ready; otherwise the reconcile loop keeps trying.
        if let Err(e) = loader.reconcile().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "no model loaded at start; will retry"
            );
        }
        let (logger, shipper) = log::channel(
            infra.bus.clone(),
            log::LogConfig {
                max_in_flight: config.log_in_flight.max(1),
                max_queued_bytes: config.log_buffer,
                publish_deadline: Duration::from_millis(config.log_deadline_ms.max(1)),
            },
        );
        let (listener, port) = petrel_runtime::http::bind(&config.listen).await?;
        tracing::info!(port, "predictor listening");
        let (log_fence, fence_keeper) = fence::fence();
        let state = AppState {
            infra,
            backend: backend::from_config(&config).await?,
            slot,
            loader: loader.clone(),
            logger,
            replay: replay::Replay::new(config.replay_capacity),
            log_fence,
            max_rows: config.max_rows,
            reject_unseen: config.unseen_categories == UnseenCategories::Reject,
            admission: routes::Admission {
                permits: Arc::new(tokio::sync::Semaphore::new(config.max_concurrency)),
                timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
            },
            body_limit: config.body_limit,
            store,
            registry,
            batch: batch::Batch {
                model_name: config.model_name.clone(),
                lease: Duration::from_secs(config.batch_lease_secs.max(1)),
                wake: Arc::default(),
            },
        };
        Ok(Self {
            port,
            listener,
            state,
            shipper,
            fence_keeper,
            loader,
            reconcile: Duration::from_secs(config.reconcile_secs.max(1)),
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        petrel_runtime::metrics::describe_with(crate::log::describe_metrics);
        let mut tasks = Tasks::new(self.cancel.clone());
        // The prediction log stops once HTTP has ended (drained, or given up after the drain
        // period), so requests in flight still get their rows logged. It does not wait for
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
        let shipper = self.shipper;
        tasks.spawn("prediction-log", async move {
            shipper.run(http_done).await;
            Ok(())
        });
        let state = self.state;
        let (keeper, bus, cancel) = (
            self.fence_keeper,
            state.infra.bus.clone(),
            self.cancel.clone(),
        );
        // Opening the fence is a one-off; the task then waits for shutdown like the others
        // (a task that ends early stops the service).
        tasks.spawn("log-fence", async move {
            keeper.run(bus, cancel.clone()).await;
            cancel.cancelled().await;
            Ok(())
        });
        // This service's copy of the log, written downstream in bulk.
        let pool = state.infra.pool.clone();
        let mut spec = ConsumerSpec::durable(fence::LOG_CONSUMER, subjects::PREDICTIONS_LOGGED);
        spec.batch = 64;
        // Bulk inserts take milliseconds and a fetch collects for at most 2 s; a batch held
        // by a stopped or crashed process comes back soon, which also bounds how long the
        // replay fence of the next process stays closed.
        spec.ack_wait = Duration::from_secs(5);
        tasks.spawn_batch_consumer("log-store", state.infra.bus.clone(), spec, move |batch| {
            let pool = pool.clone();
            async move { store::on_logged(&pool, batch).await }
        });
        // Batch jobs: the consumer scores scoring datasets as they are announced, the worker
        // takes jobs posted over HTTP and those left behind (retries, a crash, a shutdown).
        let spec = ConsumerSpec {
            // A job can take long: progress acks keep the event ours meanwhile, and one event
            // per pull keeps the ones behind it free for other replicas.
            ack_wait: Duration::from_secs(60),
            batch: 1,
            ..ConsumerSpec::durable(batch::CONSUMER, subjects::DATA_READY)
        };
        let (s, cancel) = (state.clone(), self.cancel.clone());
        tasks.spawn_consumer(
            "batch-consumer",
            state.infra.bus.clone(),
            spec,
            move |env| {
                let (s, cancel) = (s.clone(), cancel.clone());
                async move { batch::on_data_ready(&s, env.id, env.data, &cancel).await }
            },
        );
        let (s, cancel) = (state.clone(), self.cancel.clone());
        tasks.spawn("batch-worker", async move {
            batch::worker(s, cancel).await;
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
        let cancel = self.cancel.clone();
        let catch_up = loader.clone();
        tasks.spawn("reloads", async move {
            // Recreated after a NATS restart (an ephemeral consumer does not survive one); what
            // was promoted meanwhile is caught up by asking the registry at once.
            let on_recreated = move || {
                let loader = catch_up.clone();
                tokio::spawn(async move {
                    if let Err(e) = loader.reconcile().await {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "reconcile after reconnect failed"
                        );
                    }
                });
            };
            petrel_events::consumer::run_notified(bus, spec, cancel, on_recreated, move |env| {
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
            })
            .await?;
            Ok(())
        });
        tasks.join().await
    }
}
