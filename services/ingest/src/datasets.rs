//! `POST /v1/datasets` and friends.

use axum::Router;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use petrel_api::ingest::{
    Checks, Dataset, DatasetStatus, Generator, IngestRequest, IngestResponse, Interval, UploadSpec,
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
use std::io::Write as _;

use tempfile::TempPath;
use uuid::Uuid;

use crate::source::{self, Format, SourceFile, SpoolError};
use crate::{AppState, validate};

pub fn router(state: AppState, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/v1/datasets", get(list).post(ingest))
        .route(
            "/v1/datasets/upload",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
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

/// Where a file comes from: the request's own text, a file under the data directory, an
/// object URI, or a generator.
#[derive(Debug)]
pub enum Origin {
    Inline(String),
    Path(String),
    Uri(String),
    Generate(Generator),
}

impl Origin {
    /// The one source an [`IngestRequest`] names.
    fn of(req: &IngestRequest) -> Result<Self, ApiError> {
        match (&req.csv, &req.path, &req.uri, &req.generate) {
            (Some(csv), None, None, None) => Ok(Self::Inline(csv.clone())),
            (None, Some(path), None, None) => Ok(Self::Path(path.clone())),
            (None, None, Some(uri), None) => Ok(Self::Uri(uri.clone())),
            (None, None, None, Some(generator)) => Ok(Self::Generate(generator.clone())),
            _ => Err(ApiError::invalid(
                "give exactly one of `csv` (the file's text), `path`, `uri` or `generate`, or \
                 stream the file to POST /v1/datasets/upload",
            )),
        }
    }

    /// How the dataset records where it came from.
    pub fn label(&self) -> String {
        match self {
            Self::Inline(_) => "upload".to_owned(),
            Self::Path(path) => format!("path:{path}"),
            Self::Uri(uri) => format!("uri:{uri}"),
            Self::Generate(Generator::Reviews(_)) => "generate:reviews".to_owned(),
            Self::Generate(Generator::Penguins(_)) => "generate:penguins".to_owned(),
        }
    }
}

/// Brings the file onto local disk (or finds it there) and digests it.
pub async fn fetch(s: &AppState, origin: Origin) -> Result<SourceFile, ApiError> {
    match origin {
        Origin::Inline(csv) => SourceFile::from_bytes(&s.spool_dir, Bytes::from(csv.into_bytes()))
            .await
            .map_err(spool_io),
        Origin::Generate(generator) => {
            let bytes = generate(&generator).await?;
            SourceFile::from_bytes(&s.spool_dir, bytes)
                .await
                .map_err(spool_io)
        }
        Origin::Path(path) => {
            let full = resolve_path(s, &path).await?;
            SourceFile::in_place(full)
                .await
                .map_err(|_| ApiError::invalid(format!("cannot read {path:?}")))
        }
        Origin::Uri(uri) => read_object(s, &uri).await,
    }
}

/// The file `path` names under the data directory; `path` cannot reach outside it.
async fn resolve_path(state: &AppState, path: &str) -> Result<std::path::PathBuf, ApiError> {
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
    if !full.is_file() {
        return Err(ApiError::invalid(format!("{path:?} is not a file")));
    }
    Ok(full)
}

/// Streams an `s3://bucket/key` object to local disk with the store's S3 settings.
async fn read_object(s: &AppState, uri: &str) -> Result<SourceFile, ApiError> {
    use petrel_store::{ArtifactStore as _, StoreError};
    let (bucket, key) = uri
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "uri must be s3://bucket/key (use `path` for files in the data directory)",
            )
        })?;
    let failed = |e: StoreError| match e {
        StoreError::NotFound(_) => ApiError::invalid(format!("there is no object {uri}")),
        StoreError::InvalidKey(_) => ApiError::invalid(format!(
            "{uri:?} is not an object key Petrel reads: use letters, digits and '-', '_', '.', \
             '/' (no empty, '.' or '..' segments)"
        )),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "source_unavailable",
            format!("cannot read {uri}: {}", error_chain(&other)),
        ),
    };
    let store = petrel_store::S3Store::connect(&format!("s3://{bucket}"), &s.s3)
        .await
        .map_err(failed)?;
    let opened = store.open(key).await.map_err(failed)?;
    if opened.size > s.max_upload_bytes {
        return Err(too_large(s.max_upload_bytes));
    }
    let body = tokio_util::io::ReaderStream::with_capacity(opened.reader, 1 << 20);
    SourceFile::spool(&s.spool_dir, body, s.max_upload_bytes)
        .await
        .map_err(|e| {
            spool_failed(e, |message| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "source_unavailable",
                    format!("reading {uri} failed: {message}"),
                )
            })
        })
}

/// An error and its causes, `: `-separated (the AWS SDK puts the useful part in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// The answer to a spool that stopped: a 413 past the limit, `broken` for a sender's stream
/// that failed, a 500 for the local disk.
fn spool_failed(e: SpoolError, broken: impl FnOnce(String) -> ApiError) -> ApiError {
    match e {
        SpoolError::TooLarge { limit } => too_large(limit),
        SpoolError::Body(message) => broken(message),
        SpoolError::Io(e) => spool_io(e),
    }
}

