//! Consumers: store what the monitor will window.

use std::time::Duration;

use petrel_events::Envelope;
use petrel_events::consumer::Outcome;
use petrel_events::payloads::{LabelsJoined, PredictionsLogged};

use crate::AppState;

pub async fn on_predictions(s: &AppState, env: Envelope<PredictionsLogged>) -> Outcome {
    retry_on_error("predictions", env.id, store_predictions(s, &env).await)
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
    env: &Envelope<PredictionsLogged>,
) -> Result<(), sqlx::Error> {
    let mut tx = s.infra.pool.begin().await?;
    if !petrel_db::claim_event(&mut tx, "monitor-predictions", env.id).await? {
        return Ok(());
    }
    let d = &env.data;
    let ids: Vec<&str> = d
        .predictions
        .iter()
        .map(|p| p.inference_id.as_str())
        .collect();
    let features: Vec<serde_json::Value> = d
        .predictions
        .iter()
        .map(|p| serde_json::Value::Object(p.features.clone()))
        .collect();
    let classes: Vec<&str> = d.predictions.iter().map(|p| p.class.as_str()).collect();
    let confidences: Vec<f32> = d.predictions.iter().map(|p| p.confidence).collect();
    let times: Vec<_> = d.predictions.iter().map(|p| p.predicted_at).collect();
    sqlx::query(
        "INSERT INTO observations (inference_id, model_name, model_version, features, class, confidence, predicted_at) \
         SELECT i, $1, $2, f, c, p, t FROM UNNEST($3::text[], $4::jsonb[], $5::text[], $6::real[], $7::timestamptz[]) \
         AS u(i, f, c, p, t) ON CONFLICT (inference_id) DO NOTHING",
    )
    .bind(&d.model_name)
    .bind(d.model_version)
    .bind(&ids)
    .bind(&features)
    .bind(&classes)
    .bind(&confidences)
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
    sqlx::query(
        "INSERT INTO outcomes (inference_id, model_name, model_version, label, correct) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::bool[]) \
         ON CONFLICT (inference_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&models)
    .bind(&versions)
    .bind(&labels)
    .bind(&correct)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
