//! Training jobs: from a `data.ready` event to a registered model version.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use petrel_api::ClientError;
use petrel_api::registry::{
    ChampionScore, CreateModelVersion, CreateRun, DATASET_CONTEXT_TAG, DatasetInput, Evaluation,
    LogBatch, LogInputs, LogMetrics, MetricInput, PRODUCTION, Run, RunStatus,
};
use petrel_events::consumer::Outcome;
use petrel_events::payloads::{DataReady, DatasetPurpose};
use petrel_ml::{
    CrossValidation, Holdout, HoldoutScore, MlError, ModelBundle, Stop, SweepObserver, SweepSpec,
    Table, TrainConfig, Trial, cross_validate, parse_csv, sweep, train_classifier_until,
};
use petrel_store::StoreError;
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{AppState, Tuning};

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub event_id: Option<Uuid>,
    pub dataset_id: Uuid,
    pub dataset_name: String,
    pub model_name: String,
    pub status: String,
    pub epoch: i32,
    pub epochs: i32,
    pub train_loss: Option<f64>,
    pub error: Option<String>,
    pub run_id: Option<Uuid>,
    pub model_version: Option<i32>,
    pub metrics: Option<serde_json::Value>,
    /// Trials of the job's sweep, and how many have finished (0 and 0 without a sweep).
    pub trials_total: i32,
    pub trials_done: i32,
    /// The cross-validation of the registered configuration, per fold and summarised.
    pub cv: Option<serde_json::Value>,
    /// The alias holder scored on this job's held-out rows (champion/challenger), or why not.
    pub champion: Option<serde_json::Value>,
    /// The registry's promotion decision for the version, with both scores.
    pub promotion: Option<serde_json::Value>,
    /// What started it: `data.ready`, `api` or `alert`.
    pub source: String,
    /// What it trains with: the configuration and how it is tuned.
    pub plan: Option<serde_json::Value>,
    /// Where training is: `queued`, `sweep`, `cross-validation`, `training`, `scoring the
    /// champion`, `registering`, or the final status.
    pub phase: Option<String>,
    /// Whether a cancel was asked for; a running job stops within an epoch or so.
    pub cancel_requested: bool,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// A sweep's trials so far, each with its child run (`GET /v1/jobs/{id}` only).
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<TrialSummary>,
}

/// One trial of a job's sweep as the API shows it: running or finished, with its child run
/// and, once finished, its mean cross-validated accuracy.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TrialSummary {
    pub trial: i32,
    pub run_id: Option<Uuid>,
    pub status: String,
    pub cv_accuracy: Option<f64>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub const JOB_COLUMNS: &str = "id, event_id, dataset_id, dataset_name, model_name, status, epoch, epochs, \
     train_loss, error, run_id, model_version, metrics, trials_total, trials_done, cv, champion, promotion, \
     source, plan, phase, cancel_requested, started_at, finished_at, created_at, updated_at";

/// How a job trains: the configuration, and how it is chosen (cross-validation, a sweep).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Plan {
    pub config: TrainConfig,
    /// Stored flat: `cv_folds` and `sweep` beside `config`.
    #[serde(flatten)]
    pub tuning: Tuning,
}

impl Plan {
    pub fn of(config: &TrainConfig, tuning: &Tuning) -> Plan {
        Plan {
            config: config.clone(),
            tuning: tuning.clone(),
        }
    }
}

/// Statuses a job ends in.
const FINISHED: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// The data or configuration can never train: the job fails for good.
    #[error("{0}")]
    Permanent(String),
    /// A dependency failed: try again later.
    #[error("{0}")]
    Transient(String),
    /// Someone cancelled the job.
    #[error("cancelled")]
    Cancelled,
    /// The service is shutting down: the job is left for redelivery.
    #[error("interrupted by shutdown")]
    Interrupted,
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Transient(format!("database: {e}"))
    }
}

impl From<ClientError> for JobError {
    fn from(e: ClientError) -> Self {
        if e.is_transient() {
            JobError::Transient(format!("registry: {e}"))
        } else {
            JobError::Permanent(format!("registry refused: {e}"))
        }
    }
}

/// The `data.ready` consumer's handler. Every dataset is remembered (so `POST /v1/jobs` can
/// name it); training data starts a job. The job row is keyed by the event id, so a
/// redelivery finds the job: a finished job is acknowledged again, an unfinished one resumes
/// (training is deterministic and the registry calls are idempotent on the job id).
pub async fn on_data_ready(state: &AppState, event_id: Uuid, data: DataReady) -> Outcome {
    if let Err(e) = remember_dataset(state, &data).await {
        tracing::warn!(error = %e, "cannot record the dataset");
        return Outcome::Retry(Duration::from_secs(5));
    }
    if !should_train(&data) {
        tracing::info!(
            event.id = %event_id,
            dataset.name = %data.name,
            dataset.purpose = data.purpose.as_str(),
            "dataset is not for training; acknowledging"
        );
        return Outcome::Done;
    }
    let plan = Plan::of(&state.train, &state.tuning);
    let job = match find_or_create_job(state, event_id, &data, &plan).await {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the training job");
            return Outcome::Retry(Duration::from_secs(5));
        }
    };
    execute(state, &job, &data, &plan).await
}

/// The `model.training_requested` consumer's handler: the job row says what to train.
pub async fn on_training_requested(
    state: &AppState,
    event: petrel_events::payloads::TrainingRequested,
) -> Outcome {
    /// A job row with the dataset it trains on, read at once.
    #[derive(sqlx::FromRow)]
    struct Requested {
        #[sqlx(flatten)]
        job: Job,
        dataset: serde_json::Value,
    }
    let found = sqlx::query_as::<_, Requested>(&format!(
        "SELECT {JOB_COLUMNS}, dataset FROM training_jobs WHERE id = $1"
    ))
    .bind(event.job_id)
    .fetch_optional(&state.infra.pool)
    .await;
    let (dataset, job) = match found {
        Ok(Some(r)) => (r.dataset, r.job),
        Ok(None) => {
            tracing::warn!(job.id = %event.job_id, "a training request names no job here; acknowledging");
            return Outcome::Done;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the requested job");
            return Outcome::Retry(Duration::from_secs(5));
        }
    };
    let parsed = serde_json::from_value::<DataReady>(dataset).and_then(|data| {
        serde_json::from_value::<Plan>(job.plan.clone().unwrap_or_default()).map(|p| (data, p))
    });
    match parsed {
        Ok((data, plan)) => execute(state, &job, &data, &plan).await,
        Err(e) => {
            let msg = format!("the job's stored request is unreadable: {e}");
            match finish(state, job.id, "failed", Some(&msg)).await {
                Ok(()) => Outcome::Done,
                Err(_) => Outcome::Retry(Duration::from_secs(5)),
            }
        }
    }
}

