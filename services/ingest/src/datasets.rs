//! `POST /v1/datasets` and friends.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use petrel_api::ingest::{Dataset, Generator, IngestRequest, IngestResponse};
use petrel_events::outbox;
use petrel_events::payloads::DataReady;
use petrel_ml::{DatasetPurpose, MlError, generate_reviews, parse_csv};
use petrel_runtime::http::{ApiError, Json, Path};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;

/// Rejected rows echoed back to the uploader and kept with the dataset.
const MAX_REPORTED_ERRORS: usize = 100;

pub fn router(state: AppState, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/v1/datasets", get(list).post(ingest))
        .route("/v1/datasets/{id}", get(get_one))
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        body_limit,
    )
}

fn check_name(name: &str) -> Result<(), ApiError> {
    // The name is a path segment of the artifact key, where "." and ".." are not allowed.
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name must be 1 to 128 letters, digits, '-', '_' or '.', and not '.' or '..'",
        ))
    }
}

/// Reads the CSV from the request body or from a file under the data directory, or generates
/// it.
async fn read_source(state: &AppState, req: &IngestRequest) -> Result<Bytes, ApiError> {
    match (&req.csv, &req.path, &req.generate) {
        (Some(csv), None, None) => Ok(Bytes::from(csv.clone().into_bytes())),
        (None, None, Some(Generator::Reviews(spec))) => {
            spec.validate()
                .map_err(|e| ApiError::invalid(format!("generate: {e}")))?;
            let spec = spec.clone();
            // Generation is CPU work proportional to the rows: keep it off the async workers.
            let csv = tokio::task::spawn_blocking(move || generate_reviews(&spec))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            Ok(Bytes::from(csv.into_bytes()))
        }
        (None, Some(path), None) => {
            let root = tokio::fs::canonicalize(&state.data_dir)
                .await
                .map_err(|_| {
                    ApiError::invalid(
                        "ingest by path is unavailable: the data directory does not exist",
                    )
                })?;
            let full = tokio::fs::canonicalize(root.join(path))
                .await
                .map_err(|_| {
                    ApiError::invalid(format!("no file {path:?} in the data directory"))
                })?;
            if !full.starts_with(&root) {
                return Err(ApiError::invalid(
                    "path must stay inside the data directory",
                ));
            }
            let bytes = tokio::fs::read(&full)
                .await
                .map_err(|_| ApiError::invalid(format!("cannot read {path:?}")))?;
            Ok(Bytes::from(bytes))
        }
        _ => Err(ApiError::invalid(
            "give exactly one of `csv` (the file's text), `path` or `generate`",
        )),
    }
}

fn dataset_from_row(r: &sqlx::postgres::PgRow) -> Result<Dataset, ApiError> {
    let schema: serde_json::Value = r.get("schema");
    Ok(Dataset {
        id: r.get("id"),
        name: r.get("name"),
        version: r.get("version"),
        uri: r.get("uri"),
        content_hash: r.get("content_hash"),
        row_count: r.get::<i64, _>("row_count") as u64,
        rejected_rows: r.get::<i64, _>("rejected_rows") as u64,
        schema: serde_json::from_value(schema).map_err(ApiError::internal)?,
        created_at: r.get("created_at"),
        purpose: DatasetPurpose::parse(r.get("purpose")).unwrap_or_default(),
    })
}

const COLUMNS: &str = "id, name, version, uri, content_hash, row_count, rejected_rows, schema, errors, created_at, purpose";

