//! Training jobs: from a `data.ready` event to a registered model version.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use petrel_api::ClientError;
use petrel_api::registry::{
    CreateModelVersion, CreateRun, DATASET_CONTEXT_TAG, DatasetInput, Evaluation, LogInputs,
    LogMetrics, MetricInput, RunStatus,
};
use petrel_events::consumer::Outcome;
use petrel_events::payloads::{DataReady, DatasetPurpose};
use petrel_ml::{
    CrossValidation, MlError, ModelBundle, Table, TrainConfig, Trial, cross_validate, parse_csv,
    sweep, train_classifier,
};
use petrel_store::StoreError;
use serde::Serialize;
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
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub const JOB_COLUMNS: &str = "id, event_id, dataset_id, dataset_name, model_name, status, epoch, epochs, \
     train_loss, error, run_id, model_version, metrics, trials_total, trials_done, cv, created_at, updated_at";

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// The data or configuration can never train: the job fails for good.
    #[error("{0}")]
    Permanent(String),
    /// A dependency failed: try again later.
    #[error("{0}")]
    Transient(String),
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

/// The consumer's handler. The job row is keyed by the event id, so a redelivery finds the job:
/// a finished job is acknowledged again, an unfinished one resumes (training is deterministic
/// and the registry calls are idempotent on the job id).
pub async fn on_data_ready(state: &AppState, event_id: Uuid, data: DataReady) -> Outcome {
    if !should_train(&data) {
        tracing::info!(
            event.id = %event_id,
            dataset.name = %data.name,
            dataset.purpose = data.purpose.as_str(),
            "dataset is not for training; acknowledging"
        );
        return Outcome::Done;
    }
    let job = match find_or_create_job(state, event_id, &data).await {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the training job");
            return Outcome::Retry(Duration::from_secs(5));
        }
    };
    if job.status == "succeeded" || job.status == "failed" {
        tracing::info!(job.id = %job.id, status = %job.status, "job already finished; acknowledging");
        return Outcome::Done;
    }
    match run_job(state, job.id, &data).await {
        Ok(()) => Outcome::Done,
        Err(JobError::Permanent(msg)) => {
            tracing::error!(job.id = %job.id, dataset.name = %data.name, error = %msg, "training job failed");
            if let Err(e) = set_status(state, job.id, "failed", Some(&msg)).await {
                tracing::warn!(error = %e, "cannot mark the job failed");
                return Outcome::Retry(Duration::from_secs(5));
            }
            Outcome::Done
        }
        Err(JobError::Transient(msg)) => {
            tracing::warn!(job.id = %job.id, error = %msg, "training job will be retried");
            Outcome::Retry(Duration::from_secs(5))
        }
    }
}

/// Only training data is trained on: scoring data is the predictor's, reference data nobody's.
fn should_train(data: &DataReady) -> bool {
    data.purpose == DatasetPurpose::Training
}

async fn find_or_create_job(
    state: &AppState,
    event_id: Uuid,
    data: &DataReady,
) -> Result<Job, sqlx::Error> {
    sqlx::query(
        "INSERT INTO training_jobs (id, event_id, dataset_id, dataset_name, dataset_uri, model_name, status, epochs) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event_id)
    .bind(data.dataset_id)
    .bind(&data.name)
    .bind(&data.uri)
    .bind(&data.name)
    .bind(state.train.epochs as i32)
    .execute(&state.infra.pool)
    .await?;
    sqlx::query_as::<_, Job>(&format!(
        "SELECT {JOB_COLUMNS} FROM training_jobs WHERE event_id = $1"
    ))
    .bind(event_id)
    .fetch_one(&state.infra.pool)
    .await
}

async fn set_status(
    state: &AppState,
    job: Uuid,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE training_jobs SET status = $2, error = $3, updated_at = now() WHERE id = $1",
    )
    .bind(job)
    .bind(status)
    .bind(error)
    .execute(&state.infra.pool)
    .await?;
    Ok(())
}

