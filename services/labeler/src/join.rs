//! Storing labels and predictions, and joining them.
//!
//! Each inference id has one row in `joins`, which both sides upsert. The row lock is the only
//! synchronisation: when a label and its prediction are committed concurrently, whichever upsert
//! comes second waits for the first to commit and then (in READ COMMITTED, `ON CONFLICT DO
//! UPDATE` acts on the latest committed row) sees both sides and announces the join. The first
//! saw only its own side and announced nothing, so every join is announced exactly once. Both
//! sides lock their rows in the same order (ids sorted bytewise), so concurrent batches never
//! deadlock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use petrel_api::labeler::{JoinedRow, JoinedRows, LabelStats, LabelsResponse};
use petrel_events::Envelope;
use petrel_events::consumer::BatchOutcome;
use petrel_events::outbox;
use petrel_events::payloads::{
    JoinedLabel, LabelsJoined, RawLoggedPrediction, RawPredictionsLogged,
};
use petrel_runtime::http::{ApiError, Json, Query};
use serde::Deserialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::AppState;
use crate::body::{self, Batch, Format};

/// Most labels one `labels.joined` event carries. A request may join up to `--max-labels`
/// (100,000 by default) at once; one event for all of them would pass NATS's 1 MiB payload
/// limit and could never be published. At most 256 labels of at most ~3 KiB each stay well
/// below it.
pub const JOIN_CHUNK: usize = 256;

/// Largest request body: 100,000 labels with ids and labels of typical length (tens of bytes)
/// take a few MiB as JSON and less as CSV; 32 MiB leaves room for long ids without letting one
/// request hold unbounded memory.
pub const BODY_LIMIT: usize = 32 << 20;

/// The labels' side of a row: inserts a new row, or fills in the label of a row that has only
/// the prediction, or (with `$3`, overwrite) replaces a different label. Rows it leaves alone
/// (the same label already there, or a different one without overwrite) are still locked, but
/// not returned.
///
/// A row that now has both sides is marked announced in the same statement (no second pass
/// over the rows): the request's sorted ids are cut into chunks of [`JOIN_CHUNK`], `$4` holds
/// the first id of each chunk and `$5` the id of the event that announces the chunk's joins,
/// and `width_bucket` finds a row's chunk by binary search. `COLLATE "C"` compares bytewise, as
/// Rust sorted the ids.
const UPSERT_LABELS: &str = "\
    INSERT INTO joins AS j (inference_id, label, labelled_at) \
    SELECT id, label, clock_timestamp() FROM UNNEST($1::text[], $2::text[]) AS u(id, label) \
    ON CONFLICT (inference_id) DO UPDATE SET label = EXCLUDED.label, \
        labelled_at = clock_timestamp(), previous_label = j.label, \
        event_id = CASE WHEN j.predicted_class IS NOT NULL THEN \
            ($5::uuid[])[width_bucket(EXCLUDED.inference_id COLLATE \"C\", $4::text[])] END, \
        announced_at = CASE WHEN j.predicted_class IS NOT NULL THEN now() END \
    WHERE j.label IS NULL OR ($3::bool AND j.label <> EXCLUDED.label) \
    RETURNING inference_id, label, labelled_at, previous_label, event_id, \
        model_name, model_version, predicted_class, predicted_at";

/// The predictions' side: inserts a new row or fills in the prediction of a row that has only
/// the label. The first prediction of an id wins; a later one (a replay under a new event id)
/// changes nothing. Returns only the rows that are now joined.
const UPSERT_PREDICTIONS: &str = "\
    WITH up AS ( \
        INSERT INTO joins AS j (inference_id, model_name, model_version, predicted_class, \
            predicted_at, received_at, features) \
        SELECT id, m, v, c, t, now(), f::jsonb \
        FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::timestamptz[], \
            $6::text[]) AS u(id, m, v, c, t, f) \
        ON CONFLICT (inference_id) DO UPDATE SET model_name = EXCLUDED.model_name, \
            model_version = EXCLUDED.model_version, predicted_class = EXCLUDED.predicted_class, \
            predicted_at = EXCLUDED.predicted_at, received_at = EXCLUDED.received_at, \
            features = EXCLUDED.features \
        WHERE j.predicted_class IS NULL \
        RETURNING inference_id, label, labelled_at, model_name, model_version, \
            predicted_class, predicted_at) \
    SELECT * FROM up WHERE label IS NOT NULL";

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/labels", post(post_labels))
        .route("/v1/labels/stats", get(get_stats))
        .route("/v1/labels/joined", get(get_joined))
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        BODY_LIMIT,
    )
}

