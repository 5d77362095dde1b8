//! This service's copy of the prediction log in Postgres, written downstream of JetStream.
//!
//! The `predictor-log` durable consumer takes many `predictions.logged` events per fetch and
//! inserts all their rows in one statement. The features and probabilities are bound as the
//! JSON text they travel as (cast to `jsonb` by Postgres), never parsed into values. A row that
//! is already there is left alone, so redeliveries and replays are no-ops, and the first copy
//! of an id in stream order wins, as it does in the labeler and the monitor.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use petrel_events::Envelope;
use petrel_events::consumer::BatchOutcome;
use petrel_events::payloads::RawPredictionsLogged;
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::replay::Answer;

/// Consumer handler: stores every row of the batch.
pub async fn on_logged(pool: &PgPool, batch: Vec<Envelope<RawPredictionsLogged>>) -> BatchOutcome {
    match insert(pool, &batch).await {
        Ok(rows) => {
            tracing::debug!(events = batch.len(), rows, "predictions stored");
            BatchOutcome::done()
        }
        Err(e) => {
            tracing::warn!(error = %e, events = batch.len(), "cannot store predictions; retrying");
            BatchOutcome::Retry(Duration::from_secs(1))
        }
    }
}

async fn insert(
    pool: &PgPool,
    batch: &[Envelope<RawPredictionsLogged>],
) -> Result<u64, sqlx::Error> {
    let n: usize = batch.iter().map(|e| e.data.predictions.len()).sum();
    let mut ids = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut features = Vec::with_capacity(n);
    let mut classes = Vec::with_capacity(n);
    let mut confidences = Vec::with_capacity(n);
    let mut probabilities = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for env in batch {
        for p in &env.data.predictions {
            ids.push(p.inference_id.as_str());
            names.push(env.data.model_name.as_str());
            versions.push(env.data.model_version);
            features.push(p.features.get());
            classes.push(p.class.as_str());
            confidences.push(p.confidence);
            probabilities.push(p.probabilities.get());
            events.push(env.id);
            times.push(p.predicted_at);
        }
    }
    let done = sqlx::query(
        "INSERT INTO predictions (inference_id, model_name, model_version, features, class, confidence, \
         probabilities, event_id, predicted_at) \
         SELECT i, m, v, f::jsonb, c, p, pr::jsonb, e, t \
         FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::real[], $7::text[], \
                     $8::uuid[], $9::timestamptz[]) AS u(i, m, v, f, c, p, pr, e, t) \
         ON CONFLICT (inference_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&versions)
    .bind(&features)
    .bind(&classes)
    .bind(&confidences)
    .bind(&probabilities)
    .bind(&events)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The logged answers for those of `ids` this copy holds.
pub async fn answers(pool: &PgPool, ids: &[&str]) -> Result<Vec<(String, Answer)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT inference_id, model_name, model_version, class, confidence, probabilities::text AS probabilities \
         FROM predictions WHERE inference_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let probabilities: String = r.get("probabilities");
            let probabilities: BTreeMap<String, f32> = serde_json::from_str(&probabilities)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok((
                r.get("inference_id"),
                Answer {
                    class: r.get("class"),
                    probabilities,
                    confidence: r.get("confidence"),
                    model_name: r.get("model_name"),
                    model_version: r.get("model_version"),
                },
            ))
        })
        .collect()
}

/// One logged prediction, as `GET /v1/predictions/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct LoggedRow {
    pub inference_id: String,
    pub model_name: String,
    pub model_version: i32,
    pub features: Box<serde_json::value::RawValue>,
    pub class: String,
    pub confidence: f32,
    pub probabilities: Box<serde_json::value::RawValue>,
    pub predicted_at: DateTime<Utc>,
    /// The `predictions.logged` event that carried it.
    pub event_id: uuid::Uuid,
}

pub async fn logged(pool: &PgPool, id: &str) -> Result<Option<LoggedRow>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT inference_id, model_name, model_version, features::text AS features, class, confidence, \
         probabilities::text AS probabilities, predicted_at, event_id FROM predictions WHERE inference_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let raw = |s: String| {
        serde_json::value::RawValue::from_string(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    Ok(Some(LoggedRow {
        inference_id: r.get("inference_id"),
        model_name: r.get("model_name"),
        model_version: r.get("model_version"),
        features: raw(r.get("features"))?,
        class: r.get("class"),
        confidence: r.get("confidence"),
        probabilities: raw(r.get("probabilities"))?,
        predicted_at: r.get("predicted_at"),
        event_id: r.get("event_id"),
    }))
}