/// A failure of the spool's local disk: the service's problem, not the sender's.
fn spool_io(e: std::io::Error) -> ApiError {
    ApiError::internal(anyhow::Error::new(e).context("spool"))
}

/// The 413 for a file past `--max-upload-mb`.
fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the file is larger than this service's limit of {} MiB (--max-upload-mb)",
            limit >> 20
        ),
    )
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
    /// `upload`, `upload:<file name>`, `path:<path>`, `uri:<uri>`, `generate:<generator>`,
    /// `schedule:<name>; ...`.
    pub source: String,
    pub file: SourceFile,
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
    let schema_hash = petrel_store::content_hash(&declared);
    let hash = inc.file.content_hash.clone();

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

    let (schema, checks) = (inc.schema.clone(), inc.checks.clone());
    let (path, format, spool) = (
        inc.file.path().to_owned(),
        inc.file.format,
        s.spool_dir.clone(),
    );
    let default_max = s.max_rejected_fraction;
    // Conversion and validation read the file a row at a time: CPU work proportional to the
    // file, on the blocking pool.
    let started = std::time::Instant::now();
    let checked = tokio::task::spawn_blocking(move || {
        check_file(&path, format, &spool, &schema, &checks, default_max)
    })
    .await
    .map_err(ApiError::internal)??;
    let report = checked.report;
    let status = if report.problems.is_empty() {
        DatasetStatus::Accepted
    } else {
        DatasetStatus::Rejected
    };
    record_validation(&report, status, started.elapsed().as_secs_f64());

    let hex = hash.trim_start_matches("sha256:");
    let put = |key: String, path: std::path::PathBuf| {
        let store = s.store.clone();
        async move {
            store
                .put_file(&key, &path)
                .await
                .map_err(ApiError::internal)
        }
    };
    let source_uri = put(
        format!("datasets/{}/{hex}.{}", inc.name, format.extension()),
        inc.file.path().to_owned(),
    )
    .await?;
    let uri = match (&checked.accepted, &checked.converted) {
        (Some(accepted), _) if status == DatasetStatus::Accepted => {
            let rules = &schema_hash.trim_start_matches("sha256:")[..16];
            put(
                format!("datasets/{}/{hex}.{rules}.accepted.csv", inc.name),
                accepted.to_path_buf(),
            )
            .await?
        }
        (_, Some(converted)) => {
            put(
                format!("datasets/{}/{hex}.csv", inc.name),
                converted.to_path_buf(),
            )
            .await?
        }
        _ => source_uri.clone(),
    };

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
            bytes = inc.file.size,
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

/// What validating a file on disk produced.
struct Checked {
    report: ValidationReport,
    /// The CSV a Parquet file became.
    converted: Option<TempPath>,
    /// The accepted rows, when a row rule left some out.
    accepted: Option<TempPath>,
}

/// Converts a Parquet file to CSV, then validates the CSV, writing the accepted rows to a
/// file beside it when a row rule may leave some out.
fn check_file(
    path: &std::path::Path,
    format: Format,
    spool: &std::path::Path,
    schema: &Schema,
    checks: &Checks,
    default_max: f64,
) -> Result<Checked, ApiError> {
    let mut converted = None;
    if format == Format::Parquet {
        let (file, csv) = source::spool_file(spool).map_err(spool_io)?;
        match source::parquet_to_csv(path, std::io::BufWriter::with_capacity(1 << 20, file)) {
            Ok(_) => converted = Some(csv),
            Err(e @ source::ParquetError::Io(_)) => return Err(ApiError::internal(e)),
            Err(e) => {
                return Ok(Checked {
                    report: validate::unreadable(&e.to_string()),
                    converted: None,
                    accepted: None,
                });
            }
        }
    }
    let csv = converted.as_deref().unwrap_or(path);
    let input = std::fs::File::open(csv).map_err(spool_io)?;
    let mut accepted = None;
    let (report, dropped) = if validate::has_row_rules(checks) {
        let (file, kept) = source::spool_file(spool).map_err(spool_io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let result =
            validate::validate_reader(input, schema, checks, default_max, Some(&mut out), spool);
        out.flush().map_err(spool_io)?;
        accepted = Some(kept);
        result
    } else {
        validate::validate_reader(input, schema, checks, default_max, None, spool)
    }
    .map_err(ApiError::internal)?;
    Ok(Checked {
        report,
        converted,
        accepted: accepted.filter(|_| dropped),
    })
}

/// What one validated file adds to `/metrics`.
fn record_validation(report: &ValidationReport, status: DatasetStatus, seconds: f64) {
    metrics::histogram!("petrel_ingest_validation_duration_seconds").record(seconds);
    metrics::counter!("petrel_ingest_rows_total", "result" => "accepted")
        .increment(report.accepted);
    metrics::counter!("petrel_ingest_rows_total", "result" => "rejected")
        .increment(report.rejected);
    metrics::counter!("petrel_ingest_datasets_total", "status" => status.as_str()).increment(1);
}

/// Help texts of ingest's metrics.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "petrel_ingest_validation_duration_seconds",
        metrics::Unit::Seconds,
        "Time to convert (Parquet) and validate one file"
    );
    metrics::describe_counter!(
        "petrel_ingest_rows_total",
        "Data rows validated, by result: accepted, or rejected by a rule"
    );
    metrics::describe_counter!(
        "petrel_ingest_datasets_total",
        "Datasets recorded, by status: accepted (data.ready) or rejected (alerts.data_quality)"
    );
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