#[derive(Debug, Default, Deserialize)]
struct LabelsQuery {
    /// The same as the JSON body's `overwrite`, for CSV bodies (which have no room for it).
    #[serde(default)]
    overwrite: bool,
}

async fn post_labels(
    State(s): State<AppState>,
    Query(q): Query<LabelsQuery>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<LabelsResponse>, ApiError> {
    let format = Format::of(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    let raw = raw.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body is larger than {} MiB; split the labels into several requests",
                    BODY_LIMIT >> 20
                ),
            )
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", r.body_text()))
        }
    })?;
    // Reading 100,000 labels takes long enough to be kept off the async workers.
    let max = s.max_labels;
    let (batch, overwrite) = tokio::task::spawn_blocking(move || body::parse(format, &raw, max))
        .await
        .map_err(ApiError::internal)??;
    let response = store_labels(&s, &batch, overwrite || q.overwrite).await?;
    for (result, n) in [
        ("accepted", response.accepted),
        ("joined", response.joined),
        ("duplicate", response.duplicates),
        ("overwritten", response.overwritten),
    ] {
        metrics::counter!("petrel_labels_total", "result" => result).increment(n as u64);
    }
    if response.joined > 0 {
        s.infra.relay.poke();
    }
    Ok(Json(response))
}

/// Help texts of the labeler's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "petrel_labels_total",
        "Labels received over HTTP, by result: accepted (stored), joined (to a logged prediction \
         at once), duplicate (already stored with that value) or overwritten"
    );
}