async fn run_job(state: &AppState, job: Uuid, data: &DataReady) -> Result<(), JobError> {
    set_status(state, job, "running", None).await?;
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
    let model_name = data.name.clone();
    tracing::info!(job.id = %job, dataset.name = %data.name, rows = table.len(), "training started");

    // Train off the async runtime; report progress to the job row once a second meanwhile.
    // Progress is best effort: a failed update is logged and training goes on, because
    // returning early would leave the blocking task training, detached, while a redelivery
    // starts the same job again.
    let progress = Arc::new(Mutex::new(Progress::default()));
    let config = state.train.clone();
    let tuning = state.tuning.clone();
    let trials_total = match &tuning.sweep {
        Some(spec) => spec
            .trials(&config)
            .map_err(|e| JobError::Permanent(e.to_string()))?
            .len(),
        None => 0,
    };
    let p = progress.clone();
    let started = std::time::Instant::now();
    let training = tokio::task::spawn_blocking(move || train(&table, &config, &tuning, &p));
    tokio::pin!(training);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let report = |progress: &Mutex<Progress>| {
        let now = progress.lock().map(|g| *g).unwrap_or_default();
        async move {
            if let Err(e) = record_progress(state, job, now, trials_total).await {
                tracing::warn!(job.id = %job, error = %e, "cannot record training progress; training goes on");
            }
        }
    };
    let trained = loop {
        tokio::select! {
            done = &mut training => break done,
            _ = tick.tick() => report(&progress).await,
        }
    }
    .map_err(|e| JobError::Transient(format!("training task: {e}")))?
    .map_err(|e| JobError::Permanent(e.to_string()))?;
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
    register(state, job, data, &model_name, &trained).await
}

/// Where a job's training is: the epoch and loss of the model being fitted, and the sweep's
/// finished trials.
#[derive(Clone, Copy, Debug)]
struct Progress {
    epoch: usize,
    loss: f64,
    trials_done: usize,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            epoch: 0,
            loss: f64::NAN,
            trials_done: 0,
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
) -> Result<Trained, MlError> {
    let set = |f: &dyn Fn(&mut Progress)| {
        if let Ok(mut g) = progress.lock() {
            f(&mut g);
        }
    };
    if let Some(spec) = &tuning.sweep {
        let outcome = sweep(table, config, spec, &|_| set(&|p| p.trials_done += 1))?;
        let best = outcome.best;
        let last = outcome.bundle.metrics.epochs_run;
        set(&|p| p.epoch = last);
        return Ok(Trained {
            cv: Some(outcome.trials[best].cv.clone()),
            bundle: outcome.bundle,
            trials: outcome.trials,
            best: Some(best),
        });
    }
    let cv = if tuning.cv_folds >= 2 {
        Some(cross_validate(
            table,
            config,
            tuning.cv_folds,
            &mut |_, _, _| {},
        )?)
    } else {
        None
    };
    let bundle = train_classifier(table, config, &mut |epoch, loss| {
        set(&|p| {
            p.epoch = epoch;
            p.loss = loss;
        })
    })?;
    Ok(Trained {
        bundle,
        cv,
        trials: Vec::new(),
        best: None,
    })
}