/// Runs a job unless it has finished, and records how it ended.
async fn execute(state: &AppState, job: &Job, data: &DataReady, plan: &Plan) -> Outcome {
    if FINISHED.contains(&job.status.as_str()) {
        tracing::info!(job.id = %job.id, status = %job.status, "job already finished; acknowledging");
        return Outcome::Done;
    }
    let started = std::time::Instant::now();
    let running = metrics::gauge!("petrel_training_jobs_running");
    running.increment(1.0);
    let result = run_job(state, job.id, &job.model_name, data, plan).await;
    running.decrement(1.0);
    record_job(&result, started.elapsed().as_secs_f64());
    let ended = match result {
        Ok(()) => return Outcome::Done,
        Err(JobError::Cancelled) => {
            tracing::info!(job.id = %job.id, "training job cancelled");
            close_runs(state, job.id, RunStatus::Killed).await;
            finish(state, job.id, "cancelled", None).await
        }
        Err(JobError::Permanent(msg)) => {
            tracing::error!(job.id = %job.id, dataset.name = %data.name, error = %msg, "training job failed");
            close_runs(state, job.id, RunStatus::Failed).await;
            finish(state, job.id, "failed", Some(&msg)).await
        }
        Err(JobError::Transient(msg)) => {
            tracing::warn!(job.id = %job.id, error = %msg, "training job will be retried");
            return Outcome::Retry(Duration::from_secs(5));
        }
        Err(JobError::Interrupted) => {
            tracing::info!(job.id = %job.id, "training job interrupted by shutdown; it resumes on redelivery");
            if let Err(e) =
                set_phase(state, job.id, "interrupted; resumes when a trainer is back").await
            {
                tracing::warn!(job.id = %job.id, error = %e, "cannot record the interruption");
            }
            return Outcome::Retry(Duration::from_secs(1));
        }
    };
    match ended {
        Ok(()) => Outcome::Done,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record how the job ended");
            Outcome::Retry(Duration::from_secs(5))
        }
    }
}

/// `petrel_training_jobs_total{outcome}` and, for jobs that ended, their duration.
fn record_job(result: &Result<(), JobError>, seconds: f64) {
    let outcome = match result {
        Ok(()) => "succeeded",
        Err(JobError::Cancelled) => "cancelled",
        Err(JobError::Permanent(_)) => "failed",
        Err(JobError::Transient(_)) => "retried",
        Err(JobError::Interrupted) => "interrupted",
    };
    metrics::counter!("petrel_training_jobs_total", "outcome" => outcome).increment(1);
    if matches!(outcome, "succeeded" | "failed" | "cancelled") {
        metrics::histogram!("petrel_training_job_duration_seconds", "outcome" => outcome)
            .record(seconds);
    }
}

/// Help texts of the trainer's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "petrel_training_jobs_total",
        "Training job attempts, by outcome: succeeded, failed, cancelled, retried (a dependency \
         failed) or interrupted (by shutdown; resumed on redelivery)"
    );
    metrics::describe_histogram!(
        "petrel_training_job_duration_seconds",
        metrics::Unit::Seconds,
        "Time a training job took from start to its end (sweeps and cross-validation included)"
    );
    metrics::describe_gauge!(
        "petrel_training_jobs_running",
        "Training jobs running in this trainer now"
    );
}

/// Keeps what `data.ready` said of a dataset, so jobs can be asked for by its name.
async fn remember_dataset(state: &AppState, data: &DataReady) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO datasets (dataset_id, name, version, purpose, event) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (dataset_id) DO NOTHING",
    )
    .bind(data.dataset_id)
    .bind(&data.name)
    .bind(data.version)
    .bind(data.purpose.as_str())
    .bind(serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .execute(&state.infra.pool)
    .await?;
    Ok(())
}

/// A dataset the trainer has seen: by id, or the newest (or given) version of a name.
pub async fn find_dataset(
    state: &AppState,
    id: Option<Uuid>,
    name: Option<&str>,
    version: Option<i32>,
) -> Result<Option<DataReady>, sqlx::Error> {
    let row: Option<(serde_json::Value,)> = sqlx::query_as(
        "SELECT event FROM datasets WHERE ($1::uuid IS NULL OR dataset_id = $1) \
         AND ($2::text IS NULL OR name = $2) AND ($3::int IS NULL OR version = $3) \
         ORDER BY version DESC, seen_at DESC LIMIT 1",
    )
    .bind(id)
    .bind(name)
    .bind(version)
    .fetch_optional(&state.infra.pool)
    .await?;
    Ok(row.and_then(|(v,)| serde_json::from_value(v).ok()))
}

/// Records a job asked for over HTTP (or by a policy) and, in the same transaction, the event
/// that hands it to a trainer instance. A repeated `client_token` finds the first job.
pub async fn create_requested_job(
    state: &AppState,
    data: &DataReady,
    model_name: &str,
    plan: &Plan,
    source: &str,
    client_token: Option<&str>,
) -> Result<(Job, bool), sqlx::Error> {
    let mut tx = state.infra.pool.begin().await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO training_jobs (id, event_id, dataset_id, dataset_name, dataset_uri, model_name, status, \
         epochs, source, plan, dataset, client_token, phase) \
         VALUES ($1, NULL, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, 'queued') \
         ON CONFLICT (client_token) DO NOTHING",
    )
    .bind(id)
    .bind(data.dataset_id)
    .bind(&data.name)
    .bind(&data.uri)
    .bind(model_name)
    .bind(plan.config.epochs as i32)
    .bind(source)
    .bind(serde_json::to_value(plan).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(client_token)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        tx.rollback().await?;
        let job = sqlx::query_as::<_, Job>(&format!(
            "SELECT {JOB_COLUMNS} FROM training_jobs WHERE client_token = $1"
        ))
        .bind(client_token)
        .fetch_one(&state.infra.pool)
        .await?;
        return Ok((job, false));
    }
    let event = petrel_events::payloads::TrainingRequested {
        job_id: id,
        model_name: model_name.to_owned(),
        dataset_id: data.dataset_id,
        source: source.to_owned(),
    };
    petrel_events::outbox::enqueue(&mut tx, &state.infra.bus.envelope(event)).await?;
    let job = sqlx::query_as::<_, Job>(&format!(
        "SELECT {JOB_COLUMNS} FROM training_jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    state.infra.relay.poke();
    Ok((job, true))
}

/// What a cancel request found.
pub enum Cancelled {
    /// The job was queued and is now cancelled, or is running and will stop shortly.
    Accepted(Job),
    /// The job had already ended, in this status.
    Finished(Job),
    NotFound,
}

/// Asks a job to stop: a queued job is cancelled at once, a running one stops at its next
/// progress check (about a second) and an epoch.
pub async fn cancel_job(state: &AppState, id: Uuid) -> Result<Cancelled, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE training_jobs SET cancel_requested = true, \
         status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END, \
         phase = CASE WHEN status = 'queued' THEN 'cancelled' ELSE phase END, \
         finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END, \
         updated_at = now() \
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .execute(&state.infra.pool)
    .await?
    .rows_affected();
    Ok(match (updated, get_job(state, id).await?) {
        (_, None) => Cancelled::NotFound,
        (1, Some(job)) => Cancelled::Accepted(job),
        (_, Some(job)) => Cancelled::Finished(job),
    })
}

