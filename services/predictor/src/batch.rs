//! Batch scoring: a CSV in the artifact store scored in bulk, as a job to poll.
//!
//! A job comes from `POST /v1/batch`, or from a `data.ready` whose purpose is `scoring` and
//! whose dataset name is the served model's. Either way it is a `batch_jobs` row first, and the
//! row is the job: whoever claims it (the `predictor-batch` consumer for its own event, or the
//! worker for anything queued or abandoned) scores it.
//!
//! Every row goes through the same scoring core as online requests ([`routes::score`]), so it is
//! logged on `predictions.logged` exactly like them, with the deterministic inference id
//! `batch-<job id>-<row number>`. That id is what makes a job safe to run again: a job resumed
//! after a crash or a shutdown answers the rows an earlier attempt logged with their logged
//! answers instead of logging them twice. The registry run is keyed by the job id
//! (`client_token`) and the output by its key, so those are written once too.
//!
//! A running job refreshes a heartbeat; a `running` job whose heartbeat is older than the lease
//! was left by a runner that died, and the worker claims it again (at start-up, or on any other
//! replica).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use chrono::Utc;
use petrel_api::ClientError;
use petrel_api::predictor::{BatchJob, BatchStatus, CreateBatch};
use petrel_api::registry::{CreateRun, LogMetrics, MetricInput, RunStatus};
use petrel_events::consumer::Outcome;
use petrel_events::payloads::{DataReady, DatasetPurpose};
use petrel_runtime::http::{ApiError, Json, Path};
use petrel_store::StoreError;
use serde_json::value::RawValue;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::model::{ModelRef, Served};
use crate::routes::{self, Input, ScoreError};

/// The registry experiment every batch job records its run in.
pub const EXPERIMENT: &str = "batch_predictions";

/// The durable consumer that turns scoring datasets into jobs.
pub const CONSUMER: &str = "predictor-batch";

/// The durable consumer whose copy of the log the replay lookup reads ([`crate::store`]).
const LOG_CONSUMER: &str = "predictor-log";

/// Longest input URI a caller may give.
const MAX_URI_LEN: usize = 2048;

/// How often a chunk that failed for a passing reason (the log is full, NATS is away) is tried
/// again within one attempt before the job is put back in the queue.
const CHUNK_TRIES: u32 = 6;

/// How the batch side of the predictor is set up; shared by the handlers and the runners.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The served model's name: `data.ready` for scoring datasets of this name start jobs.
    pub model_name: String,
    /// How long a `running` job may go without a heartbeat before it is taken for abandoned.
    pub lease: Duration,
    /// Wakes the worker when a job is queued, so it need not wait for its next poll.
    pub wake: Arc<Notify>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/batch", post(create))
        .route("/v1/batch/{id}", get(get_one))
        .with_state(state)
}

const JOB_COLUMNS: &str = "id, event_id, model, model_name, model_version, input_uri, status, \
     rows_total, rows_done, rows_rejected, output_uri, run_id, error, attempts, created_at, \
     started_at, finished_at";