async fn record_progress(
    state: &AppState,
    job: Uuid,
    progress: Progress,
    trials_total: usize,
) -> Result<(), JobError> {
    sqlx::query(
        "UPDATE training_jobs SET epoch = $2, train_loss = $3, trials_total = $4, trials_done = $5, \
         updated_at = now() WHERE id = $1",
    )
    .bind(job)
    .bind(progress.epoch as i32)
    .bind(progress.loss.is_finite().then_some(progress.loss))
    .bind(trials_total as i32)
    .bind(progress.trials_done as i32)
    .execute(&state.infra.pool)
    .await?;
    Ok(())
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
    BTreeMap::from([
        ("hidden_size".to_owned(), c.hidden_size.to_string()),
        ("depth".to_owned(), c.depth.to_string()),
        ("dropout".to_owned(), c.dropout.to_string()),
        ("epochs".to_owned(), c.epochs.to_string()),
        ("patience".to_owned(), c.patience.to_string()),
        ("learning_rate".to_owned(), c.learning_rate.to_string()),
        ("weight_decay".to_owned(), c.weight_decay.to_string()),
        ("test_fraction".to_owned(), c.test_fraction.to_string()),
        ("seed".to_owned(), c.seed.to_string()),
    ])
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

/// Records each trial of a sweep as a child run of `parent`: its configuration, its
/// cross-validated metrics and each fold's accuracy (step = fold), and whether it was chosen.
/// Keyed by job and trial, so a resumed job finds the runs it already wrote.
async fn log_trials(
    state: &AppState,
    job: Uuid,
    model_name: &str,
    parent: Uuid,
    trained: &Trained,
) -> Result<(), JobError> {
    for t in &trained.trials {
        let chosen = trained.best == Some(t.index);
        let tags = BTreeMap::from([
            ("petrel.job_id".to_owned(), job.to_string()),
            ("petrel.trial".to_owned(), t.index.to_string()),
            ("petrel.chosen".to_owned(), chosen.to_string()),
            ("petrel.cv_split".to_owned(), t.cv.split.clone()),
        ]);
        let run = state
            .registry
            .create_run(&CreateRun {
                experiment: model_name.to_owned(),
                name: Some(format!("trial-{}", t.index)),
                params: config_params(&t.config),
                tags,
                client_token: Some(format!("{job}/trial/{}", t.index)),
                parent_run_id: Some(parent),
            })
            .await?;
        if run.metrics.is_empty() {
            let mut metrics = points(&t.cv.metric_map());
            for f in &t.cv.folds {
                metrics.push(MetricInput {
                    key: "cv_fold_accuracy".to_owned(),
                    value: f.scores.accuracy,
                    step: f.fold as i64,
                });
            }
            state
                .registry
                .log_metrics(run.id, &LogMetrics { metrics })
                .await?;
        }
        if run.status != RunStatus::Finished {
            state
                .registry
                .update_run(run.id, RunStatus::Finished)
                .await?;
        }
    }
    Ok(())
}

/// Stores the bundle and records run and version with the registry, all keyed by the job id.
async fn register(
    state: &AppState,
    job: Uuid,
    data: &DataReady,
    model_name: &str,
    trained: &Trained,
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
    params.extend([
        ("dataset_id".to_owned(), data.dataset_id.to_string()),
        ("dataset_version".to_owned(), data.version.to_string()),
        ("dataset_hash".to_owned(), data.content_hash.clone()),
    ]);
    let mut tags = BTreeMap::from([
        ("petrel.job_id".to_owned(), job.to_string()),
        ("petrel.model_type".to_owned(), "burn-mlp".to_owned()),
    ]);
    if let Some(cv) = &trained.cv {
        tags.insert("petrel.cv_split".to_owned(), cv.split.clone());
    }
    if let Some(best) = trained.best {
        tags.insert(
            "petrel.sweep_trials".to_owned(),
            trained.trials.len().to_string(),
        );
        tags.insert("petrel.chosen_trial".to_owned(), best.to_string());
    }
    let run = state
        .registry
        .create_run(&CreateRun {
            experiment: model_name.to_owned(),
            name: Some(format!("{}-v{}", data.name, data.version)),
            params,
            tags,
            client_token: Some(job.to_string()),
            parent_run_id: None,
        })
        .await?;
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
                    "burn MLP ({} hidden layer(s) of {}) trained on {} v{}{}",
                    bundle.config.depth,
                    bundle.config.hidden_size,
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
            },
        )
        .await?;
    sqlx::query(
        "UPDATE training_jobs SET status = 'succeeded', run_id = $2, model_version = $3, metrics = $4, \
         cv = $5, updated_at = now() WHERE id = $1",
    )
    .bind(job)
    .bind(run.id)
    .bind(version.version)
    .bind(serde_json::to_value(&metrics).unwrap_or_default())
    .bind(trained.cv.as_ref().and_then(|cv| serde_json::to_value(cv).ok()))
    .execute(&state.infra.pool)
    .await?;
    tracing::info!(
        job.id = %job,
        model.name = %model_name,
        model.version = version.version,
        aliases = ?version.aliases,
        "model registered"
    );
    Ok(())
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

pub async fn get_job(state: &AppState, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as::<_, Job>(&format!(
        "SELECT {JOB_COLUMNS} FROM training_jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.infra.pool)
    .await
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