/// Only training data is trained on: scoring data is the predictor's, reference data nobody's.
fn should_train(data: &DataReady) -> bool {
    data.purpose == DatasetPurpose::Training
}

async fn find_or_create_job(
    state: &AppState,
    event_id: Uuid,
    data: &DataReady,
    plan: &Plan,
) -> Result<Job, sqlx::Error> {
    sqlx::query(
        "INSERT INTO training_jobs (id, event_id, dataset_id, dataset_name, dataset_uri, model_name, status, \
         epochs, source, plan, dataset, phase) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, 'data.ready', $8, $9, 'queued') \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event_id)
    .bind(data.dataset_id)
    .bind(&data.name)
    .bind(&data.uri)
    .bind(&data.name)
    .bind(plan.config.epochs as i32)
    .bind(serde_json::to_value(plan).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .execute(&state.infra.pool)
    .await?;
    sqlx::query_as::<_, Job>(&format!(
        "SELECT {JOB_COLUMNS} FROM training_jobs WHERE event_id = $1"
    ))
    .bind(event_id)
    .fetch_one(&state.infra.pool)
    .await
}

/// Ends a job in `status` (`succeeded` is set with its results by `register`).
async fn finish(
    state: &AppState,
    job: Uuid,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE training_jobs SET status = $2, error = $3, phase = $2, finished_at = now(), \
         updated_at = now() WHERE id = $1",
    )
    .bind(job)
    .bind(status)
    .bind(error)
    .execute(&state.infra.pool)
    .await?;
    Ok(())
}

async fn set_phase(state: &AppState, job: Uuid, phase: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE training_jobs SET phase = $2, updated_at = now() WHERE id = $1")
        .bind(job)
        .bind(phase)
        .execute(&state.infra.pool)
        .await?;
    Ok(())
}

/// Marks a job running, unless it was cancelled meanwhile.
async fn start(state: &AppState, job: Uuid) -> Result<(), JobError> {
    let started = sqlx::query(
        "UPDATE training_jobs SET status = 'running', started_at = COALESCE(started_at, now()), \
         updated_at = now() WHERE id = $1 AND status IN ('queued', 'running') AND NOT cancel_requested",
    )
    .bind(job)
    .execute(&state.infra.pool)
    .await?
    .rows_affected();
    if started == 1 {
        Ok(())
    } else {
        Err(JobError::Cancelled)
    }
}

async fn run_job(
    state: &AppState,
    job: Uuid,
    model_name: &str,
    data: &DataReady,
    plan: &Plan,
) -> Result<(), JobError> {
    start(state, job).await?;
    set_phase(state, job, "loading data").await?;
    let bytes = state.store.get(&data.uri).await.map_err(|e| match e {
        StoreError::NotFound(_) | StoreError::ForeignUri(_) | StoreError::InvalidKey(_) => {
            JobError::Permanent(format!("dataset file: {e}"))
        }
        other => JobError::Transient(format!("artifact store: {other}")),
    })?;
    let schema = data.schema.clone();
    let table = tokio::task::spawn_blocking(move || parse_csv(&bytes, &schema))
        .await
        .map_err(|e| JobError::Transient(format!("parsing task: {e}")))?
        .map_err(|e| JobError::Permanent(e.to_string()))?
        .table;
    let table = Arc::new(table);
    tracing::info!(job.id = %job, dataset.name = %data.name, rows = table.len(), "training started");

    // Train off the async runtime; report progress to the job row once a second meanwhile.
    // Progress is best effort: a failed update is logged and training goes on, because
    // returning early would leave the blocking task training, detached, while a redelivery
    // starts the same job again.
    let progress = Arc::new(Mutex::new(Progress::default()));
    let config = plan.config.clone();
    let tuning = plan.tuning.clone();
    // The plan's sweep was checked when the job was made (`trials` refuses a bad one).
    let trials_total = tuning.sweep.as_ref().map_or(0, SweepSpec::count);
    // A sweep streams each trial to its child run as it trains, under a parent run made now,
    // and resumes with the trials an interrupted attempt finished.
    let (events, mut heard) = mpsc::unbounded_channel();
    let (mut log, earlier) = if tuning.sweep.is_some() {
        let (log, earlier) = TrialLog::open(state, job, model_name, data).await?;
        (Some(log), earlier)
    } else {
        (None, Vec::new())
    };
    let events = log.is_some().then_some(events);
    if let Ok(mut p) = progress.lock() {
        p.trials_done = earlier.len();
    }
    let p = progress.clone();
    let started = std::time::Instant::now();
    let t = table.clone();
    let stop = Stop::new();
    let halt = stop.clone();
    let training = tokio::task::spawn_blocking(move || {
        train(&t, &config, &tuning, &p, &halt, &earlier, events)
    });
    tokio::pin!(training);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Each report also reads whether the job was cancelled, and stops training if so.
    // Training stops for a cancel (`cancelled` says so) or for the service's shutdown.
    let cancelled = Stop::new();
    let report = |progress: &Mutex<Progress>| {
        let now = progress.lock().map(|g| *g).unwrap_or_default();
        let (stop, cancelled) = (stop.clone(), cancelled.clone());
        async move {
            match record_progress(state, job, now, trials_total).await {
                Ok(true) => {
                    cancelled.stop();
                    stop.stop();
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job.id = %job, error = %e, "cannot record training progress; training goes on");
                }
            }
        }
    };
    let trained = loop {
        tokio::select! {
            done = &mut training => break done,
            () = state.shutdown.cancelled(), if !stop.is_stopped() => stop.stop(),
            Some(event) = heard.recv() => {
                if let Some(log) = &mut log {
                    log.on(event).await;
                }
            }
            _ = tick.tick() => {
                report(&progress).await;
                if let Some(log) = &mut log {
                    log.flush().await;
                }
            }
        }
    };
    if let Some(log) = &mut log {
        while let Ok(event) = heard.try_recv() {
            log.on(event).await;
        }
    }
    let trained = trained
        .map_err(|e| JobError::Transient(format!("training task: {e}")))?
        .map_err(|e| match e {
            MlError::Cancelled if cancelled.is_stopped() => JobError::Cancelled,
            MlError::Cancelled => JobError::Interrupted,
            e => JobError::Permanent(e.to_string()),
        })?;
    report(&progress).await;
    let m = &trained.bundle.metrics;
    tracing::info!(
        job.id = %job,
        test_accuracy = m.test_accuracy,
        cv_accuracy = trained.cv.as_ref().map(|cv| cv.accuracy.mean),
        trials = trained.trials.len(),
        duration_ms = started.elapsed().as_millis() as u64,
        "training finished"
    );
    // A model that finished training as the service shuts down is still registered.
    if cancelled.is_stopped() {
        return Err(JobError::Cancelled);
    }
    set_phase(state, job, "scoring the champion").await?;
    let champion = score_champion(state, job, model_name, &table, &trained.bundle).await?;
    set_phase(state, job, "registering").await?;
    register(state, job, data, model_name, &trained, champion).await
}