/// Stores a request's labels in one transaction (all of them, or none on a conflict) and
/// announces those that found their prediction.
async fn store_labels(
    s: &AppState,
    batch: &Batch,
    overwrite: bool,
) -> Result<LabelsResponse, ApiError> {
    let firsts: Vec<&str> = batch
        .ids
        .iter()
        .step_by(JOIN_CHUNK)
        .map(String::as_str)
        .collect();
    let events: Vec<Uuid> = firsts.iter().map(|_| Uuid::now_v7()).collect();
    let mut tx = s.infra.pool.begin().await.map_err(ApiError::internal)?;
    let stored = sqlx::query(UPSERT_LABELS)
        .bind(&batch.ids)
        .bind(&batch.labels)
        .bind(overwrite)
        .bind(&firsts)
        .bind(&events)
        .fetch_all(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    let accepted = stored.len();
    let mut overwritten = 0;
    let mut joined: BTreeMap<Uuid, Vec<JoinedLabel>> = BTreeMap::new();
    // Joins the upsert did not mark (had it ever found no chunk for an id): announced the slow
    // way, with a second pass over their rows, rather than lost.
    let mut unmarked = Vec::new();
    for row in &stored {
        if row.get::<Option<String>, _>("previous_label").is_some() {
            overwritten += 1;
        }
        if let Some(label) = joined_label(row) {
            match row.get::<Option<Uuid>, _>("event_id") {
                Some(event) => joined.entry(event).or_default().push(label),
                None => unmarked.push(label),
            }
        }
    }
    let mut duplicates = 0;
    if accepted < batch.ids.len() {
        // The rows the upsert left alone already have a label. The upsert locked them, so this
        // later statement sees their current label, which no one can change before we commit.
        let taken: HashSet<String> = stored.iter().map(|r| r.get("inference_id")).collect();
        let mut rest: Vec<(&String, &String)> = batch
            .ids
            .iter()
            .zip(&batch.labels)
            .filter(|(id, _)| !taken.contains(*id))
            .collect();
        let ids: Vec<&String> = rest.iter().map(|(id, _)| *id).collect();
        let existing: HashMap<String, String> =
            sqlx::query_as("SELECT inference_id, label FROM joins WHERE inference_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await
                .map_err(ApiError::internal)?
                .into_iter()
                .collect();
        rest.retain(|(id, wanted)| {
            let same = existing.get(*id) == Some(*wanted);
            duplicates += usize::from(same);
            !same
        });
        if !rest.is_empty() {
            tx.rollback().await.map_err(ApiError::internal)?;
            return Err(conflict(&rest, &existing));
        }
    }
    // A chunk holds at most JOIN_CHUNK ids; should one ever be more (ids compared differently
    // from how they were sorted), its joins are announced the slow way too.
    joined.retain(|_, labels| {
        let fits = labels.len() <= JOIN_CHUNK;
        if !fits {
            unmarked.append(labels);
        }
        fits
    });
    let mut announced = announce(s, &mut tx, unmarked)
        .await
        .map_err(ApiError::internal)?;
    for (event, mut labels) in joined {
        labels.sort_by(|a, b| a.inference_id.cmp(&b.inference_id));
        announced += labels.len();
        enqueue(s, &mut tx, event, labels)
            .await
            .map_err(ApiError::internal)?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    Ok(LabelsResponse {
        accepted,
        joined: announced,
        duplicates,
        overwritten,
    })
}

/// The `409` for labels that differ from the stored ones (`rest`, sorted by id).
fn conflict(rest: &[(&String, &String)], existing: &HashMap<String, String>) -> ApiError {
    let shown: Vec<String> = rest
        .iter()
        .take(5)
        .map(|(id, _)| match existing.get(*id) {
            Some(old) => format!("{id:?} is already labelled {old:?}"),
            // Unreachable: the upsert would have stored a label for an id without one.
            None => format!("{id:?} has no label"),
        })
        .collect();
    let more = match rest.len() {
        n if n > 5 => format!(" and {} more", n - 5),
        _ => String::new(),
    };
    ApiError::conflict(format!(
        "{} label(s) differ from the stored ones, so nothing was stored: {}{more}; \
         send \"overwrite\": true (or ?overwrite=true) to replace them",
        rest.len(),
        shown.join("; ")
    ))
}

/// The join in `row`, when it holds both sides.
fn joined_label(row: &PgRow) -> Option<JoinedLabel> {
    let label: String = row.get::<Option<String>, _>("label")?;
    let predicted: String = row.get::<Option<String>, _>("predicted_class")?;
    Some(JoinedLabel {
        inference_id: row.get("inference_id"),
        correct: label == predicted,
        label,
        predicted_class: predicted,
        model_name: row.get::<Option<String>, _>("model_name")?,
        model_version: row.get::<Option<i32>, _>("model_version")?,
        predicted_at: row.get::<Option<DateTime<Utc>>, _>("predicted_at")?,
        labelled_at: row.get::<Option<DateTime<Utc>>, _>("labelled_at")?,
    })
}

/// Enqueues the `labels.joined` event `id` announcing `labels` (at most [`JOIN_CHUNK`]).
async fn enqueue(
    s: &AppState,
    conn: &mut PgConnection,
    id: Uuid,
    labels: Vec<JoinedLabel>,
) -> Result<(), sqlx::Error> {
    let mut env = s.infra.bus.envelope(LabelsJoined { labels });
    env.id = id;
    outbox::enqueue(conn, &env).await
}

/// Enqueues one `labels.joined` event per [`JOIN_CHUNK`] of `joined` and records on each row
/// the event that announced it. The caller holds the rows' locks (its upsert took them), so no
/// one else announces them. Returns how many were announced.
async fn announce(
    s: &AppState,
    conn: &mut PgConnection,
    mut joined: Vec<JoinedLabel>,
) -> Result<usize, sqlx::Error> {
    let count = joined.len();
    if count == 0 {
        return Ok(0);
    }
    joined.sort_by(|a, b| a.inference_id.cmp(&b.inference_id));
    let mut ids = Vec::with_capacity(count);
    let mut events = Vec::with_capacity(count);
    let mut rest = joined.into_iter().peekable();
    while rest.peek().is_some() {
        let labels: Vec<JoinedLabel> = rest.by_ref().take(JOIN_CHUNK).collect();
        let event = Uuid::now_v7();
        for l in &labels {
            ids.push(l.inference_id.clone());
            events.push(event);
        }
        enqueue(s, &mut *conn, event, labels).await?;
    }
    sqlx::query(
        "UPDATE joins AS j SET event_id = u.event_id, announced_at = now() \
         FROM UNNEST($1::text[], $2::uuid[]) AS u(inference_id, event_id) \
         WHERE j.inference_id = u.inference_id",
    )
    .bind(&ids)
    .bind(&events)
    .execute(conn)
    .await?;
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
    let mut event_ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
    // Sorted, so two replicas handed overlapping batches (a redelivery) claim in one order.
    event_ids.sort_unstable();
    let fresh = petrel_db::claim_events(&mut tx, "labeler", &event_ids).await?;
    if fresh.is_empty() {
        return Ok(0);
    }
    // (event, prediction) pairs of the fresh events.
    let mut rows: Vec<(&RawPredictionsLogged, &RawLoggedPrediction)> = batch
        .iter()
        .filter(|e| fresh.contains(&e.id))
        .flat_map(|env| env.data.predictions.iter().map(move |p| (&env.data, p)))
        .collect();
    // One row per id (an upsert may not touch a row twice), the first logged winning as it
    // would across batches; sorted, so rows are locked in the same order as by label requests.
    rows.sort_by(|a, b| a.1.inference_id.cmp(&b.1.inference_id));
    rows.dedup_by(|later, first| later.1.inference_id == first.1.inference_id);
    let ids: Vec<&str> = rows.iter().map(|r| r.1.inference_id.as_str()).collect();
    let models: Vec<&str> = rows.iter().map(|r| r.0.model_name.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.0.model_version).collect();
    let classes: Vec<&str> = rows.iter().map(|r| r.1.class.as_str()).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.1.predicted_at).collect();
    let features: Vec<&str> = rows.iter().map(|r| r.1.features.get()).collect();
    let completed = sqlx::query(UPSERT_PREDICTIONS)
        .bind(&ids)
        .bind(&models)
        .bind(&versions)
        .bind(&classes)
        .bind(&times)
        .bind(&features)
        .fetch_all(&mut *tx)
        .await?;
    let joined = completed.iter().filter_map(joined_label).collect();
    let joined = announce(s, &mut tx, joined).await?;
    tx.commit().await?;
    Ok(joined)
}

#[derive(Deserialize)]
struct JoinedQuery {
    model: String,
    since: Option<DateTime<Utc>>,
    #[serde(default = "default_joined_limit")]
    limit: i64,
}

fn default_joined_limit() -> i64 {
    1000
}

/// Most rows one `GET /v1/labels/joined` answers with.
pub const MAX_JOINED_ROWS: i64 = 100_000;

/// A model's labelled predictions with their features, newest label first: the training data
/// a retraining takes.
async fn get_joined(
    State(s): State<AppState>,
    Query(q): Query<JoinedQuery>,
) -> Result<Json<JoinedRows>, ApiError> {
    if !(1..=MAX_JOINED_ROWS).contains(&q.limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_JOINED_ROWS}"
        )));
    }
    if q.model.is_empty() || q.model.len() > 256 {
        return Err(ApiError::bad_request("model must be 1 to 256 characters"));
    }
    let rows = sqlx::query(
        "SELECT inference_id, model_version, features::text AS features, label, predicted_class, \
         predicted_at, labelled_at FROM joins \
         WHERE model_name = $1 AND label IS NOT NULL AND predicted_class IS NOT NULL \
         AND features IS NOT NULL AND ($2::timestamptz IS NULL OR labelled_at >= $2) \
         ORDER BY labelled_at DESC, inference_id LIMIT $3",
    )
    .bind(&q.model)
    .bind(q.since)
    .bind(q.limit)
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let rows = rows
        .iter()
        .map(|r| -> Result<JoinedRow, ApiError> {
            let text: String = r.get("features");
            Ok(JoinedRow {
                inference_id: r.get("inference_id"),
                model_version: r.get("model_version"),
                features: serde_json::from_str(&text).map_err(ApiError::internal)?,
                label: r.get("label"),
                predicted_class: r.get("predicted_class"),
                predicted_at: r.get("predicted_at"),
                labelled_at: r.get("labelled_at"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(JoinedRows { rows }))
}

async fn get_stats(State(s): State<AppState>) -> Result<Json<LabelStats>, ApiError> {
    crate::stats::stats(&s.infra.pool, s.unknown_after)
        .await
        .map(Json)
        .map_err(ApiError::internal)
}
