//! Closing the loop: retraining a model when the monitor raises an alert about it.
//!
//! Each model has a retraining policy (`off` by default). When an alert of a kind the policy
//! names opens, the trainer asks the labeler for the newest labelled production rows of the
//! model (the features each prediction was made from, with its ground truth), writes them as a
//! CSV in the production version's schema (after the data it was trained on, for
//! `reference_plus_recent`) and ingests it as a new version of the model's dataset. Ingest
//! validates it, records its lineage and announces `data.ready`, and the trainer trains on it
//! like on any dataset: its held-out split is recent labelled production data, on which the
//! production version is scored too, so the new version takes production only if it wins on
//! those rows.
//!
//! One retraining per alert (the alert's event id keys its row), at most one per cool-down per
//! model (alerts inside it are recorded as `suppressed`), and the CSV is stored before it is
//! ingested, so a redelivered alert ingests the same bytes, which ingest recognises.

use std::time::Duration;

use bytes::Bytes;
use petrel_api::ingest::{IngestRequest, IngestResponse};
use petrel_api::labeler::JoinedRows;
use petrel_api::registry::{DATASET_CONTEXT_TAG, PRODUCTION};
use petrel_events::Envelope;
use petrel_events::consumer::Outcome;
use petrel_events::payloads::{Alert, AlertKind, AlertStatus, DatasetPurpose};
use petrel_ml::Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;

/// What a retraining trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrainMode {
    /// Never retrain on alerts.
    Off,
    /// The newest labelled production rows.
    Recent,
    /// The data the production version was trained on, plus the newest labelled rows.
    ReferencePlusRecent,
}

/// A model's retraining policy: `GET`/`PUT /v1/retraining/{model}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainingPolicy {
    pub mode: RetrainMode,
    /// The alert kinds that start a retraining.
    pub alerts: Vec<AlertKind>,
    /// Least time between two retrainings of the model; alerts inside it are recorded as
    /// suppressed.
    pub cooldown_seconds: u64,
    /// Fewest labelled production rows worth training on.
    pub min_rows: u32,
    /// Most labelled rows taken, newest first.
    pub max_rows: u32,
    /// How long to wait for `min_rows` labels after the alert (ground truth usually arrives
    /// later than the predictions it labels) before giving up as `too_few_labels`.
    pub label_wait_seconds: u64,
}

impl Default for RetrainingPolicy {
    fn default() -> Self {
        RetrainingPolicy {
            mode: RetrainMode::Off,
            alerts: vec![
                AlertKind::Drift,
                AlertKind::Accuracy,
                AlertKind::EstimatedAccuracy,
            ],
            cooldown_seconds: 3600,
            min_rows: 100,
            max_rows: 20_000,
            label_wait_seconds: 600,
        }
    }
}

/// Most labelled rows a retraining may take.
pub const MAX_RETRAIN_ROWS: u32 = 100_000;

impl RetrainingPolicy {
    pub fn check(&self) -> Result<(), String> {
        if self.min_rows < 10 {
            return Err("min_rows must be at least 10".into());
        }
        if !(1..=MAX_RETRAIN_ROWS).contains(&self.max_rows) || self.max_rows < self.min_rows {
            return Err(format!(
                "max_rows must be between min_rows and {MAX_RETRAIN_ROWS}"
            ));
        }
        if self.cooldown_seconds > 366 * 24 * 3600 {
            return Err("cooldown_seconds must be at most a year".into());
        }
        if self.label_wait_seconds > 7 * 24 * 3600 {
            return Err("label_wait_seconds must be at most a week".into());
        }
        if self.mode != RetrainMode::Off && self.alerts.is_empty() {
            return Err("alerts must name at least one alert kind when mode is not off".into());
        }
        Ok(())
    }
}

pub async fn policy(state: &AppState, model: &str) -> Result<RetrainingPolicy, sqlx::Error> {
    let row: Option<(serde_json::Value,)> =
        sqlx::query_as("SELECT policy FROM retraining_policies WHERE model_name = $1")
            .bind(model)
            .fetch_optional(&state.infra.pool)
            .await?;
    Ok(row
        .and_then(|(v,)| serde_json::from_value(v).ok())
        .unwrap_or_default())
}