/// Champion/challenger on one holdout: scores the model's current alias holder on the rows
/// this job held out, so the registry compares the two on the same rows. `None` when there is
/// no holder, or it cannot be scored here (its bundle is not in this store, or it takes other
/// features); the registry then compares recorded evaluations, as for any client.
async fn score_champion(
    state: &AppState,
    job: Uuid,
    model_name: &str,
    table: &Arc<Table>,
    bundle: &ModelBundle,
) -> Result<Option<Scored>, JobError> {
    let alias = state
        .registry
        .get_policy(model_name)
        .await?
        .map_or_else(|| PRODUCTION.to_owned(), |p| p.alias);
    let Some(holder) = state.registry.get_alias(model_name, &alias).await? else {
        return Ok(None);
    };
    let skip = |why: String| {
        tracing::warn!(job.id = %job, model.name = %model_name, champion = holder.version, reason = %why, "cannot score the alias holder on this job's held-out rows");
        Ok(Some(Scored {
            version: holder.version,
            alias: alias.clone(),
            score: Err(why),
        }))
    };
    let bytes = match state.store.get(&holder.artifact_uri).await {
        Ok(b) => b,
        Err(
            e @ (StoreError::NotFound(_) | StoreError::ForeignUri(_) | StoreError::InvalidKey(_)),
        ) => return skip(format!("its bundle: {e}")),
        Err(e) => return Err(JobError::Transient(format!("artifact store: {e}"))),
    };
    let table = table.clone();
    let config = bundle.config.clone();
    let scored = tokio::task::spawn_blocking(move || -> Result<HoldoutScore, MlError> {
        let champion = ModelBundle::from_bytes(&bytes)?.load()?;
        Holdout::of(&table, &config)?.score(&champion)
    })
    .await
    .map_err(|e| JobError::Transient(format!("scoring task: {e}")))?;
    match scored {
        Ok(score) => {
            tracing::info!(job.id = %job, model.name = %model_name, champion = holder.version, accuracy = score.accuracy, rows = score.rows, "alias holder scored on this job's held-out rows");
            Ok(Some(Scored {
                version: holder.version,
                alias,
                score: Ok(score),
            }))
        }
        Err(e) => skip(e.to_string()),
    }
}

/// The alias holder a job scored on its held-out rows, or why it could not.
#[derive(Debug, Serialize)]
struct Scored {
    version: i32,
    alias: String,
    #[serde(serialize_with = "score_or_reason")]
    score: Result<HoldoutScore, String>,
}

fn score_or_reason<S: serde::Serializer>(
    score: &Result<HoldoutScore, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match score {
        Ok(v) => v.serialize(s),
        Err(why) => serde_json::json!({ "unavailable": why }).serialize(s),
    }
}

impl Scored {
    /// As the registry takes it: under the candidate's metric names.
    fn champion_score(&self) -> Option<ChampionScore> {
        let s = self.score.as_ref().ok()?;
        Some(ChampionScore {
            version: self.version,
            metrics: BTreeMap::from([
                ("test_accuracy".to_owned(), s.accuracy),
                ("test_log_loss".to_owned(), s.log_loss),
                ("test_macro_f1".to_owned(), s.macro_f1),
            ]),
            rows: s.rows as u64,
        })
    }
}

/// Where a job's training is: the epoch and loss of the model being fitted, and the sweep's
/// finished trials.
#[derive(Clone, Copy, Debug)]
struct Progress {
    epoch: usize,
    loss: f64,
    trials_done: usize,
    /// The phase: a sweep, a cross-validation fold (1-based, of `folds`), or the final fit.
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Sweep,
    Fold(usize, usize),
    Training,
}

impl Phase {
    fn describe(self) -> String {
        match self {
            Phase::Sweep => "sweep".to_owned(),
            Phase::Fold(i, n) => format!("cross-validation fold {i} of {n}"),
            Phase::Training => "training".to_owned(),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            epoch: 0,
            loss: f64::NAN,
            trials_done: 0,
            phase: Phase::Training,
        }
    }
}

/// What a job trained: the bundle to register, the cross-validation of its configuration, and
/// a sweep's trials with the index of the chosen one.
struct Trained {
    bundle: ModelBundle,
    cv: Option<CrossValidation>,
    trials: Vec<Trial>,
    best: Option<usize>,
}