fn job_from_row(r: &sqlx::postgres::PgRow) -> BatchJob {
    let status = match r.get::<String, _>("status").as_str() {
        "running" => BatchStatus::Running,
        "succeeded" => BatchStatus::Succeeded,
        "failed" => BatchStatus::Failed,
        _ => BatchStatus::Queued,
    };
    BatchJob {
        id: r.get("id"),
        event_id: r.get("event_id"),
        model: r.get("model"),
        model_name: r.get("model_name"),
        model_version: r.get("model_version"),
        input_uri: r.get("input_uri"),
        status,
        rows_total: r.get("rows_total"),
        rows_done: r.get("rows_done"),
        rows_rejected: r.get("rows_rejected"),
        output_uri: r.get("output_uri"),
        run_id: r.get("run_id"),
        error: r.get("error"),
        attempts: r.get("attempts"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
    }
}

/// `POST /v1/batch`: queues a job and answers 202 with it and where to poll it.
async fn create(
    State(s): State<AppState>,
    Json(req): Json<CreateBatch>,
) -> Result<Response, ApiError> {
    let uri = req.input_uri.trim();
    if uri.is_empty() || uri.len() > MAX_URI_LEN || uri.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "input_uri must be the artifact store's URI of a CSV file (file:///...), 1 to \
             {MAX_URI_LEN} printable characters"
        )));
    }
    if let Some(model) = &req.model {
        ModelRef::parse(model).map_err(ApiError::invalid)?;
    }
    let row = sqlx::query(&format!(
        "INSERT INTO batch_jobs (id, model, input_uri, status) VALUES ($1, $2, $3, 'queued') \
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&req.model)
    .bind(uri)
    .fetch_one(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let job = job_from_row(&row);
    s.batch.wake.notify_one();
    tracing::info!(batch.id = %job.id, input_uri = %job.input_uri, "batch job queued");
    let location =
        HeaderValue::from_str(&format!("/v1/batch/{}", job.id)).map_err(ApiError::internal)?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(job),
    )
        .into_response())
}

/// `GET /v1/batch/{id}`.
async fn get_one(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<BatchJob>, ApiError> {
    let unknown = || ApiError::not_found(format!("there is no batch job {id:?}"));
    let uuid = Uuid::parse_str(&id).map_err(|_| unknown())?;
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM batch_jobs WHERE id = $1"
    ))
    .bind(uuid)
    .fetch_optional(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(unknown)?;
    Ok(axum::Json(job_from_row(&row)))
}

