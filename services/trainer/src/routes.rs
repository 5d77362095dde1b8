//! The trainer's HTTP API: training jobs to poll.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use petrel_runtime::http::{ApiError, Json, Path, Query};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::jobs::{self, Job};

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/jobs", get(list))
        .route("/v1/jobs/{id}", get(get_one))
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        1 << 20,
    )
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    50
}

async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let jobs = jobs::list_jobs(&s, q.limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn get_one(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Job>, ApiError> {
    jobs::get_job(&s, id)
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))
}