/// Trains as `tuning` says: a sweep (every trial cross-validated, the best trained on the whole
/// training split), or the configuration itself, cross-validated first when folds are set.
fn train(
    table: &Table,
    config: &TrainConfig,
    tuning: &Tuning,
    progress: &Mutex<Progress>,
    stop: &Stop,
    earlier: &[Trial],
    events: Option<mpsc::UnboundedSender<TrialEvent>>,
) -> Result<Trained, MlError> {
    let set = |f: &dyn Fn(&mut Progress)| {
        if let Ok(mut g) = progress.lock() {
            f(&mut g);
        }
    };
    if let Some(spec) = &tuning.sweep {
        set(&|p| p.phase = Phase::Sweep);
        let observer = SweepEvents { progress, events };
        let outcome = sweep(table, config, spec, earlier, &observer, stop)?;
        let best = outcome.best;
        let last = outcome.bundle.metrics.epochs_run;
        set(&|p| {
            p.epoch = last;
            p.phase = Phase::Training;
        });
        return Ok(Trained {
            cv: Some(outcome.trials[best].cv.clone()),
            bundle: outcome.bundle,
            trials: outcome.trials,
            best: Some(best),
        });
    }
    let cv = if tuning.cv_folds >= 2 {
        let folds = tuning.cv_folds;
        Some(cross_validate(
            table,
            config,
            folds,
            &mut |fold, epoch, loss| {
                set(&|p| {
                    p.phase = Phase::Fold(fold + 1, folds);
                    p.epoch = epoch;
                    p.loss = loss;
                })
            },
            stop,
        )?)
    } else {
        None
    };
    set(&|p| p.phase = Phase::Training);
    let bundle = train_classifier_until(
        table,
        config,
        &mut |epoch, loss| {
            set(&|p| {
                p.epoch = epoch;
                p.loss = loss;
                p.phase = Phase::Training;
            })
        },
        stop,
    )?;
    Ok(Trained {
        bundle,
        cv,
        trials: Vec::new(),
        best: None,
    })
}

/// Records progress; answers whether the job was asked to cancel.
async fn record_progress(
    state: &AppState,
    job: Uuid,
    progress: Progress,
    trials_total: usize,
) -> Result<bool, JobError> {
    let cancel: Option<(bool,)> = sqlx::query_as(
        "UPDATE training_jobs SET epoch = $2, train_loss = $3, trials_total = $4, trials_done = $5, \
         phase = $6, updated_at = now() WHERE id = $1 RETURNING cancel_requested",
    )
    .bind(job)
    .bind(progress.epoch as i32)
    .bind(progress.loss.is_finite().then_some(progress.loss))
    .bind(trials_total as i32)
    .bind(progress.trials_done as i32)
    .bind(progress.phase.describe())
    .fetch_optional(&state.infra.pool)
    .await?;
    Ok(cancel.is_some_and(|(c,)| c))
}

fn metric_map(trained: &Trained) -> BTreeMap<String, f64> {
    let m = &trained.bundle.metrics;
    let mut out = BTreeMap::from([
        ("test_accuracy".to_owned(), m.test_accuracy),
        ("train_accuracy".to_owned(), m.train_accuracy),
        ("test_log_loss".to_owned(), m.test_log_loss),
        ("test_macro_f1".to_owned(), m.test_macro_f1),
        ("n_train".to_owned(), m.n_train as f64),
        ("n_test".to_owned(), m.n_test as f64),
        ("epochs_run".to_owned(), m.epochs_run as f64),
    ]);
    if let Some(best) = m.best_epoch {
        out.insert("best_epoch".to_owned(), best as f64);
    }
    if let Some(cv) = &trained.cv {
        out.extend(cv.metric_map());
    }
    out
}

/// A configuration as run params.
fn config_params(c: &TrainConfig) -> BTreeMap<String, String> {
    let mut params = BTreeMap::from([("model_kind".to_owned(), c.kind.as_str().to_owned())]);
    if c.kind == petrel_ml::ModelKind::Gbt {
        params.extend([
            ("rounds".to_owned(), c.rounds.to_string()),
            ("max_depth".to_owned(), c.max_depth.to_string()),
            ("eta".to_owned(), c.eta.to_string()),
            ("test_fraction".to_owned(), c.test_fraction.to_string()),
            ("seed".to_owned(), c.seed.to_string()),
            ("text_buckets".to_owned(), c.text_buckets.to_string()),
            ("text_ngrams".to_owned(), c.text_ngrams.to_string()),
        ]);
        return params;
    }
    params.extend([
        ("hidden_size".to_owned(), c.hidden_size.to_string()),
        ("depth".to_owned(), c.depth.to_string()),
        ("dropout".to_owned(), c.dropout.to_string()),
        ("epochs".to_owned(), c.epochs.to_string()),
        ("patience".to_owned(), c.patience.to_string()),
        ("learning_rate".to_owned(), c.learning_rate.to_string()),
        ("weight_decay".to_owned(), c.weight_decay.to_string()),
        ("test_fraction".to_owned(), c.test_fraction.to_string()),
        ("seed".to_owned(), c.seed.to_string()),
        ("text_buckets".to_owned(), c.text_buckets.to_string()),
        ("text_ngrams".to_owned(), c.text_ngrams.to_string()),
        ("batch_size".to_owned(), c.batch_size.to_string()),
    ]);
    if c.kind == petrel_ml::ModelKind::Cnn {
        params.insert("channels".to_owned(), c.channels.to_string());
        params.remove("depth");
        params.remove("text_buckets");
        params.remove("text_ngrams");
    }
    params
}

fn points(metrics: &BTreeMap<String, f64>) -> Vec<MetricInput> {
    metrics
        .iter()
        .map(|(k, v)| MetricInput {
            key: k.clone(),
            value: *v,
            step: 0,
        })
        .collect()
}

/// A point of a fold's learning curve: `fold_K_train_loss` (K from 1), step = epoch. A loss
/// that is not finite (a diverged trial) has none: the registry refuses it.
fn curve_point(fold: usize, epoch: usize, loss: f64) -> Option<MetricInput> {
    loss.is_finite().then(|| MetricInput {
        key: format!("fold_{}_train_loss", fold + 1),
        value: loss,
        step: epoch as i64,
    })
}

/// Everything a trial's child run holds: its cross-validated metrics, each fold's accuracy
/// (step = fold) and each fold's learning curve.
fn trial_points(t: &Trial) -> Vec<MetricInput> {
    let mut metrics = points(&t.cv.metric_map());
    for f in &t.cv.folds {
        metrics.push(MetricInput {
            key: "cv_fold_accuracy".to_owned(),
            value: f.scores.accuracy,
            step: f.fold as i64,
        });
        metrics.extend(
            f.train_loss
                .iter()
                .filter_map(|&(epoch, loss)| curve_point(f.fold, epoch, loss)),
        );
    }
    metrics
}

/// What a sweep says as it trains, sent from its worker threads to the job's task.
enum TrialEvent {
    Started { index: usize, config: TrainConfig },
    Epoch { index: usize, point: MetricInput },
    Finished(Box<Trial>),
}

/// The sweep's observer: counts finished trials into the job's progress and forwards every
/// event to the job's task, which writes them to the registry (a closed channel just drops
/// them: the job's task has gone, and registration writes every trial anyway).
struct SweepEvents<'a> {
    progress: &'a Mutex<Progress>,
    events: Option<mpsc::UnboundedSender<TrialEvent>>,
}

