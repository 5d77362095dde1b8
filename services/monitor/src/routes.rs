//! `GET /v1/reports`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use petrel_api::monitor::{Report, ReportList};
use petrel_runtime::http::{ApiError, Json, Path, Query};
use serde::Deserialize;
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/reports", get(list))
        .route("/v1/reports/{id}", get(get_one))
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        1 << 20,
    )
}

const COLUMNS: &str = "id, model_name, model_version, window_start, window_end, n_predictions, n_labels, \
     accuracy, mean_confidence, drift_share, drift, alerts, created_at";

fn from_row(r: &sqlx::postgres::PgRow) -> Result<Report, ApiError> {
    let drift: serde_json::Value = r.get("drift");
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
    })
}

#[derive(Deserialize)]
struct ListQuery {
    model: Option<String>,
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
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM reports WHERE ($1::text IS NULL OR model_name = $1) ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(&q.model)
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