/// The `predictor-batch` consumer's handler: a scoring dataset for the served model becomes one
/// job, keyed by the event id, scored while the event is held (progress acks keep it ours).
/// Everything else is acknowledged and left alone.
pub async fn on_data_ready(
    s: &AppState,
    event_id: Uuid,
    data: DataReady,
    cancel: &CancellationToken,
) -> Outcome {
    if data.purpose != DatasetPurpose::Scoring || data.name != s.batch.model_name {
        tracing::debug!(
            event.id = %event_id,
            dataset.name = %data.name,
            dataset.purpose = data.purpose.as_str(),
            "not a scoring dataset for the served model; acknowledging"
        );
        return Outcome::Done;
    }
    let inserted = sqlx::query(
        "INSERT INTO batch_jobs (id, event_id, input_uri, status) VALUES ($1, $2, $3, 'queued') \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event_id)
    .bind(&data.uri)
    .execute(&s.infra.pool)
    .await;
    if let Err(e) = inserted {
        tracing::warn!(error = %e, event.id = %event_id, "cannot record the batch job; retrying");
        return Outcome::Retry(Duration::from_secs(2));
    }
    let claimed = claim(s, Some(event_id)).await;
    match claimed {
        Ok(Some(job)) => match run_claimed(s, job, cancel).await {
            // Put back in the queue (to retry later, or after a shutdown): the worker or the
            // next start takes it from the row, so the event has done its part.
            Ran::Finished | Ran::Requeued => Outcome::Done,
        },
        // Finished already (a redelivery), or another runner holds it: the row is the job, and
        // the lease brings it back if that runner dies.
        Ok(None) => {
            tracing::info!(event.id = %event_id, "batch job for this event exists; acknowledging");
            Outcome::Done
        }
        Err(e) => {
            tracing::warn!(error = %e, event.id = %event_id, "cannot claim the batch job; retrying");
            Outcome::Retry(Duration::from_secs(2))
        }
    }
}

/// Runs queued and abandoned jobs one at a time until cancelled: woken when a job is queued,
/// and polling every few seconds for retries that came due and leases that ran out.
pub async fn worker(s: AppState, cancel: CancellationToken) {
    let poll = (s.batch.lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        while !cancel.is_cancelled() {
            match claim(&s, None).await {
                Ok(Some(job)) => {
                    run_claimed(&s, job, &cancel).await;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for batch jobs");
                    break;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = s.batch.wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Claims a job: the one for `event` (if it is queued or abandoned), or else the oldest queued
/// job that is due or abandoned `running` one. `SKIP LOCKED` keeps two runners off one job.
async fn claim(s: &AppState, event: Option<Uuid>) -> Result<Option<BatchJob>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "UPDATE batch_jobs SET status = 'running', attempts = attempts + 1, heartbeat_at = now(), \
         started_at = COALESCE(started_at, now()), retry_at = NULL \
         WHERE id = (SELECT id FROM batch_jobs \
           WHERE ($1::uuid IS NULL OR event_id = $1) \
             AND ((status = 'queued' AND ($1::uuid IS NOT NULL OR retry_at IS NULL OR retry_at <= now())) \
               OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $2))) \
           ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(event)
    .bind(s.batch.lease.as_secs_f64())
    .fetch_optional(&s.infra.pool)
    .await?;
    Ok(row.as_ref().map(job_from_row))
}

/// How a claimed job's attempt ended.
enum Ran {
    /// Succeeded or failed for good.
    Finished,
    /// Back in the queue: to retry after a passing failure, or after a shutdown.
    Requeued,
}

/// Why an attempt stopped short.
#[derive(Debug)]
enum JobError {
    /// The input or the request can never be scored: the job fails.
    Permanent(String),
    /// A dependency failed: the job is tried again after the delay.
    Transient(String, Duration),
    /// The service is shutting down: the job goes back in the queue for the next start.
    Stopped,
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Transient(format!("database: {e}"), Duration::from_secs(5))
    }
}

impl From<ClientError> for JobError {
    fn from(e: ClientError) -> Self {
        if e.is_transient() {
            JobError::Transient(format!("registry: {e}"), Duration::from_secs(5))
        } else {
            JobError::Permanent(format!("the registry refused the run: {e}"))
        }
    }
}

/// Runs one attempt of a job this runner has claimed, keeping its heartbeat fresh, and records
/// how it ended.
async fn run_claimed(s: &AppState, job: BatchJob, cancel: &CancellationToken) -> Ran {
    let id = job.id;
    tracing::info!(batch.id = %id, attempt = job.attempts, input_uri = %job.input_uri, "batch job started");
    let work = execute(s, job, cancel);
    tokio::pin!(work);
    let mut tick = tokio::time::interval((s.batch.lease / 3).max(Duration::from_millis(100)));
    tick.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tick.tick() => {
                if let Err(e) = sqlx::query("UPDATE batch_jobs SET heartbeat_at = now() WHERE id = $1")
                    .bind(id)
                    .execute(&s.infra.pool)
                    .await
                {
                    tracing::warn!(error = %e, batch.id = %id, "cannot refresh the batch heartbeat");
                }
            }
        }
    };
    let (query, ran) = match result {
        Ok(()) => return Ran::Finished,
        Err(JobError::Permanent(msg)) => {
            tracing::error!(batch.id = %id, error = %msg, "batch job failed");
            let q = sqlx::query(
                "UPDATE batch_jobs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(msg);
            (q, Ran::Finished)
        }
        Err(JobError::Transient(msg, after)) => {
            tracing::warn!(batch.id = %id, error = %msg, retry_in_s = after.as_secs(), "batch job will be retried");
            let q = sqlx::query(
                "UPDATE batch_jobs SET status = 'queued', error = $2, \
                 retry_at = now() + make_interval(secs => $3) WHERE id = $1",
            )
            .bind(id)
            .bind(msg)
            .bind(after.as_secs_f64());
            (q, Ran::Requeued)
        }
        Err(JobError::Stopped) => {
            tracing::info!(batch.id = %id, "batch job put back for the next start");
            let q = sqlx::query("UPDATE batch_jobs SET status = 'queued' WHERE id = $1").bind(id);
            (q, Ran::Requeued)
        }
    };
    if let Err(e) = query.execute(&s.infra.pool).await {
        // The lease hands the job to a runner again once its heartbeat is old.
        tracing::warn!(error = %e, batch.id = %id, "cannot record how the batch job ended");
    }
    ran
}

/// One input row's answer.
enum RowResult {
    Scored {
        class: String,
        confidence: f32,
        probabilities: BTreeMap<String, f32>,
    },
    Rejected(String),
}

/// Scores the whole input, writes the output and records the run; the job's status is
/// `succeeded` when it returns `Ok`.
async fn execute(s: &AppState, job: BatchJob, cancel: &CancellationToken) -> Result<(), JobError> {
    let served = resolve_model(s, &job).await?;
    sqlx::query("UPDATE batch_jobs SET model_name = $2, model_version = $3 WHERE id = $1")
        .bind(job.id)
        .bind(&*served.model_name)
        .bind(served.version)
        .execute(&s.infra.pool)
        .await?;
    if job.attempts > 1 {
        // An earlier attempt may have logged rows that this service's copy of the log does not
        // hold yet; the replay lookup reads that copy, so let it catch up first.
        wait_log_caught_up(s, cancel).await?;
    }
    let bytes = s.store.get(&job.input_uri).await.map_err(|e| match e {
        StoreError::NotFound(_) | StoreError::ForeignUri(_) | StoreError::InvalidKey(_) => {
            JobError::Permanent(format!("input file: {e}"))
        }
        other => JobError::Transient(format!("artifact store: {other}"), Duration::from_secs(5)),
    })?;
    let parsed = tokio::task::spawn_blocking(move || petrel_ml::csv_to_json_rows(&bytes))
        .await
        .map_err(|e| JobError::Transient(format!("reading task: {e}"), Duration::from_secs(5)))?
        .map_err(|e| JobError::Permanent(format!("input file: {e}")))?;
    let target = served.model.schema().target.clone();
    // Features as the JSON text they are logged as, the label (if the file has one) left out;
    // rows that cannot be read keep their place with the reason.
    let rows: Vec<Result<Box<RawValue>, String>> = parsed
        .rows
        .into_iter()
        .map(|row| {
            let mut features = row?;
            features.remove(&target);
            let text = serde_json::to_string(&features).map_err(|e| e.to_string())?;
            RawValue::from_string(text).map_err(|e| e.to_string())
        })
        .collect();
    let total = rows.len();
    sqlx::query("UPDATE batch_jobs SET rows_total = $2 WHERE id = $1")
        .bind(job.id)
        .bind(total as i64)
        .execute(&s.infra.pool)
        .await?;

    let mut results: Vec<RowResult> = Vec::with_capacity(total);
    let mut rejected = 0i64;
    let chunk = s.max_rows.max(1);
    for start in (0..total).step_by(chunk) {
        if cancel.is_cancelled() {
            return Err(JobError::Stopped);
        }
        let end = (start + chunk).min(total);
        let answers = score_chunk(s, &served, job.id, start, &rows[start..end], cancel).await?;
        rejected += answers
            .iter()
            .filter(|a| matches!(a, RowResult::Rejected(_)))
            .count() as i64;
        results.extend(answers);
        sqlx::query(
            "UPDATE batch_jobs SET rows_done = $2, rows_rejected = $3, heartbeat_at = now() WHERE id = $1",
        )
        .bind(job.id)
        .bind(end as i64)
        .bind(rejected)
        .execute(&s.infra.pool)
        .await?;
    }

    let classes = served.model.class_names().to_vec();
    let csv = output_csv(job.id, &classes, &results).map_err(|e| {
        JobError::Transient(format!("writing the output: {e}"), Duration::from_secs(5))
    })?;
    let key = format!(
        "predictions/{}/{}.csv",
        sanitize(&served.model_name),
        job.id
    );
    let output_uri =
        s.store.put(&key, Bytes::from(csv)).await.map_err(|e| {
            JobError::Transient(format!("artifact store: {e}"), Duration::from_secs(5))
        })?;

    let started = job.started_at.unwrap_or_else(Utc::now);
    let duration_s = (Utc::now() - started).num_milliseconds().max(0) as f64 / 1000.0;
    let metrics = summary(&classes, &results, rejected, duration_s);
    let run_id = record_run(s, &job, &served, &output_uri, &metrics).await?;
    sqlx::query(
        "UPDATE batch_jobs SET status = 'succeeded', output_uri = $2, run_id = $3, error = NULL, \
         finished_at = now() WHERE id = $1",
    )
    .bind(job.id)
    .bind(&output_uri)
    .bind(run_id)
    .execute(&s.infra.pool)
    .await?;
    tracing::info!(
        batch.id = %job.id,
        model.name = %served.model_name,
        model.version = served.version,
        rows = total,
        rejected,
        duration_ms = (duration_s * 1000.0) as u64,
        output_uri = %output_uri,
        "batch job succeeded"
    );
    Ok(())
}

/// The model a job scores with: the version it was first started with, so that every attempt
/// answers with one model; else what it asked for, or the served alias.
async fn resolve_model(s: &AppState, job: &BatchJob) -> Result<Arc<Served>, JobError> {
    let pin = match (&job.model_name, job.model_version) {
        (Some(name), Some(version)) => Some(format!("{name}/{version}")),
        _ => job.model.clone(),
    };
    routes::choose_model(s, pin.as_deref()).await.map_err(|e| {
        if e.status.is_client_error() {
            JobError::Permanent(e.message)
        } else {
            JobError::Transient(e.message, Duration::from_secs(5))
        }
    })
}

/// Waits until the `predictor-log` consumer has stored everything logged so far.
async fn wait_log_caught_up(s: &AppState, cancel: &CancellationToken) -> Result<(), JobError> {
    let bus = &s.infra.bus;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = async {
            let stream = bus
                .jetstream()
                .get_stream(bus.namespace().stream_name())
                .await
                .ok()?;
            stream.consumer_info(LOG_CONSUMER).await.ok()
        }
        .await;
        if let Some(info) = info
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(JobError::Transient(
                "the prediction log's copy in Postgres is behind; waiting for it before resuming"
                    .into(),
                Duration::from_secs(5),
            ));
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(JobError::Stopped),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The deterministic inference id of a job's row (1-based, in file order).
pub fn inference_id(job: Uuid, row: usize) -> String {
    format!("batch-{job}-{row}")
}

/// Scores rows `offset..offset + rows.len()` of a job. Rows that fail validation are answered
/// with why; a chunk the scoring core refuses as a whole (a value the model cannot score) is
/// scored row by row so that only the guilty rows are rejected.
async fn score_chunk(
    s: &AppState,
    served: &Served,
    job: Uuid,
    offset: usize,
    rows: &[Result<Box<RawValue>, String>],
    cancel: &CancellationToken,
) -> Result<Vec<RowResult>, JobError> {
    let mut out: Vec<Option<RowResult>> = (0..rows.len()).map(|_| None).collect();
    let mut valid = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match row {
            Err(msg) => out[i] = Some(RowResult::Rejected(msg.clone())),
            Ok(features) => match routes::validate(s, served, offset + i, features) {
                Ok(_) => valid.push(i),
                Err(e) => out[i] = Some(RowResult::Rejected(plain(&e.message))),
            },
        }
    }
    match score_with_retries(s, served, job, offset, rows, &valid, cancel).await? {
        Ok(answers) => {
            for (i, a) in valid.iter().zip(answers) {
                out[*i] = Some(a);
            }
        }
        Err(_) => {
            for &i in &valid {
                out[i] = Some(
                    match score_with_retries(s, served, job, offset, rows, &[i], cancel).await? {
                        Ok(mut a) => a.pop().unwrap_or(RowResult::Rejected("not scored".into())),
                        Err(msg) => RowResult::Rejected(msg),
                    },
                );
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(RowResult::Rejected("not scored".into())))
        .collect())
}

/// Scores the rows at `picks` (positions in `rows`, all valid) through the scoring core,
/// retrying passing failures. `Ok(Err(msg))` is a refusal of the rows themselves.
async fn score_with_retries(
    s: &AppState,
    served: &Served,
    job: Uuid,
    offset: usize,
    rows: &[Result<Box<RawValue>, String>],
    picks: &[usize],
    cancel: &CancellationToken,
) -> Result<Result<Vec<RowResult>, String>, JobError> {
    if picks.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for _ in 0..CHUNK_TRIES {
        let mut inputs = Vec::with_capacity(picks.len());
        for &i in picks {
            let Ok(features) = &rows[i] else { continue };
            let row = routes::validate(s, served, offset + i, features)
                .map_err(|e| JobError::Permanent(e.message))?;
            inputs.push(Input {
                inference_id: Some(inference_id(job, offset + i + 1)),
                features,
                row,
            });
        }
        match routes::score(s, served, inputs).await {
            Ok(scored) => {
                return Ok(Ok(scored
                    .iter()
                    .map(|r| RowResult::Scored {
                        class: r.class().to_owned(),
                        confidence: r.confidence(),
                        probabilities: r.probabilities().clone(),
                    })
                    .collect()));
            }
            Err(ScoreError::Api(e)) if e.status.is_client_error() => {
                return Ok(Err(plain(&e.message)));
            }
            Err(ScoreError::Api(e)) => last = e.message,
            Err(ScoreError::Log(e)) => last = e.to_string(),
            Err(ScoreError::Throttled(m)) => last = m,
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(JobError::Stopped),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    Err(JobError::Transient(last, Duration::from_secs(5)))
}

/// A scoring core message without the `rows[N]` it names a request's row by: in the output the
/// row is the line it is on.
fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("rows[")
        && let Some((_, after)) = rest.split_once(']')
    {
        let after = after.trim_start_matches([':', '.']).trim_start();
        if !after.is_empty() {
            return after.to_owned();
        }
    }
    message.to_owned()
}

/// The results CSV: `inference_id, class, confidence, p_<class>..., error`, one line per input
/// row in input order. A rejected row has its id and error and nothing else.
fn output_csv(job: Uuid, classes: &[String], results: &[RowResult]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "inference_id".to_owned(),
        "class".into(),
        "confidence".into(),
    ];
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    header.push("error".into());
    w.write_record(&header)?;
    for (i, r) in results.iter().enumerate() {
        let mut line = vec![inference_id(job, i + 1)];
        match r {
            RowResult::Scored {
                class,
                confidence,
                probabilities,
            } => {
                line.push(class.clone());
                line.push(confidence.to_string());
                line.extend(
                    classes
                        .iter()
                        .map(|c| probabilities.get(c).map(f32::to_string).unwrap_or_default()),
                );
                line.push(String::new());
            }
            RowResult::Rejected(msg) => {
                line.push(String::new());
                line.push(String::new());
                line.extend(classes.iter().map(|_| String::new()));
                line.push(msg.clone());
            }
        }
        w.write_record(&line)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// The run's metrics: `rows` (scored), `rejected_rows`, `duration_s`, `mean_confidence` (when a
/// row was scored) and `class_share.<class>` for every class.
fn summary(
    classes: &[String],
    results: &[RowResult],
    rejected: i64,
    duration_s: f64,
) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<&str, usize> = classes.iter().map(|c| (c.as_str(), 0)).collect();
    let (mut scored, mut confidence) = (0usize, 0f64);
    for r in results {
        if let RowResult::Scored {
            class,
            confidence: c,
            ..
        } = r
        {
            scored += 1;
            confidence += f64::from(*c);
            *counts.entry(class.as_str()).or_default() += 1;
        }
    }
    let mut m = BTreeMap::from([
        ("rows".to_owned(), scored as f64),
        ("rejected_rows".to_owned(), rejected as f64),
        ("duration_s".to_owned(), duration_s),
    ]);
    if scored > 0 {
        m.insert("mean_confidence".into(), confidence / scored as f64);
    }
    for (class, n) in counts {
        let share = if scored > 0 {
            n as f64 / scored as f64
        } else {
            0.0
        };
        m.insert(format!("class_share.{class}"), share);
    }
    m
}

/// Records the job's run in the `batch_predictions` experiment, once: the job id is the
/// `client_token`, and metrics are logged only if the run has none yet.
async fn record_run(
    s: &AppState,
    job: &BatchJob,
    served: &Served,
    output_uri: &str,
    metrics: &BTreeMap<String, f64>,
) -> Result<Uuid, JobError> {
    let params = BTreeMap::from([
        ("model".to_owned(), served.model_name.to_string()),
        ("version".to_owned(), served.version.to_string()),
        ("input_uri".to_owned(), job.input_uri.clone()),
        ("output_uri".to_owned(), output_uri.to_owned()),
    ]);
    let mut tags = BTreeMap::from([("petrel.batch_job_id".to_owned(), job.id.to_string())]);
    if let Some(event) = job.event_id {
        tags.insert("petrel.event_id".into(), event.to_string());
    }
    let run = s
        .registry
        .create_run(&CreateRun {
            experiment: EXPERIMENT.to_owned(),
            name: Some(format!(
                "{}-v{}-{}",
                served.model_name, served.version, job.id
            )),
            params,
            tags,
            client_token: Some(job.id.to_string()),
            parent_run_id: None,
        })
        .await?;
    if run.metrics.is_empty() {
        let metrics = metrics
            .iter()
            .map(|(k, v)| MetricInput {
                key: k.clone(),
                value: *v,
                step: 0,
            })
            .collect();
        s.registry
            .log_metrics(run.id, &LogMetrics { metrics })
            .await?;
    }
    s.registry.update_run(run.id, RunStatus::Finished).await?;
    Ok(run.id)
}

/// Model names become path segments in the artifact store.
fn sanitize(name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_the_request_row_they_name() {
        assert_eq!(plain("rows[3]: unknown column 'x'"), "unknown column 'x'");
        assert_eq!(
            plain("rows[12].features is 9 bytes of JSON"),
            "features is 9 bytes of JSON"
        );
        assert_eq!(plain("something else"), "something else");
    }

    #[test]
    fn the_output_has_a_line_per_row_and_errors_in_place() {
        let classes = vec!["a".to_owned(), "b".to_owned()];
        let results = vec![
            RowResult::Scored {
                class: "b".into(),
                confidence: 0.75,
                probabilities: BTreeMap::from([("a".into(), 0.25), ("b".into(), 0.75)]),
            },
            RowResult::Rejected("unknown column 'x'".into()),
        ];
        let job = Uuid::nil();
        let text = String::from_utf8(output_csv(job, &classes, &results).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "inference_id,class,confidence,p_a,p_b,error");
        assert_eq!(lines[1], format!("batch-{job}-1,b,0.75,0.25,0.75,"));
        assert_eq!(lines[2], format!("batch-{job}-2,,,,,unknown column 'x'"));
        let m = summary(&classes, &results, 1, 2.5);
        assert_eq!(m["rows"], 1.0);
        assert_eq!(m["rejected_rows"], 1.0);
        assert_eq!(m["mean_confidence"], 0.75);
        assert_eq!(m["class_share.b"], 1.0);
        assert_eq!(m["class_share.a"], 0.0);
    }
}