impl SweepEvents<'_> {
    fn send(&self, event: TrialEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

impl SweepObserver for SweepEvents<'_> {
    fn started(&self, index: usize, config: &TrainConfig) {
        self.send(TrialEvent::Started {
            index,
            config: config.clone(),
        });
    }

    fn epoch(&self, index: usize, fold: usize, epoch: usize, loss: f64) {
        if let Some(point) = curve_point(fold, epoch, loss) {
            self.send(TrialEvent::Epoch { index, point });
        }
    }

    fn finished(&self, trial: &Trial) {
        if let Ok(mut p) = self.progress.lock() {
            p.trials_done += 1;
        }
        self.send(TrialEvent::Finished(Box::new(trial.clone())));
    }
}

/// A sweep's record as it trains: the parent run (the job's run, made when the sweep starts),
/// a child run per trial made as the trial starts, its learning curve written about once a
/// second, and each finished trial kept in `training_trials` so an interrupted job resumes
/// with it. Writing while training is best effort: a failed write is logged and training
/// goes on, because registration writes every trial again and fills in what is missing.
struct TrialLog<'a> {
    state: &'a AppState,
    job: Uuid,
    model_name: &'a str,
    parent: Uuid,
    runs: BTreeMap<usize, Uuid>,
    /// The points each trial's run already held when this attempt made or found it (an
    /// interrupted attempt streamed them): not written twice.
    written: BTreeMap<usize, HashSet<(String, i64)>>,
    pending: BTreeMap<usize, Vec<MetricInput>>,
}

impl<'a> TrialLog<'a> {
    /// Makes (or finds again) the job's run and answers the trials an earlier attempt of this
    /// job finished. A stored trial that no longer reads is trained again.
    async fn open(
        state: &'a AppState,
        job: Uuid,
        model_name: &'a str,
        data: &DataReady,
    ) -> Result<(TrialLog<'a>, Vec<Trial>), JobError> {
        let run = state
            .registry
            .create_run(&job_run(job, model_name, data))
            .await?;
        sqlx::query("UPDATE training_jobs SET run_id = $2, updated_at = now() WHERE id = $1")
            .bind(job)
            .bind(run.id)
            .execute(&state.infra.pool)
            .await?;
        let rows: Vec<(i32, Option<Uuid>, Option<serde_json::Value>)> = sqlx::query_as(
            "SELECT trial, run_id, result FROM training_trials WHERE job_id = $1 ORDER BY trial",
        )
        .bind(job)
        .fetch_all(&state.infra.pool)
        .await?;
        let mut runs = BTreeMap::new();
        let mut earlier = Vec::new();
        for (trial, run_id, result) in rows {
            if let Some(id) = run_id {
                runs.insert(trial as usize, id);
            }
            match result.map(serde_json::from_value::<Trial>) {
                Some(Ok(t)) => earlier.push(t),
                Some(Err(e)) => {
                    tracing::warn!(job.id = %job, trial, error = %e, "a stored trial does not read; training it again");
                }
                None => {}
            }
        }
        if !earlier.is_empty() {
            tracing::info!(job.id = %job, trials = earlier.len(), "resuming the sweep with the trials it finished");
        }
        let log = TrialLog {
            state,
            job,
            model_name,
            parent: run.id,
            runs,
            written: BTreeMap::new(),
            pending: BTreeMap::new(),
        };
        Ok((log, earlier))
    }

    async fn on(&mut self, event: TrialEvent) {
        match event {
            TrialEvent::Started { index, config } => {
                match trial_run(
                    self.state,
                    self.job,
                    self.model_name,
                    self.parent,
                    index,
                    &config,
                )
                .await
                {
                    Ok(run) => {
                        self.runs.insert(index, run.id);
                        let written = run.metrics.into_iter().map(|m| (m.key, m.step)).collect();
                        self.written.insert(index, written);
                        let saved = sqlx::query(
                            "INSERT INTO training_trials (job_id, trial, run_id) VALUES ($1, $2, $3) \
                             ON CONFLICT (job_id, trial) DO UPDATE SET run_id = EXCLUDED.run_id",
                        )
                        .bind(self.job)
                        .bind(index as i32)
                        .bind(run.id)
                        .execute(&self.state.infra.pool)
                        .await;
                        if let Err(e) = saved {
                            tracing::warn!(job.id = %self.job, trial = index, error = %e, "cannot record the trial's run");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(job.id = %self.job, trial = index, error = %e, "cannot make the trial's run yet; registration will");
                    }
                }
            }
            TrialEvent::Epoch { index, point } => {
                self.pending.entry(index).or_default().push(point)
            }
            TrialEvent::Finished(trial) => {
                let index = trial.index;
                // The trial's record below writes every point it kept, the pending ones too.
                self.pending.remove(&index);
                self.written.remove(&index);
                let saved = sqlx::query(
                    "INSERT INTO training_trials (job_id, trial, run_id, result, cv_accuracy, finished_at) \
                     VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (job_id, trial) DO UPDATE SET \
                     result = EXCLUDED.result, cv_accuracy = EXCLUDED.cv_accuracy, finished_at = now()",
                )
                .bind(self.job)
                .bind(index as i32)
                .bind(self.runs.get(&index))
                .bind(serde_json::to_value(&*trial).ok())
                .bind(trial.cv.accuracy.mean)
                .execute(&self.state.infra.pool)
                .await;
                if let Err(e) = saved {
                    tracing::warn!(job.id = %self.job, trial = index, error = %e, "cannot keep the finished trial; a restart trains it again");
                }
                let recorded = record_trial(
                    self.state,
                    self.job,
                    self.model_name,
                    self.parent,
                    &trial,
                    None,
                )
                .await;
                if let Err(e) = recorded {
                    tracing::warn!(job.id = %self.job, trial = index, error = %e, "cannot record the finished trial yet; registration will");
                }
            }
        }
    }

    /// Writes the learning-curve points heard since the last flush, one batch per trial.
    async fn flush(&mut self) {
        for (index, metrics) in std::mem::take(&mut self.pending) {
            let Some(&run) = self.runs.get(&index) else {
                continue;
            };
            let written = self.written.get(&index);
            let metrics: Vec<MetricInput> = metrics
                .into_iter()
                .filter(|m| written.is_none_or(|w| !w.contains(&(m.key.clone(), m.step))))
                .collect();
            if metrics.is_empty() {
                continue;
            }
            let batch = LogBatch {
                metrics,
                ..LogBatch::default()
            };
            if let Err(e) = self.state.registry.log_batch(run, &batch).await {
                tracing::warn!(job.id = %self.job, trial = index, error = %e, "cannot stream the trial's learning curve; registration will write it");
            }
        }
    }
}

/// The job's own run, keyed by the job id: the parent of a sweep's trials, and the run the
/// version is registered from. Params and tags that are known only at the end are added then.
fn job_run(job: Uuid, model_name: &str, data: &DataReady) -> CreateRun {
    CreateRun {
        experiment: model_name.to_owned(),
        name: Some(format!("{}-v{}", data.name, data.version)),
        params: dataset_params(data),
        tags: BTreeMap::from([("petrel.job_id".to_owned(), job.to_string())]),
        client_token: Some(job.to_string()),
        parent_run_id: None,
    }
}

fn dataset_params(data: &DataReady) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("dataset_id".to_owned(), data.dataset_id.to_string()),
        ("dataset_version".to_owned(), data.version.to_string()),
        ("dataset_hash".to_owned(), data.content_hash.clone()),
    ])
}