pub async fn set_policy(
    state: &AppState,
    model: &str,
    policy: &RetrainingPolicy,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO retraining_policies (model_name, policy) VALUES ($1, $2) \
         ON CONFLICT (model_name) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()",
    )
    .bind(model)
    .bind(serde_json::to_value(policy).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .execute(&state.infra.pool)
    .await?;
    Ok(())
}

/// One alert's retraining, as `GET /v1/retraining/{model}/history` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Retraining {
    pub alert_id: Uuid,
    pub model_name: String,
    pub alert_kind: String,
    /// `collecting`, `requested` (the dataset is ingested; its job trains it), `suppressed`
    /// (inside the cool-down), `too_few_labels` or `failed`.
    pub status: String,
    pub reason: Option<String>,
    pub rows: Option<i32>,
    pub csv_uri: Option<String>,
    pub dataset_id: Option<Uuid>,
    pub dataset_version: Option<i32>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

const COLUMNS: &str = "alert_id, model_name, alert_kind, status, reason, rows, csv_uri, dataset_id, \
     dataset_version, created_at, updated_at";

pub async fn history(
    state: &AppState,
    model: &str,
    limit: i64,
) -> Result<Vec<Retraining>, sqlx::Error> {
    sqlx::query_as::<_, Retraining>(&format!(
        "SELECT {COLUMNS} FROM retrains WHERE model_name = $1 ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(model)
    .bind(limit)
    .fetch_all(&state.infra.pool)
    .await
}

/// Why a retraining stopped short.
#[derive(Debug, thiserror::Error)]
enum RetrainError {
    /// It can never succeed for this alert: recorded as `failed`.
    #[error("{0}")]
    Permanent(String),
    /// A dependency failed: the alert is redelivered later.
    #[error("{0}")]
    Transient(String),
    /// Not enough labels yet, inside the policy's wait: the alert is redelivered later.
    #[error("{0}")]
    Waiting(String),
}

impl From<sqlx::Error> for RetrainError {
    fn from(e: sqlx::Error) -> Self {
        RetrainError::Transient(format!("database: {e}"))
    }
}

fn client_error(who: &str) -> impl FnOnce(petrel_api::ClientError) -> RetrainError + '_ {
    move |e| {
        if e.is_transient() {
            RetrainError::Transient(format!("{who}: {e}"))
        } else {
            RetrainError::Permanent(format!("{who} refused: {e}"))
        }
    }
}

/// The `alerts.>` consumer's handler.
pub async fn on_alert(state: &AppState, env: Envelope<Alert>) -> Outcome {
    let alert = &env.data;
    // Alerts from ingest (a rejected file, a failing schedule) concern no model.
    if alert.status != AlertStatus::Opened || alert.model_name.is_empty() {
        return Outcome::Done;
    }
    let policy = match policy(state, &alert.model_name).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the retraining policy");
            return Outcome::Retry(Duration::from_secs(5));
        }
    };
    if policy.mode == RetrainMode::Off || !policy.alerts.contains(&alert.kind) {
        return Outcome::Done;
    }
    match retrain(state, env.id, alert, &policy).await {
        Ok(()) => Outcome::Done,
        Err(RetrainError::Transient(msg)) => {
            tracing::warn!(alert.id = %env.id, error = %msg, "retraining will be retried");
            Outcome::Retry(Duration::from_secs(5))
        }
        Err(RetrainError::Waiting(msg)) => {
            tracing::info!(alert.id = %env.id, model.name = %alert.model_name, reason = %msg, "retraining waits for labels");
            Outcome::Retry(Duration::from_secs(2))
        }
        Err(RetrainError::Permanent(msg)) => {
            tracing::error!(alert.id = %env.id, model.name = %alert.model_name, error = %msg, "retraining failed");
            match set_status(state, env.id, "failed", Some(&msg)).await {
                Ok(()) => Outcome::Done,
                Err(_) => Outcome::Retry(Duration::from_secs(5)),
            }
        }
    }
}

