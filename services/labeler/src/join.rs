//! Storing labels and predictions, and joining them.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chrono::{DateTime, Utc};
use petrel_api::labeler::{LabelsRequest, LabelsResponse};
use petrel_events::Envelope;
use petrel_events::consumer::BatchOutcome;
use petrel_events::outbox;
use petrel_events::payloads::{JoinedLabel, LabelsJoined, RawPredictionsLogged};
use petrel_runtime::http::{ApiError, Json};
use sqlx::{PgConnection, Row};

use crate::AppState;

/// Most labels one `labels.joined` event carries. A request may join up to `--max-labels`
/// (10,000 by default) at once; one event for all of them would pass NATS's 1 MiB payload limit
/// and could never be published. At most 256 labels of at most ~3 KiB each stay well below it.
pub const JOIN_CHUNK: usize = 256;

/// Joins run one at a time. A label and its prediction committed concurrently by two
/// transactions would otherwise each miss the other and never be joined.
const JOIN_LOCK: i64 = 0x7065_7472_656c_4a4e; // "petrelJN"

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/labels", post(post_labels))
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        16 << 20,
    )
}

async fn post_labels(
    State(s): State<AppState>,
    Json(req): Json<LabelsRequest>,
) -> Result<Json<LabelsResponse>, ApiError> {
    if req.labels.is_empty() {
        return Err(ApiError::invalid("labels is empty: send at least one"));
    }
    if req.labels.len() > s.max_labels {
        return Err(ApiError::invalid(format!(
            "{} labels in one request; the limit is {}",
            req.labels.len(),
            s.max_labels
        )));
    }
    let mut wanted: HashMap<&str, &str> = HashMap::with_capacity(req.labels.len());
    for (i, l) in req.labels.iter().enumerate() {
        if l.inference_id.is_empty() || l.inference_id.len() > 128 {
            return Err(ApiError::invalid(format!(
                "labels[{i}].inference_id must be 1 to 128 characters"
            )));
        }
        // Postgres TEXT cannot hold NUL; an id is a key, so no control character at all.
        if l.inference_id.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "labels[{i}].inference_id must not contain control characters"
            )));
        }
        if l.label.is_empty() || l.label.len() > 256 {
            return Err(ApiError::invalid(format!(
                "labels[{i}].label must be 1 to 256 characters"
            )));
        }
        if l.label.contains('\0') {
            return Err(ApiError::invalid(format!(
                "labels[{i}].label must not contain NUL characters"
            )));
        }
        if let Some(prev) = wanted.insert(&l.inference_id, &l.label)
            && prev != l.label
        {
            return Err(ApiError::invalid(format!(
                "labels[{i}]: inference id {:?} is given two different labels",
                l.inference_id
            )));
        }
    }
    let ids: Vec<&str> = wanted.keys().copied().collect();
    let mut tx = s.infra.pool.begin().await.map_err(ApiError::internal)?;
    lock(&mut tx).await.map_err(ApiError::internal)?;
    let existing: HashMap<String, String> =
        sqlx::query("SELECT inference_id, label FROM labels WHERE inference_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|r| (r.get("inference_id"), r.get("label")))
            .collect();
    let mut conflicts = Vec::new();
    let mut duplicates = 0;
    let mut new_ids = Vec::new();
    let mut new_labels = Vec::new();
    for (id, label) in &wanted {
        match existing.get(*id) {
            Some(old) if old == label => duplicates += 1,
            Some(old) => conflicts.push(format!("{id:?} is already labelled {old:?}")),
            None => {
                new_ids.push(*id);
                new_labels.push(*label);
            }
        }
    }
    if !conflicts.is_empty() {
        conflicts.sort();
        conflicts.truncate(5);
        return Err(ApiError::conflict(format!(
            "labels cannot be changed once given: {}",
            conflicts.join("; ")
        )));
    }
    sqlx::query(
        "INSERT INTO labels (inference_id, label) SELECT * FROM UNNEST($1::text[], $2::text[])",
    )
    .bind(&new_ids)
    .bind(&new_labels)
    .execute(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    let joined = join_pending(&s, &mut tx, &new_ids)
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    s.infra.relay.poke();
    Ok(Json(LabelsResponse {
        accepted: new_ids.len(),
        joined,
        duplicates,
        overwritten: 0,
    }))
}

async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(JOIN_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Joins the unjoined labels among `ids` that have a prediction, marks them, and enqueues one
/// `labels.joined` event per [`JOIN_CHUNK`] of them (each label's row keeps the id of the event
/// that announced it). Returns how many were joined.
async fn join_pending(
    s: &AppState,
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.inference_id, l.label, l.labelled_at, p.predicted_class, p.model_name, p.model_version, p.predicted_at \
         FROM labels l JOIN predictions p ON p.inference_id = l.inference_id \
         WHERE l.inference_id = ANY($1) AND l.joined_at IS NULL ORDER BY l.inference_id",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let labels: Vec<JoinedLabel> = rows
        .iter()
        .map(|r| {
            let label: String = r.get("label");
            let predicted: String = r.get("predicted_class");
            JoinedLabel {
                inference_id: r.get("inference_id"),
                correct: label == predicted,
                label,
                predicted_class: predicted,
                model_name: r.get("model_name"),
                model_version: r.get("model_version"),
                predicted_at: r.get::<DateTime<Utc>, _>("predicted_at"),
                labelled_at: r.get::<DateTime<Utc>, _>("labelled_at"),
            }
        })
        .collect();
    let count = labels.len();
    for chunk in labels.chunks(JOIN_CHUNK) {
        let joined_ids: Vec<&str> = chunk.iter().map(|l| l.inference_id.as_str()).collect();
        let env = s.infra.bus.envelope(LabelsJoined {
            labels: chunk.to_vec(),
        });
        sqlx::query(
            "UPDATE labels SET joined_at = now(), event_id = $2 WHERE inference_id = ANY($1)",
        )
        .bind(&joined_ids)
        .bind(env.id)
        .execute(&mut *conn)
        .await?;
        outbox::enqueue(&mut *conn, &env).await?;
    }
    Ok(count)
}

/// Consumer handler: remembers the predictions of a whole batch of events and joins the labels
/// that were waiting for them, in one transaction.
pub async fn on_predictions(
    s: &AppState,
    batch: Vec<Envelope<RawPredictionsLogged>>,
) -> BatchOutcome {
    match store_predictions(s, &batch).await {
        Ok(joined) => {
            if joined > 0 {
                s.infra.relay.poke();
                tracing::info!(
                    events = batch.len(),
                    joined,
                    "labels joined to new predictions"
                );
            }
            BatchOutcome::done()
        }
        Err(e) => {
            tracing::warn!(events = batch.len(), error = %e, "cannot store predictions; retrying");
            BatchOutcome::Retry(Duration::from_secs(2))
        }
    }
}

async fn store_predictions(
    s: &AppState,
    batch: &[Envelope<RawPredictionsLogged>],
) -> Result<usize, sqlx::Error> {
    let mut tx = s.infra.pool.begin().await?;
    let event_ids: Vec<uuid::Uuid> = batch.iter().map(|e| e.id).collect();
    let fresh = petrel_db::claim_events(&mut tx, "labeler", &event_ids).await?;
    if fresh.is_empty() {
        return Ok(0);
    }
    lock(&mut tx).await?;
    let mut ids = Vec::new();
    let mut models = Vec::new();
    let mut versions = Vec::new();
    let mut classes = Vec::new();
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    for env in batch.iter().filter(|e| fresh.contains(&e.id)) {
        for p in &env.data.predictions {
            ids.push(p.inference_id.as_str());
            models.push(env.data.model_name.as_str());
            versions.push(env.data.model_version);
            classes.push(p.class.as_str());
            times.push(p.predicted_at);
        }
    }
    sqlx::query(
        "INSERT INTO predictions (inference_id, model_name, model_version, predicted_class, predicted_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::timestamptz[]) \
         ON CONFLICT (inference_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&models)
    .bind(&versions)
    .bind(&classes)
    .bind(&times)
    .execute(&mut *tx)
    .await?;
    let joined = join_pending(s, &mut tx, &ids).await?;
    tx.commit().await?;
    Ok(joined)
}