/// Makes (or finds again: it is keyed by job and trial) a trial's child run.
async fn trial_run(
    state: &AppState,
    job: Uuid,
    model_name: &str,
    parent: Uuid,
    index: usize,
    config: &TrainConfig,
) -> Result<Run, ClientError> {
    state
        .registry
        .create_run(&CreateRun {
            experiment: model_name.to_owned(),
            name: Some(format!("trial-{index}")),
            params: config_params(config),
            tags: BTreeMap::from([
                ("petrel.job_id".to_owned(), job.to_string()),
                ("petrel.trial".to_owned(), index.to_string()),
            ]),
            client_token: Some(format!("{job}/trial/{index}")),
            parent_run_id: Some(parent),
        })
        .await
}

/// Records a finished trial in its child run: what is not there yet of its configuration,
/// cross-validated metrics, each fold's accuracy (step = fold) and learning curve
/// (`fold_K_train_loss`, step = epoch), the split, whether it was chosen once that is known,
/// and the finished status. Idempotent: a point already written (streamed while training,
/// or by an earlier attempt) is not written again.
async fn record_trial(
    state: &AppState,
    job: Uuid,
    model_name: &str,
    parent: Uuid,
    t: &Trial,
    chosen: Option<bool>,
) -> Result<(), ClientError> {
    let run = trial_run(state, job, model_name, parent, t.index, &t.config).await?;
    let have: HashSet<(&str, i64)> = run
        .metrics
        .iter()
        .map(|m| (m.key.as_str(), m.step))
        .collect();
    let metrics: Vec<MetricInput> = trial_points(t)
        .into_iter()
        .filter(|m| !have.contains(&(m.key.as_str(), m.step)))
        .collect();
    let mut tags = BTreeMap::from([("petrel.cv_split".to_owned(), t.cv.split.clone())]);
    if let Some(chosen) = chosen {
        tags.insert("petrel.chosen".to_owned(), chosen.to_string());
    }
    if !metrics.is_empty() || !holds_all(&run.tags, &tags) {
        state
            .registry
            .log_batch(
                run.id,
                &LogBatch {
                    metrics,
                    tags,
                    ..LogBatch::default()
                },
            )
            .await?;
    }
    if run.status != RunStatus::Finished {
        state
            .registry
            .update_run(run.id, RunStatus::Finished)
            .await?;
    }
    Ok(())
}