async fn set_status(
    state: &AppState,
    alert: Uuid,
    status: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE retrains SET status = $2, reason = COALESCE($3, reason), updated_at = now() \
         WHERE alert_id = $1",
    )
    .bind(alert)
    .bind(status)
    .bind(reason)
    .execute(&state.infra.pool)
    .await?;
    Ok(())
}

/// What the claim found: go on (with the CSV already stored, on a redelivery), or stop.
enum Claim {
    Go(Option<String>),
    Stop,
}

/// Records the alert's retraining, or its suppression inside the cool-down. Serialised per
/// model, so two alerts arriving together start one retraining.
async fn claim(
    state: &AppState,
    alert_id: Uuid,
    alert: &Alert,
    policy: &RetrainingPolicy,
) -> Result<Claim, sqlx::Error> {
    let mut tx = state.infra.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('petrel.trainer.retrain.' || $1))")
        .bind(&alert.model_name)
        .execute(&mut *tx)
        .await?;
    let existing: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT status, csv_uri FROM retrains WHERE alert_id = $1")
            .bind(alert_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((status, csv_uri)) = existing {
        tx.commit().await?;
        return Ok(if status == "collecting" {
            Claim::Go(csv_uri)
        } else {
            Claim::Stop
        });
    }
    let last: Option<(Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT alert_id, created_at FROM retrains WHERE model_name = $1 \
         AND status IN ('collecting', 'requested') ORDER BY created_at DESC LIMIT 1",
    )
    .bind(&alert.model_name)
    .fetch_optional(&mut *tx)
    .await?;
    let cooling = last.filter(|(_, at)| {
        (chrono::Utc::now() - *at).num_seconds() < policy.cooldown_seconds as i64
    });
    let (status, reason) = match cooling {
        Some((other, at)) => (
            "suppressed",
            Some(format!(
                "cool-down: the model was retrained {}s ago (alert {other}); the policy waits {}s between retrainings",
                (chrono::Utc::now() - at).num_seconds(),
                policy.cooldown_seconds
            )),
        ),
        None => ("collecting", None),
    };
    sqlx::query(
        "INSERT INTO retrains (alert_id, model_name, alert_kind, status, reason) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(alert_id)
    .bind(&alert.model_name)
    .bind(alert.kind.as_str())
    .bind(status)
    .bind(&reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Some(r) = &reason {
        tracing::info!(alert.id = %alert_id, model.name = %alert.model_name, reason = %r, "retraining suppressed");
        return Ok(Claim::Stop);
    }
    tracing::info!(alert.id = %alert_id, model.name = %alert.model_name, kind = alert.kind.as_str(), "retraining on an alert");
    Ok(Claim::Go(None))
}

async fn retrain(
    state: &AppState,
    alert_id: Uuid,
    alert: &Alert,
    policy: &RetrainingPolicy,
) -> Result<(), RetrainError> {
    let stored = match claim(state, alert_id, alert, policy).await? {
        Claim::Stop => return Ok(()),
        Claim::Go(stored) => stored,
    };
    let model = &alert.model_name;
    let production = state
        .registry
        .get_alias(model, PRODUCTION)
        .await
        .map_err(client_error("registry"))?
        .ok_or_else(|| {
            RetrainError::Permanent(format!("model {model:?} has no production version"))
        })?;
    let schema = production.input_schema.clone().ok_or_else(|| {
        RetrainError::Permanent(format!(
            "version {} of {model:?} does not say which features it takes (no input schema)",
            production.version
        ))
    })?;
    let csv = match stored {
        Some(uri) => state
            .store
            .get(&uri)
            .await
            .map_err(|e| RetrainError::Transient(format!("artifact store: {e}")))?,
        None => {
            let Some((csv, rows)) =
                collect(state, alert_id, model, &schema, &production, policy).await?
            else {
                return Ok(());
            };
            let key = format!("retraining/{}/{alert_id}.csv", crate::jobs::sanitize(model));
            let uri = state
                .store
                .put(&key, csv.clone())
                .await
                .map_err(|e| RetrainError::Transient(format!("artifact store: {e}")))?;
            sqlx::query(
                "UPDATE retrains SET csv_uri = $2, rows = $3, updated_at = now() WHERE alert_id = $1",
            )
            .bind(alert_id)
            .bind(&uri)
            .bind(rows as i32)
            .execute(&state.infra.pool)
            .await?;
            csv
        }
    };
    let text = String::from_utf8(csv.to_vec())
        .map_err(|_| RetrainError::Permanent("the stored training set is not UTF-8".into()))?;
    let resp: IngestResponse = state
        .ingest
        .post(
            "/v1/datasets",
            &IngestRequest {
                name: model.clone(),
                schema,
                csv: Some(text),
                path: None,
                uri: None,
                generate: None,
                purpose: DatasetPurpose::Training,
                checks: Default::default(),
            },
        )
        .await
        .map_err(client_error("ingest"))?;
    sqlx::query(
        "UPDATE retrains SET status = 'requested', dataset_id = $2, dataset_version = $3, \
         updated_at = now() WHERE alert_id = $1",
    )
    .bind(alert_id)
    .bind(resp.dataset.id)
    .bind(resp.dataset.version)
    .execute(&state.infra.pool)
    .await?;
    tracing::info!(alert.id = %alert_id, model.name = %model, dataset.version = resp.dataset.version, rows = resp.dataset.row_count, "retraining data ingested; its job trains it");
    Ok(())
}

/// The labelled production rows (after the production version's own training data, for
/// `reference_plus_recent`) as a CSV in `schema`; `None` when there are too few, recorded.
async fn collect(
    state: &AppState,
    alert_id: Uuid,
    model: &str,
    schema: &Schema,
    production: &petrel_api::registry::ModelVersion,
    policy: &RetrainingPolicy,
) -> Result<Option<(Bytes, usize)>, RetrainError> {
    let joined: JoinedRows = state
        .labeler
        .get(&format!(
            "/v1/labels/joined?model={}&limit={}",
            petrel_api::client::segment(model),
            policy.max_rows
        ))
        .await
        .map_err(client_error("labeler"))?;
    let n = joined.rows.len();
    if n < policy.min_rows as usize {
        let (waited,): (f64,) = sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM retrains WHERE alert_id = $1",
        )
        .bind(alert_id)
        .fetch_one(&state.infra.pool)
        .await?;
        if waited < policy.label_wait_seconds as f64 {
            return Err(RetrainError::Waiting(format!(
                "{n} of the {} labelled rows needed after {waited:.0}s of {}s",
                policy.min_rows, policy.label_wait_seconds
            )));
        }
        let why = format!(
            "{n} labelled production rows after waiting {}s, fewer than the policy's min_rows {}",
            policy.label_wait_seconds, policy.min_rows
        );
        tracing::info!(alert.id = %alert_id, model.name = %model, reason = %why, "not retraining");
        set_status(state, alert_id, "too_few_labels", Some(&why)).await?;
        return Ok(None);
    }
    let reference = if policy.mode == RetrainMode::ReferencePlusRecent {
        Some(reference_csv(state, production).await?)
    } else {
        None
    };
    let schema = schema.clone();
    let csv =
        tokio::task::spawn_blocking(move || write_csv(&schema, reference.as_deref(), &joined))
            .await
            .map_err(|e| RetrainError::Transient(format!("CSV task: {e}")))?
            .map_err(RetrainError::Permanent)?;
    Ok(Some((Bytes::from(csv), n)))
}

/// The file the production version was trained on, from its run's training input.
async fn reference_csv(
    state: &AppState,
    production: &petrel_api::registry::ModelVersion,
) -> Result<Bytes, RetrainError> {
    let run = state
        .registry
        .get_run(production.run_id)
        .await
        .map_err(client_error("registry"))?;
    let uri = run
        .inputs
        .iter()
        .filter(|i| {
            i.tags
                .get(DATASET_CONTEXT_TAG)
                .is_some_and(|c| c == "training")
        })
        .find_map(|i| {
            serde_json::from_str::<serde_json::Value>(&i.source)
                .ok()
                .and_then(|s| s["uri"].as_str().map(str::to_owned))
        })
        .ok_or_else(|| {
            RetrainError::Permanent(format!(
                "version {}'s run records no training dataset to start from; use mode recent",
                production.version
            ))
        })?;
    state
        .store
        .get(&uri)
        .await
        .map_err(|e| RetrainError::Transient(format!("artifact store: {e}")))
}

/// Writes `reference`'s rows (columns matched by name) and then the labelled rows as one CSV
/// with the schema's features and target, in order.
pub fn write_csv(
    schema: &Schema,
    reference: Option<&[u8]>,
    joined: &JoinedRows,
) -> Result<Vec<u8>, String> {
    let mut header: Vec<&str> = schema.features.iter().map(|c| c.name.as_str()).collect();
    header.push(&schema.target);
    let mut out = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| format!("cannot write the training set: {e}");
    out.write_record(&header).map_err(io)?;
    if let Some(bytes) = reference {
        let mut r = csv::Reader::from_reader(bytes);
        let names = r
            .headers()
            .map_err(|e| format!("the reference dataset: {e}"))?
            .clone();
        let at: Vec<Option<usize>> = header
            .iter()
            .map(|h| names.iter().position(|n| n.trim() == *h))
            .collect();
        for record in r.records() {
            let record = record.map_err(|e| format!("the reference dataset: {e}"))?;
            out.write_record(
                at.iter()
                    .map(|i| i.and_then(|i| record.get(i)).unwrap_or("")),
            )
            .map_err(io)?;
        }
    }
    for row in &joined.rows {
        let cells = schema
            .features
            .iter()
            .map(|c| cell(row.features.get(&c.name)))
            .chain(std::iter::once(row.label.clone()));
        out.write_record(cells).map_err(io)?;
    }
    out.into_inner()
        .map_err(|e| format!("cannot write the training set: {e}"))
}

fn cell(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_api::labeler::JoinedRow;
    use serde_json::json;

    fn row(features: serde_json::Value, label: &str) -> JoinedRow {
        JoinedRow {
            inference_id: "i".into(),
            model_version: 1,
            features: features.as_object().unwrap().clone(),
            label: label.into(),
            predicted_class: "x".into(),
            predicted_at: chrono::Utc::now(),
            labelled_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_training_set_follows_the_schema_after_the_reference_rows() {
        let schema = Schema {
            features: vec![
                petrel_ml::Column::numeric("x"),
                petrel_ml::Column::categorical("c"),
            ],
            target: "y".into(),
        };
        let joined = JoinedRows {
            rows: vec![
                row(json!({"c": "a, with a comma", "x": 1.5, "extra": 9}), "k1"),
                row(json!({"x": null}), "k2"),
            ],
        };
        // The reference file has its columns in another order, and one more.
        let reference = b"y,c,z,x\nk0,b,7,0.25\n";
        let csv = write_csv(&schema, Some(reference), &joined).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "x,c,y\n0.25,b,k0\n1.5,\"a, with a comma\",k1\n,,k2\n"
        );
        // The result parses back under the schema.
        let parsed =
            petrel_ml::parse_csv(&write_csv(&schema, None, &joined).unwrap(), &schema).unwrap();
        assert_eq!(parsed.table.targets, vec!["k1", "k2"]);
    }

    #[test]
    fn policies_are_checked() {
        RetrainingPolicy::default().check().unwrap();
        let bad = RetrainingPolicy {
            min_rows: 500,
            max_rows: 100,
            ..RetrainingPolicy::default()
        };
        assert!(bad.check().unwrap_err().contains("max_rows"));
        let none = RetrainingPolicy {
            mode: RetrainMode::Recent,
            alerts: vec![],
            ..RetrainingPolicy::default()
        };
        assert!(none.check().unwrap_err().contains("alerts"));
        let p: RetrainingPolicy = serde_json::from_value(json!({"mode": "recent"})).unwrap();
        assert_eq!(p.mode, RetrainMode::Recent);
        assert_eq!(p.alerts.len(), 3);
        assert!(serde_json::from_value::<RetrainingPolicy>(json!({"mode": "sometimes"})).is_err());
    }
}
