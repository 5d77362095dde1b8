//! `GET /v1/reports`, `GET /v1/reports/{id}`, `GET /v1/reports/{id}/revisions` and
//! `GET /v1/alerts`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use petrel_api::monitor::{
    AlertList, AlertRecord, QualityRevision, Report, ReportDetail, ReportList, RevisionList,
};
use petrel_events::payloads::AlertKind;
use petrel_runtime::http::{ApiError, Json, Path, Query};
use serde::Deserialize;
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/reports", get(list))
        .route("/v1/reports/{id}", get(get_one))
        .route("/v1/reports/{id}/revisions", get(revisions))
        .route("/v1/alerts", get(alerts))
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        1 << 20,
    )
}

const COLUMNS: &str = "id, model_name, model_version, window_start, window_end, n_predictions, n_labels, \
     accuracy, mean_confidence, drift_share, drift, alerts, created_at, revision, quality_final, detail";

fn from_row(r: &sqlx::postgres::PgRow) -> Result<Report, ApiError> {
    let drift: serde_json::Value = r.get("drift");
    let detail: serde_json::Value = r.get("detail");
    Ok(Report {
        id: r.get("id"),
        model_name: r.get("model_name"),
        model_version: r.get("model_version"),
        window_start: r.get("window_start"),
        window_end: r.get("window_end"),
        n_predictions: r.get("n_predictions"),
        n_labels: r.get("n_labels"),
        accuracy: r.get("accuracy"),
        mean_confidence: r.get("mean_confidence"),
        drift_share: r.get("drift_share"),
        drift: serde_json::from_value(drift).map_err(ApiError::internal)?,
        alerts: r.get("alerts"),
        created_at: r.get("created_at"),
        revision: r.get("revision"),
        quality_final: r.get("quality_final"),
        detail: serde_json::from_value::<ReportDetail>(detail).map_err(ApiError::internal)?,
    })
}

/// A name from a query string: Postgres text holds no NUL, and no name has control characters.
fn check_name(what: &str, v: &Option<String>) -> Result<(), ApiError> {
    match v {
        Some(s) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!(
                "{what} must be 1 to 256 characters without control characters"
            )))
        }
        _ => Ok(()),
    }
}

fn check_limit(limit: i64) -> Result<(), ApiError> {
    if (1..=1000).contains(&limit) {
        Ok(())
    } else {
        Err(ApiError::bad_request("limit must be between 1 and 1000"))
    }
}

#[derive(Deserialize)]
struct ListQuery {
    model: Option<String>,
    version: Option<i32>,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    20
}

async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ReportList>, ApiError> {
    check_limit(q.limit)?;
    check_name("model", &q.model)?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM reports WHERE ($1::text IS NULL OR model_name = $1) \
         AND ($2::int IS NULL OR model_version = $2) ORDER BY created_at DESC LIMIT $3"
    ))
    .bind(&q.model)
    .bind(q.version)
    .bind(q.limit)
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let reports = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    Ok(Json(ReportList { reports }))
}

async fn get_one(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Report>, ApiError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM reports WHERE id = $1"))
        .bind(id)
        .fetch_optional(&s.infra.pool)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("report {id} does not exist")))?;
    Ok(Json(from_row(&row)?))
}

async fn revisions(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<RevisionList>, ApiError> {
    let rows = sqlx::query(
        "SELECT revision, n_labels, quality, quality_final, created_at FROM report_revisions \
         WHERE report_id = $1 ORDER BY revision",
    )
    .bind(id)
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("report {id} does not exist")));
    }
    let revisions = rows
        .iter()
        .map(|r| {
            Ok(QualityRevision {
                revision: r.get("revision"),
                n_labels: r.get("n_labels"),
                quality: r
                    .get::<Option<serde_json::Value>, _>("quality")
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(ApiError::internal)?,
                quality_final: r.get("quality_final"),
                created_at: r.get("created_at"),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(RevisionList {
        report_id: id,
        revisions,
    }))
}

#[derive(Deserialize)]
struct AlertQuery {
    model: Option<String>,
    version: Option<i32>,
    kind: Option<String>,
    status: Option<String>,
    episode: Option<Uuid>,
    /// Only alerts of episodes that are still open.
    #[serde(default)]
    open: bool,
    #[serde(default = "default_limit")]
    limit: i64,
}

async fn alerts(
    State(s): State<AppState>,
    Query(q): Query<AlertQuery>,
) -> Result<Json<AlertList>, ApiError> {
    check_limit(q.limit)?;
    check_name("model", &q.model)?;
    if let Some(k) = &q.kind
        && AlertKind::parse(k).is_none()
    {
        let kinds: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "kind must be one of {}",
            kinds.join(", ")
        )));
    }
    if let Some(st) = &q.status
        && !["opened", "renotified", "resolved"].contains(&st.as_str())
    {
        return Err(ApiError::bad_request(
            "status must be one of opened, renotified, resolved",
        ));
    }
    let rows = sqlx::query(
        "SELECT a.id, a.episode_id, a.kind, a.status, a.severity, a.model_name, a.model_version, a.key, a.report_id, \
         a.message, a.observed, a.threshold, a.evidence, a.created_at, e.state = 'open' AS episode_open \
         FROM alerts a JOIN alert_episodes e ON e.id = a.episode_id \
         WHERE ($1::text IS NULL OR a.model_name = $1) AND ($2::int IS NULL OR a.model_version = $2) \
         AND ($3::text IS NULL OR a.kind = $3) AND ($4::text IS NULL OR a.status = $4) \
         AND ($5::uuid IS NULL OR a.episode_id = $5) AND (NOT $6 OR e.state = 'open') \
         ORDER BY a.created_at DESC, a.id DESC LIMIT $7",
    )
    .bind(&q.model)
    .bind(q.version)
    .bind(&q.kind)
    .bind(&q.status)
    .bind(q.episode)
    .bind(q.open)
    .bind(q.limit)
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let alerts = rows
        .iter()
        .map(|r| AlertRecord {
            id: r.get("id"),
            episode_id: r.get("episode_id"),
            kind: r.get("kind"),
            status: r.get("status"),
            severity: r.get("severity"),
            model_name: r.get("model_name"),
            model_version: r.get("model_version"),
            key: r.get("key"),
            report_id: r.get("report_id"),
            message: r.get("message"),
            observed: r.get("observed"),
            threshold: r.get("threshold"),
            evidence: r.get("evidence"),
            created_at: r.get("created_at"),
            episode_open: r.get("episode_open"),
        })
        .collect();
    Ok(Json(AlertList { alerts }))
}