async fn ingest(
    State(s): State<AppState>,
    Json(req): Json<IngestRequest>,
) -> Result<impl IntoResponse, ApiError> {
    check_name(&req.name)?;
    req.schema
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let bytes = read_source(&s, &req).await?;
    let hash = petrel_store::content_hash(&bytes);

    let existing = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE name = $1 AND content_hash = $2"
    ))
    .bind(&req.name)
    .bind(&hash)
    .fetch_optional(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    if let Some(row) = existing {
        let errors: serde_json::Value = row.get("errors");
        let response = IngestResponse {
            dataset: dataset_from_row(&row)?,
            created: false,
            errors: serde_json::from_value(errors).unwrap_or_default(),
        };
        return Ok((StatusCode::OK, Json(response)));
    }

    // Validation is CPU work proportional to the file: keep it off the async workers.
    let schema = req.schema.clone();
    let parse_input = bytes.clone();
    let report = tokio::task::spawn_blocking(move || parse_csv(&parse_input, &schema))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            MlError::Schema(_) | MlError::Csv(_) => ApiError::invalid(e.to_string()),
            other => ApiError::internal(other),
        })?;
    let rejected = report.rejected_lines() as u64;
    let accepted = report.table.len() as u64;
    let total = accepted + rejected;
    let mut errors = report.errors;
    errors.truncate(MAX_REPORTED_ERRORS);
    if accepted == 0 {
        return Err(ApiError::invalid(format!(
            "no valid rows (of {total}); first problems: {}",
            summarize(&errors)
        )));
    }
    if rejected as f64 > s.max_rejected_fraction * total as f64 {
        return Err(ApiError::invalid(format!(
            "{rejected} of {total} rows are invalid, more than the allowed {:.0}%; first problems: {}",
            s.max_rejected_fraction * 100.0,
            summarize(&errors)
        )));
    }

    let key = format!(
        "datasets/{}/{}.csv",
        req.name,
        hash.trim_start_matches("sha256:")
    );
    let uri = s.store.put(&key, bytes).await.map_err(ApiError::internal)?;

    let mut tx = s.infra.pool.begin().await.map_err(ApiError::internal)?;
    // Serialise versioning per name; the unique constraints guard the rest.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('petrel.ingest.' || $1))")
        .bind(&req.name)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(&format!(
        "INSERT INTO datasets (id, name, version, uri, content_hash, row_count, rejected_rows, schema, errors, purpose) \
         SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5, $6, $7, $8, $9 FROM datasets WHERE name = $2 \
         ON CONFLICT (name, content_hash) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&req.name)
    .bind(&uri)
    .bind(&hash)
    .bind(accepted as i64)
    .bind(rejected as i64)
    .bind(serde_json::to_value(&req.schema).map_err(ApiError::internal)?)
    .bind(serde_json::to_value(&errors).map_err(ApiError::internal)?)
    .bind(req.purpose.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    let Some(row) = inserted else {
        // A concurrent request ingested the same bytes first.
        tx.rollback().await.ok();
        return Err(ApiError::conflict(
            "the same file is being ingested concurrently; retry",
        ));
    };
    let dataset = dataset_from_row(&row)?;
    let event = DataReady {
        dataset_id: dataset.id,
        name: dataset.name.clone(),
        version: dataset.version,
        uri: dataset.uri.clone(),
        content_hash: dataset.content_hash.clone(),
        row_count: dataset.row_count,
        rejected_rows: dataset.rejected_rows,
        schema: dataset.schema.clone(),
        purpose: dataset.purpose,
    };
    outbox::enqueue(&mut tx, &s.infra.bus.envelope(event))
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    s.infra.relay.poke();
    tracing::info!(
        dataset.id = %dataset.id,
        dataset.name = %dataset.name,
        dataset.version = dataset.version,
        rows = accepted,
        rejected,
        dataset.purpose = dataset.purpose.as_str(),
        "dataset ingested"
    );
    Ok((
        StatusCode::CREATED,
        Json(IngestResponse {
            dataset,
            created: true,
            errors,
        }),
    ))
}

fn summarize(errors: &[petrel_ml::RowError]) -> String {
    errors
        .iter()
        .take(3)
        .map(|e| format!("line {}: {}", e.line, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn list(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets ORDER BY created_at DESC LIMIT 200"
    ))
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let datasets = rows
        .iter()
        .map(dataset_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "datasets": datasets })))
}

async fn get_one(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Dataset>, ApiError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM datasets WHERE id = $1"))
        .bind(id)
        .fetch_optional(&s.infra.pool)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("dataset {id} does not exist")))?;
    Ok(Json(dataset_from_row(&row)?))
}
