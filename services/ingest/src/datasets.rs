//! `POST /v1/datasets` and friends.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use petrel_api::ingest::{
    Checks, Dataset, DatasetStatus, Generator, IngestRequest, IngestResponse, Interval,
    ValidationReport,
};
use petrel_events::outbox;
use petrel_events::payloads::{
    Alert, AlertDataset, AlertKind, AlertStatus, DataReady, Evidence, Severity,
};
use petrel_ml::{DatasetPurpose, Schema, generate_penguins, generate_reviews};
use petrel_runtime::http::{ApiError, Json, Path, Query};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::{AppState, validate};

pub fn router(state: AppState, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/v1/datasets", get(list).post(ingest))
        .route("/v1/datasets/{id}", get(get_one))
        .route("/v1/datasets/{id}/report", get(get_report))
        .merge(crate::schedules::routes())
        .merge(crate::lineage::routes())
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        body_limit,
    )
}

pub fn check_name(name: &str) -> Result<(), ApiError> {
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
        (None, None, Some(generator)) => generate(generator).await,
        (None, Some(path), None) => read_path(state, path).await,
        _ => Err(ApiError::invalid(
            "give exactly one of `csv` (the file's text), `path` or `generate`",
        )),
    }
}

/// Reads a file under the data directory; `path` cannot reach outside it.
pub async fn read_path(state: &AppState, path: &str) -> Result<Bytes, ApiError> {
    let root = tokio::fs::canonicalize(&state.data_dir)
        .await
        .map_err(|_| {
            ApiError::invalid("ingest by path is unavailable: the data directory does not exist")
        })?;
    let full = tokio::fs::canonicalize(root.join(path))
        .await
        .map_err(|_| ApiError::invalid(format!("no file {path:?} in the data directory")))?;
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

/// Runs a seeded generator off the async workers.
pub async fn generate(generator: &Generator) -> Result<Bytes, ApiError> {
    let generator = generator.clone();
    // Generation is CPU work proportional to the rows: keep it off the async workers.
    let csv = tokio::task::spawn_blocking(move || match &generator {
        Generator::Reviews(spec) => spec.validate().and_then(|()| generate_reviews(spec)),
        Generator::Penguins(spec) => spec.validate().and_then(|()| generate_penguins(spec)),
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::invalid(format!("generate: {e}")))?;
    Ok(Bytes::from(csv.into_bytes()))
}

fn dataset_from_row(r: &sqlx::postgres::PgRow) -> Result<Dataset, ApiError> {
    let schema: serde_json::Value = r.get("schema");
    let checks: serde_json::Value = r.get("checks");
    let interval = match (
        r.get::<Option<String>, _>("schedule"),
        r.get::<Option<DateTime<Utc>>, _>("interval_start"),
        r.get::<Option<DateTime<Utc>>, _>("interval_end"),
    ) {
        (Some(schedule), Some(start), Some(end)) => Some(Interval {
            schedule,
            start,
            end,
        }),
        _ => None,
    };
    Ok(Dataset {
        id: r.get("id"),
        name: r.get("name"),
        version: r.get("version"),
        uri: r.get("uri"),
        source_uri: r.get("source_uri"),
        source: r.get("source"),
        status: DatasetStatus::parse(r.get("status")).unwrap_or_default(),
        content_hash: r.get("content_hash"),
        row_count: r.get::<i64, _>("row_count") as u64,
        rejected_rows: r.get::<i64, _>("rejected_rows") as u64,
        schema: serde_json::from_value(schema).map_err(ApiError::internal)?,
        created_at: r.get("created_at"),
        purpose: DatasetPurpose::parse(r.get("purpose")).unwrap_or_default(),
        checks: serde_json::from_value(checks).map_err(ApiError::internal)?,
        interval,
    })
}

fn report_from_row(r: &sqlx::postgres::PgRow) -> ValidationReport {
    // Datasets from before reports kept only their first errors.
    let report: serde_json::Value = r.get("report");
    serde_json::from_value(report).unwrap_or_else(|_| {
        let errors: serde_json::Value = r.get("errors");
        ValidationReport {
            errors: serde_json::from_value(errors).unwrap_or_default(),
            ..ValidationReport::default()
        }
    })
}

const COLUMNS: &str = "id, name, version, uri, source_uri, source, status, content_hash, row_count, \
    rejected_rows, schema, checks, errors, report, created_at, purpose, schedule, interval_start, \
    interval_end";

/// One file to ingest, wherever it came from.
#[derive(Debug)]
pub struct Incoming {
    pub name: String,
    pub schema: Schema,
    pub checks: Checks,
    pub purpose: DatasetPurpose,
    /// `upload`, `path:<path>`, `generate:<generator>`, `schedule:<name>`.
    pub source: String,
    pub bytes: Bytes,
    pub interval: Option<Interval>,
}

/// What ingesting a file did.
#[derive(Debug)]
pub struct Ingested {
    pub dataset: Dataset,
    /// False when the same content under the same schema and checks was already ingested.
    pub created: bool,
    pub report: ValidationReport,
}

/// Validates, stores and records one file, and announces it: `data.ready` when it passed,
/// `alerts.data_quality` when it was rejected. The dataset row and its event commit together.
/// The same bytes with the same schema and checks are the same dataset: a replay answers it
/// again and announces nothing.
pub async fn ingest_file(s: &AppState, inc: Incoming) -> Result<Ingested, ApiError> {
    let declared = serde_json::to_vec(&(&inc.schema, &inc.checks)).map_err(ApiError::internal)?;
    let bytes = inc.bytes.clone();
    // Hashing is CPU work proportional to the file: keep it off the async workers.
    let (hash, schema_hash) = tokio::task::spawn_blocking(move || {
        (
            petrel_store::content_hash(&bytes),
            petrel_store::content_hash(&declared),
        )
    })
    .await
    .map_err(ApiError::internal)?;

    let existing = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE name = $1 AND content_hash = $2 AND schema_hash = $3"
    ))
    .bind(&inc.name)
    .bind(&hash)
    .bind(&schema_hash)
    .fetch_optional(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    if let Some(row) = existing {
        return Ok(Ingested {
            dataset: dataset_from_row(&row)?,
            created: false,
            report: report_from_row(&row),
        });
    }

    let (schema, checks, input) = (inc.schema.clone(), inc.checks.clone(), inc.bytes.clone());
    let default_max = s.max_rejected_fraction;
    let validated = tokio::task::spawn_blocking(move || {
        validate::validate(&input, &schema, &checks, default_max)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let status = if validated.passed() {
        DatasetStatus::Accepted
    } else {
        DatasetStatus::Rejected
    };

    let hex = hash.trim_start_matches("sha256:");
    let source_uri = s
        .store
        .put(&format!("datasets/{}/{hex}.csv", inc.name), inc.bytes)
        .await
        .map_err(ApiError::internal)?;
    let uri = match validated.accepted_csv {
        Some(accepted) => {
            let rules = &schema_hash.trim_start_matches("sha256:")[..16];
            s.store
                .put(
                    &format!("datasets/{}/{hex}.{rules}.accepted.csv", inc.name),
                    Bytes::from(accepted),
                )
                .await
                .map_err(ApiError::internal)?
        }
        None => source_uri.clone(),
    };
    let report = validated.report;

    let mut tx = s.infra.pool.begin().await.map_err(ApiError::internal)?;
    // Serialise versioning per name; the unique constraints guard the rest.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('petrel.ingest.' || $1))")
        .bind(&inc.name)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    let id = Uuid::now_v7();
    let interval = inc.interval.as_ref();
    let inserted = sqlx::query(&format!(
        "INSERT INTO datasets (id, name, version, uri, source_uri, source, status, content_hash, \
         schema_hash, row_count, rejected_rows, schema, checks, errors, report, purpose, schedule, \
         interval_start, interval_end) \
         SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16, $17, $18 FROM datasets WHERE name = $2 \
         ON CONFLICT (name, content_hash, schema_hash) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&inc.name)
    .bind(&uri)
    .bind(&source_uri)
    .bind(&inc.source)
    .bind(status.as_str())
    .bind(&hash)
    .bind(&schema_hash)
    .bind(report.accepted as i64)
    .bind(report.rejected as i64)
    .bind(serde_json::to_value(&inc.schema).map_err(ApiError::internal)?)
    .bind(serde_json::to_value(&inc.checks).map_err(ApiError::internal)?)
    .bind(serde_json::to_value(&report.errors).map_err(ApiError::internal)?)
    .bind(serde_json::to_value(&report).map_err(ApiError::internal)?)
    .bind(inc.purpose.as_str())
    .bind(interval.map(|i| i.schedule.as_str()))
    .bind(interval.map(|i| i.start))
    .bind(interval.map(|i| i.end))
    .fetch_optional(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    let Some(row) = inserted else {
        // A concurrent request ingested the same bytes first.
        tx.rollback().await.ok();
        return Err(ApiError::conflict_retry(
            "the same file is being ingested concurrently; retry",
        ));
    };
    let dataset = dataset_from_row(&row)?;
    match status {
        DatasetStatus::Accepted => {
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
        }
        DatasetStatus::Rejected => {
            let alert = rejection_alert(&dataset, &report, s.max_rejected_fraction);
            outbox::enqueue(&mut tx, &s.infra.bus.envelope(alert))
                .await
                .map_err(ApiError::internal)?;
        }
    }
    tx.commit().await.map_err(ApiError::internal)?;
    s.infra.relay.poke();
    match status {
        DatasetStatus::Accepted => tracing::info!(
            dataset.id = %dataset.id,
            dataset.name = %dataset.name,
            dataset.version = dataset.version,
            dataset.source = %dataset.source,
            rows = report.accepted,
            rejected = report.rejected,
            dataset.purpose = dataset.purpose.as_str(),
            "dataset ingested"
        ),
        DatasetStatus::Rejected => tracing::warn!(
            dataset.id = %dataset.id,
            dataset.name = %dataset.name,
            dataset.version = dataset.version,
            dataset.source = %dataset.source,
            problems = %report.problems.join("; "),
            "dataset rejected"
        ),
    }
    Ok(Ingested {
        dataset,
        created: true,
        report,
    })
}

/// The `alerts.data_quality` a rejected file raises.
fn rejection_alert(dataset: &Dataset, report: &ValidationReport, default_max: f64) -> Alert {
    let max = dataset.checks.max_rejected_share.unwrap_or(default_max);
    let share = if report.rows == 0 {
        1.0
    } else {
        report.rejected as f64 / report.rows as f64
    };
    Alert {
        kind: AlertKind::DataQuality,
        status: AlertStatus::Opened,
        episode_id: Some(dataset.id),
        severity: Severity::Warning,
        model_name: String::new(),
        model_version: 0,
        key: None,
        report_id: dataset.id,
        window_start: None,
        window_end: None,
        message: format!(
            "dataset {} version {} from {} was rejected: {}",
            dataset.name,
            dataset.version,
            dataset.source,
            report.problems.join("; ")
        ),
        observed: share,
        threshold: max,
        evidence: report
            .rejected_by_column
            .iter()
            .map(|(column, n)| Evidence {
                column: Some(column.clone()),
                metric: "rejected_rows".to_owned(),
                value: *n as f64,
                threshold: max * report.rows as f64,
            })
            .collect(),
        details: json!({ "problems": report.problems, "source": dataset.source }),
        dataset: Some(AlertDataset {
            id: dataset.id,
            name: dataset.name.clone(),
            version: dataset.version,
            content_hash: dataset.content_hash.clone(),
        }),
    }
}

fn source_of(req: &IngestRequest) -> String {
    match (&req.path, &req.generate) {
        (Some(path), _) => format!("path:{path}"),
        (_, Some(Generator::Reviews(_))) => "generate:reviews".to_owned(),
        (_, Some(Generator::Penguins(_))) => "generate:penguins".to_owned(),
        _ => "upload".to_owned(),
    }
}

async fn ingest(
    State(s): State<AppState>,
    Json(req): Json<IngestRequest>,
) -> Result<Response, ApiError> {
    check_name(&req.name)?;
    req.schema
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    validate::check_rules(&req.checks, &req.schema).map_err(ApiError::invalid)?;
    let bytes = read_source(&s, &req).await?;
    let source = source_of(&req);
    let done = ingest_file(
        &s,
        Incoming {
            name: req.name,
            schema: req.schema,
            checks: req.checks,
            purpose: req.purpose,
            source,
            bytes,
            interval: None,
        },
    )
    .await?;
    Ok(respond(done))
}

/// 201 for a new accepted dataset, 200 for a replay; 422 (code `rejected`) for a file that
/// failed validation, with the stored dataset and its report beside the error.
fn respond(done: Ingested) -> Response {
    let errors = done.report.errors.clone();
    match done.dataset.status {
        DatasetStatus::Accepted => {
            let status = if done.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (
                status,
                Json(IngestResponse {
                    dataset: done.dataset,
                    created: done.created,
                    errors,
                    report: done.report,
                }),
            )
                .into_response()
        }
        DatasetStatus::Rejected => {
            let message = format!(
                "the file was rejected (stored as dataset {} for inspection): {}",
                done.dataset.id,
                done.report.problems.join("; ")
            );
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": { "code": "rejected", "message": message },
                    "dataset": done.dataset,
                    "created": done.created,
                    "errors": errors,
                    "report": done.report,
                })),
            )
                .into_response()
        }
    }
}

/// `GET /v1/datasets` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    name: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(v) => Some(
            DatasetStatus::parse(v)
                .ok_or_else(|| ApiError::invalid("status must be accepted or rejected"))?,
        ),
    };
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM datasets WHERE ($1::text IS NULL OR name = $1) \
         AND ($2::text IS NULL OR status = $2) ORDER BY created_at DESC, version DESC LIMIT $3"
    ))
    .bind(q.name)
    .bind(status.map(DatasetStatus::as_str))
    .bind(limit)
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let datasets = rows
        .iter()
        .map(dataset_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "datasets": datasets })))
}

/// A dataset and its report, by id.
pub async fn find(s: &AppState, id: Uuid) -> Result<Option<(Dataset, ValidationReport)>, ApiError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM datasets WHERE id = $1"))
        .bind(id)
        .fetch_optional(&s.infra.pool)
        .await
        .map_err(ApiError::internal)?;
    row.map(|r| Ok((dataset_from_row(&r)?, report_from_row(&r))))
        .transpose()
}

async fn get_one(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Dataset>, ApiError> {
    Ok(Json(found(&s, id).await?.0))
}

async fn get_report(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<ValidationReport>, ApiError> {
    Ok(Json(found(&s, id).await?.1))
}

/// [`find`], with a missing dataset as a 404.
async fn found(s: &AppState, id: Uuid) -> Result<(Dataset, ValidationReport), ApiError> {
    find(s, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("dataset {id} does not exist")))
}