/// Whether `have` already holds every entry of `want` with the same value.
fn holds_all(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Records each trial of a sweep in its child run of `parent`, now that the chosen one is
/// known (see [`record_trial`]).
async fn log_trials(
    state: &AppState,
    job: Uuid,
    model_name: &str,
    parent: Uuid,
    trained: &Trained,
) -> Result<(), JobError> {
    for t in &trained.trials {
        let chosen = trained.best == Some(t.index);
        record_trial(state, job, model_name, parent, t, Some(chosen)).await?;
    }
    Ok(())
}

/// Ends, as `status`, the runs a failed or cancelled job left running: its own run and the
/// child runs of trials that had not finished. Best effort: a run this cannot reach stays
/// `running` and the job's error says what happened.
async fn close_runs(state: &AppState, job: Uuid, status: RunStatus) {
    let runs: Result<Vec<(Uuid,)>, sqlx::Error> = sqlx::query_as(
        "SELECT run_id FROM training_trials WHERE job_id = $1 AND result IS NULL AND run_id IS NOT NULL \
         UNION ALL SELECT run_id FROM training_jobs WHERE id = $1 AND run_id IS NOT NULL",
    )
    .bind(job)
    .fetch_all(&state.infra.pool)
    .await;
    let runs = match runs {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(job.id = %job, error = %e, "cannot read the job's runs to close them");
            return;
        }
    };
    for (run,) in runs {
        let closed = match state.registry.get_run(run).await {
            Ok(r) if r.status == RunStatus::Running => {
                state.registry.update_run(run, status).await.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = closed {
            tracing::warn!(job.id = %job, run.id = %run, error = %e, "cannot close the job's run");
        }
    }
}

/// Stores the bundle and records run and version with the registry, all keyed by the job id.
async fn register(
    state: &AppState,
    job: Uuid,
    data: &DataReady,
    model_name: &str,
    trained: &Trained,
    champion: Option<Scored>,
) -> Result<(), JobError> {
    let bundle = &trained.bundle;
    let bytes = bundle
        .to_bytes()
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let key = format!("models/{}/{job}/bundle.json", sanitize(model_name));
    let uri = state
        .store
        .put(&key, Bytes::from(bytes))
        .await
        .map_err(|e| JobError::Transient(format!("artifact store: {e}")))?;

    let mut params = config_params(&bundle.config);
    params.extend(dataset_params(data));
    let mut tags = BTreeMap::from([
        ("petrel.job_id".to_owned(), job.to_string()),
        (
            "petrel.model_type".to_owned(),
            match bundle.kind() {
                petrel_ml::ModelKind::Mlp => "burn-mlp",
                petrel_ml::ModelKind::Gbt => "forust-gbt",
                petrel_ml::ModelKind::Cnn => "burn-cnn",
            }
            .to_owned(),
        ),
    ]);
    if let Some(cv) = &trained.cv {
        tags.insert("petrel.cv_split".to_owned(), cv.split.clone());
    }
    if let Some(c) = &champion {
        tags.insert(
            "petrel.champion".to_owned(),
            match &c.score {
                Ok(s) => format!(
                    "version {} ({}) scored test_accuracy {:.4} on this run's {} held-out rows",
                    c.version, c.alias, s.accuracy, s.rows
                ),
                Err(why) => format!("version {} ({}) not scored: {why}", c.version, c.alias),
            },
        );
    }
    if let Some(best) = trained.best {
        tags.insert(
            "petrel.sweep_trials".to_owned(),
            trained.trials.len().to_string(),
        );
        tags.insert("petrel.chosen_trial".to_owned(), best.to_string());
    }
    // A sweep made the run when it started, with the dataset params only: the rest are added.
    let run = state
        .registry
        .create_run(&CreateRun {
            params: params.clone(),
            tags: tags.clone(),
            ..job_run(job, model_name, data)
        })
        .await?;
    if !holds_all(&run.params, &params) || !holds_all(&run.tags, &tags) {
        state
            .registry
            .log_batch(
                run.id,
                &LogBatch {
                    params,
                    tags,
                    ..LogBatch::default()
                },
            )
            .await?;
    }
    if run.inputs.is_empty() {
        state
            .registry
            .log_inputs(
                run.id,
                &LogInputs {
                    inputs: vec![DatasetInput {
                        name: data.name.clone(),
                        digest: data.content_hash.clone(),
                        source_type: "petrel-ingest".to_owned(),
                        source: serde_json::json!({
                            "dataset_id": data.dataset_id,
                            "version": data.version,
                            "uri": data.uri,
                        })
                        .to_string(),
                        schema: serde_json::to_string(&data.schema).ok(),
                        profile: Some(serde_json::json!({"num_rows": data.row_count}).to_string()),
                        tags: BTreeMap::from([(
                            DATASET_CONTEXT_TAG.to_owned(),
                            "training".to_owned(),
                        )]),
                    }],
                },
            )
            .await?;
    }
    log_trials(state, job, model_name, run.id, trained).await?;
    let metrics = metric_map(trained);
    if run.metrics.is_empty() {
        state
            .registry
            .log_metrics(
                run.id,
                &LogMetrics {
                    metrics: points(&metrics),
                },
            )
            .await?;
    }
    state
        .registry
        .update_run(run.id, RunStatus::Finished)
        .await?;
    let version = state
        .registry
        .create_version(
            model_name,
            &CreateModelVersion {
                run_id: run.id,
                artifact_uri: uri,
                dataset_id: Some(data.dataset_id),
                metrics: metrics.clone(),
                description: Some(format!(
                    "{} trained on {} v{}{}",
                    match bundle.kind() {
                        petrel_ml::ModelKind::Mlp => format!(
                            "burn MLP ({} hidden layer(s) of {})",
                            bundle.config.depth, bundle.config.hidden_size
                        ),
                        petrel_ml::ModelKind::Gbt => format!(
                            "gradient-boosted trees ({} rounds, depth {}, eta {})",
                            bundle.config.rounds, bundle.config.max_depth, bundle.config.eta
                        ),
                        petrel_ml::ModelKind::Cnn => format!(
                            "burn CNN ({} and {} channels, {} hidden)",
                            bundle.config.channels,
                            2 * bundle.config.channels,
                            bundle.config.hidden_size
                        ),
                    },
                    data.name,
                    data.version,
                    match trained.best {
                        Some(b) => format!(", trial {b} of a {}-trial sweep", trained.trials.len()),
                        None => String::new(),
                    }
                )),
                // Versions are compared for promotion only on the same held-out rows: the
                // same dataset content, split the same way.
                evaluation: Some(Evaluation {
                    dataset_id: data.dataset_id,
                    digest: data.content_hash.clone(),
                    split: format!(
                        "stratified test split {}, seed {}",
                        bundle.config.test_fraction, bundle.config.seed
                    ),
                    rows: bundle.metrics.n_test as u64,
                }),
                input_schema: Some(bundle.schema.clone()),
                class_names: bundle.class_names.clone(),
                champion_score: champion.as_ref().and_then(Scored::champion_score),
            },
        )
        .await?;
    sqlx::query(
        "UPDATE training_jobs SET status = 'succeeded', phase = 'succeeded', run_id = $2, model_version = $3, \
         metrics = $4, cv = $5, champion = $6, promotion = $7, finished_at = now(), updated_at = now() \
         WHERE id = $1",
    )
    .bind(job)
    .bind(run.id)
    .bind(version.version)
    .bind(serde_json::to_value(&metrics).unwrap_or_default())
    .bind(trained.cv.as_ref().and_then(|cv| serde_json::to_value(cv).ok()))
    .bind(champion.as_ref().and_then(|c| serde_json::to_value(c).ok()))
    .bind(version.promotion.as_ref().and_then(|p| serde_json::to_value(p).ok()))
    .execute(&state.infra.pool)
    .await?;
    tracing::info!(
        job.id = %job,
        model.name = %model_name,
        model.version = version.version,
        aliases = ?version.aliases,
        promotion = version.promotion.as_ref().map(|p| p.reason.as_str()),
        "model registered"
    );
    Ok(())
}

/// Model names become path segments in the artifact store.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A job with its sweep's trials so far.
pub async fn get_job(state: &AppState, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    let Some(mut job) = sqlx::query_as::<_, Job>(&format!(
        "SELECT {JOB_COLUMNS} FROM training_jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.infra.pool)
    .await?
    else {
        return Ok(None);
    };
    job.trials = sqlx::query_as::<_, TrialSummary>(
        "SELECT trial, run_id, CASE WHEN result IS NULL THEN 'running' ELSE 'finished' END AS status, \
         cv_accuracy, started_at, finished_at FROM training_trials WHERE job_id = $1 ORDER BY trial",
    )
    .bind(id)
    .fetch_all(&state.infra.pool)
    .await?;
    Ok(Some(job))
}

pub async fn list_jobs(state: &AppState, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
    sqlx::query_as::<_, Job>(&format!(
        "SELECT {JOB_COLUMNS} FROM training_jobs ORDER BY created_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&state.infra.pool)
    .await
}

#[cfg(test)]
mod tests {
    use petrel_events::payloads::{DataReady, DatasetPurpose};

    #[test]
    fn trains_only_on_training_data() {
        let mut data = DataReady {
            dataset_id: uuid::Uuid::nil(),
            name: "penguins".into(),
            version: 1,
            uri: "file:///d.csv".into(),
            content_hash: "sha256:00".into(),
            row_count: 1,
            rejected_rows: 0,
            schema: petrel_ml::Schema::penguins(),
            purpose: DatasetPurpose::Training,
        };
        assert!(super::should_train(&data));
        for purpose in [DatasetPurpose::Scoring, DatasetPurpose::Reference] {
            data.purpose = purpose;
            assert!(!super::should_train(&data), "{purpose:?}");
        }
    }

    #[test]
    fn sanitizes_model_names_for_keys() {
        assert_eq!(super::sanitize("pen guins/v1"), "pen_guins_v1");
    }
}
