//! Consumers: store what the monitor will window.

use std::time::Duration;

use petrel_events::Envelope;
use petrel_events::consumer::{BatchOutcome, Outcome};
use petrel_events::payloads::{LabelsJoined, RawPredictionsLogged};

use crate::AppState;

/// Stores the observations of a whole batch of `predictions.logged` events in one transaction.
pub async fn on_predictions(
    s: &AppState,
    batch: Vec<Envelope<RawPredictionsLogged>>,
) -> BatchOutcome {
    match store_predictions(s, &batch).await {
        Ok(()) => BatchOutcome::done(),
        Err(e) => {
            tracing::warn!(events = batch.len(), error = %e, "cannot store predictions; retrying");
            BatchOutcome::Retry(Duration::from_secs(2))
        }
    }
}

pub async fn on_labels(s: &AppState, env: Envelope<LabelsJoined>) -> Outcome {
    retry_on_error("labels", env.id, store_labels(s, &env).await)
}

fn retry_on_error(what: &str, id: uuid::Uuid, r: Result<(), sqlx::Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Done,
        Err(e) => {
            tracing::warn!(event.id = %id, error = %e, "cannot store {what}; retrying");
            Outcome::Retry(Duration::from_secs(2))
        }
    }
}

async fn store_predictions(
    s: &AppState,
    batch: &[Envelope<RawPredictionsLogged>],
) -> Result<(), sqlx::Error> {
    let mut tx = s.infra.pool.begin().await?;
    let event_ids: Vec<uuid::Uuid> = batch.iter().map(|e| e.id).collect();
    let fresh = petrel_db::claim_events(&mut tx, "monitor-predictions", &event_ids).await?;
    if fresh.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut models = Vec::new();
    let mut versions = Vec::new();
    let mut features = Vec::new();
    let mut classes = Vec::new();
    let mut confidences = Vec::new();
    let mut probabilities = Vec::new();
    let mut times = Vec::new();
    for env in batch.iter().filter(|e| fresh.contains(&e.id)) {
        for p in &env.data.predictions {
            ids.push(p.inference_id.as_str());
            models.push(env.data.model_name.as_str());
            versions.push(env.data.model_version);
            // The features as the JSON text they travel as; Postgres parses them into jsonb.
            features.push(p.features.get());
            classes.push(p.class.as_str());
            confidences.push(p.confidence);
            probabilities.push(p.probabilities.get());
            times.push(p.predicted_at);
        }
    }
    sqlx::query(
        "INSERT INTO observations (inference_id, model_name, model_version, features, class, confidence, probabilities, predicted_at) \
         SELECT i, m, v, f::jsonb, c, p, q::jsonb, t FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], \
         $6::real[], $7::text[], $8::timestamptz[]) AS u(i, m, v, f, c, p, q, t) ON CONFLICT (inference_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&models)
    .bind(&versions)
    .bind(&features)
    .bind(&classes)
    .bind(&confidences)
    .bind(&probabilities)
    .bind(&times)
    .execute(&mut *tx)
    .await?;
    // The newest prediction time per version: the watermark that closes windows.
    sqlx::query(
        "INSERT INTO streams (model_name, model_version, newest) \
         SELECT m, v, max(t) FROM UNNEST($1::text[], $2::int[], $3::timestamptz[]) AS u(m, v, t) GROUP BY 1, 2 \
         ORDER BY 1, 2 ON CONFLICT (model_name, model_version) DO UPDATE SET newest = GREATEST(streams.newest, EXCLUDED.newest)",
    )
    .bind(&models)
    .bind(&versions)
    .bind(&times)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

async fn store_labels(s: &AppState, env: &Envelope<LabelsJoined>) -> Result<(), sqlx::Error> {
    let mut tx = s.infra.pool.begin().await?;
    if !petrel_db::claim_event(&mut tx, "monitor-labels", env.id).await? {
        return Ok(());
    }
    let l = &env.data.labels;
    let ids: Vec<&str> = l.iter().map(|x| x.inference_id.as_str()).collect();
    let models: Vec<&str> = l.iter().map(|x| x.model_name.as_str()).collect();
    let versions: Vec<i32> = l.iter().map(|x| x.model_version).collect();
    let labels: Vec<&str> = l.iter().map(|x| x.label.as_str()).collect();
    let correct: Vec<bool> = l.iter().map(|x| x.correct).collect();
    let predicted: Vec<&str> = l.iter().map(|x| x.predicted_class.as_str()).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = l.iter().map(|x| x.predicted_at).collect();
    let labelled: Vec<chrono::DateTime<chrono::Utc>> = l.iter().map(|x| x.labelled_at).collect();
    // Each label joins the window its prediction's time falls in (when that window has
    // closed; windows closing later take the labels waiting for them). A later event for the
    // same inference id (a corrected label) supersedes the earlier one.
    sqlx::query(
        "INSERT INTO outcomes (inference_id, model_name, model_version, label, correct, predicted_class, predicted_at, labelled_at, report_id) \
         SELECT u.i, u.m, u.v, u.l, u.c, u.p, u.t, u.a, \
                (SELECT r.id FROM reports r WHERE r.model_name = u.m AND r.model_version = u.v \
                 AND r.window_start <= u.t AND r.window_end > u.t LIMIT 1) \
         FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::text[], $7::timestamptz[], \
                     $8::timestamptz[]) AS u(i, m, v, l, c, p, t, a) ORDER BY u.i \
         ON CONFLICT (inference_id) DO UPDATE SET label = EXCLUDED.label, correct = EXCLUDED.correct, \
             labelled_at = EXCLUDED.labelled_at, counted = false \
         WHERE outcomes.label <> EXCLUDED.label AND outcomes.labelled_at < EXCLUDED.labelled_at",
    )
    .bind(&ids)
    .bind(&models)
    .bind(&versions)
    .bind(&labels)
    .bind(&correct)
    .bind(&predicted)
    .bind(&times)
    .bind(&labelled)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