async fn ingest(
    State(s): State<AppState>,
    Json(req): Json<IngestRequest>,
) -> Result<Response, ApiError> {
    check_name(&req.name)?;
    check_declared(&req.schema, &req.checks)?;
    let origin = Origin::of(&req)?;
    let source = origin.label();
    let file = fetch(&s, origin).await?;
    let done = ingest_file(
        &s,
        Incoming {
            name: req.name,
            schema: req.schema,
            checks: req.checks,
            purpose: req.purpose,
            source,
            file,
            interval: None,
        },
    )
    .await?;
    Ok(respond(done))
}

/// The schema and checks are usable before any byte is read.
fn check_declared(schema: &Schema, checks: &Checks) -> Result<(), ApiError> {
    schema
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    validate::check_rules(checks, schema).map_err(ApiError::invalid)
}

const UPLOAD_HELP: &str = "send multipart/form-data with a `spec` part (the JSON of POST \
    /v1/datasets without a source: name, schema, purpose, checks) and then a `file` part (the \
    CSV or Parquet file), e.g. curl -F spec=@spec.json -F file=@data.csv";
/// The most the `spec` part may hold.
const SPEC_LIMIT: usize = 1 << 20;

/// A multipart body that cannot be parsed.
fn broken_upload(e: MultipartError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_upload",
        format!("the multipart body is broken ({e}); {UPLOAD_HELP}"),
    )
}

/// The next part of an upload, which must be `name`: `absent` says what is wrong when there is
/// none, `position` which part it is when it has another name.
async fn next_part<'a>(
    parts: &'a mut Multipart,
    name: &str,
    absent: &str,
    position: &str,
) -> Result<axum::extract::multipart::Field<'a>, ApiError> {
    let part = parts
        .next_field()
        .await
        .map_err(broken_upload)?
        .ok_or_else(|| ApiError::invalid(format!("{absent}; {UPLOAD_HELP}")))?;
    if part.name() != Some(name) {
        return Err(ApiError::invalid(format!(
            "{position} must be `{name}`; {UPLOAD_HELP}"
        )));
    }
    Ok(part)
}

/// `POST /v1/datasets/upload`: a multipart body whose file part streams to local disk as it
/// arrives (never held in memory), up to `--max-upload-mb`.
async fn upload(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_upload_bytes + SPEC_LIMIT as u64) {
        return Err(too_large(s.max_upload_bytes));
    }
    let mut parts = multipart.map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            UPLOAD_HELP,
        )
    })?;
    let missing = |what: &str| ApiError::invalid(format!("{what}; {UPLOAD_HELP}"));
    let mut spec_part =
        next_part(&mut parts, "spec", "the upload is empty", "the first part").await?;
    let mut text = Vec::new();
    while let Some(chunk) = spec_part.chunk().await.map_err(broken_upload)? {
        text.extend_from_slice(&chunk);
        if text.len() > SPEC_LIMIT {
            return Err(ApiError::invalid("the spec part is larger than 1 MiB"));
        }
    }
    drop(spec_part);
    let spec: UploadSpec = serde_json::from_slice(&text).map_err(|e| {
        ApiError::invalid(format!(
            "the spec part is not a dataset spec: {}",
            petrel_runtime::http::plain_words(&e.to_string())
        ))
    })?;
    check_name(&spec.name)?;
    check_declared(&spec.schema, &spec.checks)?;
    let file_part = next_part(
        &mut parts,
        "file",
        "the file part is missing",
        "the second part",
    )
    .await?;
    let source = match file_part.file_name() {
        Some(name) if !name.is_empty() => format!("upload:{name}"),
        _ => "upload".to_owned(),
    };
    let file = SourceFile::spool(&s.spool_dir, file_part, s.max_upload_bytes)
        .await
        .map_err(|e| {
            spool_failed(e, |message| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_upload",
                    format!("the upload broke off: {message}"),
                )
            })
        })?;
    if parts.next_field().await.map_err(broken_upload)?.is_some() {
        return Err(missing("send only the `spec` and `file` parts"));
    }
    let done = ingest_file(
        &s,
        Incoming {
            name: spec.name,
            schema: spec.schema,
            checks: spec.checks,
            purpose: spec.purpose,
            source,
            file,
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
