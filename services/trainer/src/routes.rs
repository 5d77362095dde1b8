//! The trainer's HTTP API: training jobs to start, follow and cancel.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::retrain::{self, RetrainingPolicy};
use petrel_ml::{MAX_FOLDS, SweepSpec, TrainConfig};
use petrel_runtime::http::{ApiError, Json, Path, Query};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::jobs::{self, Cancelled, Job, Plan};

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/jobs", get(list).post(create))
        .route("/v1/jobs/{id}", get(get_one))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route(
            "/v1/retraining/{model}",
            get(get_retraining).put(put_retraining),
        )
        .route("/v1/retraining/{model}/history", get(retraining_history))
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

/// `POST /v1/jobs`: what to train on and how.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The dataset, by id...
    pub dataset_id: Option<Uuid>,
    /// ...or by name: its newest version, or `version`.
    pub dataset: Option<String>,
    pub version: Option<i32>,
    /// The model to register under; the dataset's name by default.
    pub model_name: Option<String>,
    /// Settings that differ from the trainer's configuration (`epochs`, `hidden_size`, ...).
    #[serde(default)]
    pub config: serde_json::Map<String, Value>,
    /// Cross-validate with this many folds (0: off); the trainer's setting by default.
    pub cv_folds: Option<usize>,
    /// A sweep instead of one configuration (as in the trainer's `--sweep` file).
    pub sweep: Option<SweepSpec>,
    /// Idempotency: a repeated token answers with the first job instead of starting another.
    pub client_token: Option<String>,
}

/// Applies a request's settings over the trainer's: every key must be a setting, and the result
/// must be a valid configuration.
pub fn plan_for(base: &TrainConfig, base_folds: usize, req: &CreateJob) -> Result<Plan, String> {
    let mut merged = match serde_json::to_value(base) {
        Ok(Value::Object(m)) => m,
        _ => return Err("the trainer's configuration cannot be read".into()),
    };
    for (k, v) in &req.config {
        if !merged.contains_key(k) {
            let known: Vec<&str> = merged.keys().map(String::as_str).collect();
            return Err(format!(
                "config has an unknown setting {k:?}; the settings are {}",
                known.join(", ")
            ));
        }
        merged.insert(k.clone(), v.clone());
    }
    let config: TrainConfig = serde_json::from_value(Value::Object(merged)).map_err(|e| {
        format!(
            "config: {}",
            petrel_runtime::http::plain_words(&e.to_string())
        )
    })?;
    config.validate().map_err(|e| e.to_string())?;
    let cv_folds = req.cv_folds.unwrap_or(base_folds);
    if cv_folds == 1 || cv_folds > MAX_FOLDS {
        return Err(format!("cv_folds must be 0 (off) or 2 to {MAX_FOLDS}"));
    }
    if let Some(spec) = &req.sweep {
        spec.trials(&config).map_err(|e| format!("sweep: {e}"))?;
    }
    Ok(Plan {
        config,
        tuning: crate::Tuning {
            cv_folds,
            sweep: req.sweep.clone(),
        },
    })
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    match petrel_api::name_problem(what, name) {
        Some(problem) => Err(ApiError::invalid(problem)),
        None => Ok(()),
    }
}

async fn create(
    State(s): State<AppState>,
    Json(req): Json<CreateJob>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    if req.dataset_id.is_none() && req.dataset.is_none() {
        return Err(ApiError::invalid(
            "name the dataset to train on: dataset_id, or dataset (a name) with an optional version",
        ));
    }
    if let Some(name) = &req.dataset {
        check_name("dataset", name)?;
    }
    if let Some(name) = &req.model_name {
        check_name("model_name", name)?;
    }
    if let Some(t) = &req.client_token
        && (t.is_empty() || t.len() > 256 || t.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "client_token must be 1 to 256 characters without control characters",
        ));
    }
    let plan = plan_for(&s.train, s.tuning.cv_folds, &req).map_err(ApiError::invalid)?;
    let data = jobs::find_dataset(&s, req.dataset_id, req.dataset.as_deref(), req.version)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            let what = match (&req.dataset_id, &req.dataset, req.version) {
                (Some(id), _, _) => format!("dataset {id}"),
                (None, Some(n), Some(v)) => format!("version {v} of dataset {n:?}"),
                (None, Some(n), None) => format!("dataset {n:?}"),
                (None, None, _) => "that dataset".to_owned(),
            };
            ApiError::not_found(format!(
                "{what} is unknown to the trainer: ingest it first (the trainer learns of datasets from data.ready)"
            ))
        })?;
    let model = req.model_name.clone().unwrap_or_else(|| data.name.clone());
    let (job, created) =
        jobs::create_requested_job(&s, &data, &model, &plan, "api", req.client_token.as_deref())
            .await
            .map_err(ApiError::internal)?;
    tracing::info!(job.id = %job.id, model.name = %model, dataset.name = %data.name, created, "training job requested");
    Ok((
        if created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        },
        Json(job),
    ))
}

async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    match jobs::cancel_job(&s, id).await.map_err(ApiError::internal)? {
        Cancelled::Accepted(job) => {
            tracing::info!(job.id = %id, status = %job.status, "job cancel requested");
            Ok((StatusCode::ACCEPTED, Json(job)))
        }
        Cancelled::Finished(job) => Err(ApiError::conflict(format!(
            "job {id} has already {}; only a queued or running job can be cancelled",
            match job.status.as_str() {
                "succeeded" => "succeeded",
                "failed" => "failed",
                _ => "been cancelled",
            }
        ))),
        Cancelled::NotFound => Err(ApiError::not_found(format!("job {id} does not exist"))),
    }
}

async fn get_retraining(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<RetrainingPolicy>, ApiError> {
    check_name("model name", &model)?;
    Ok(Json(
        retrain::policy(&s, &model)
            .await
            .map_err(ApiError::internal)?,
    ))
}

async fn put_retraining(
    State(s): State<AppState>,
    Path(model): Path<String>,
    Json(policy): Json<RetrainingPolicy>,
) -> Result<Json<RetrainingPolicy>, ApiError> {
    check_name("model name", &model)?;
    policy.check().map_err(ApiError::invalid)?;
    retrain::set_policy(&s, &model, &policy)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(model.name = %model, mode = ?policy.mode, "retraining policy set");
    Ok(Json(policy))
}

async fn retraining_history(
    State(s): State<AppState>,
    Path(model): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("model name", &model)?;
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = retrain::history(&s, &model, q.limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "retrainings": rows })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_overrides_only_known_settings_and_is_validated() {
        let base = TrainConfig::default();
        let req = |config: Value| CreateJob {
            config: config.as_object().unwrap().clone(),
            ..CreateJob::default()
        };
        let plan = plan_for(&base, 0, &req(json!({"epochs": 7, "hidden_size": 8}))).unwrap();
        assert_eq!(plan.config.epochs, 7);
        assert_eq!(plan.config.hidden_size, 8);
        assert_eq!(plan.config.learning_rate, base.learning_rate);
        let e = plan_for(&base, 0, &req(json!({"epoch": 7}))).unwrap_err();
        assert!(
            e.contains("unknown setting \"epoch\"") && e.contains("epochs"),
            "{e}"
        );
        let e = plan_for(&base, 0, &req(json!({"epochs": 0}))).unwrap_err();
        assert!(e.contains("epochs"), "{e}");
        let e = plan_for(&base, 0, &req(json!({"epochs": "many"}))).unwrap_err();
        assert!(e.starts_with("config:"), "{e}");
        let folds = CreateJob {
            cv_folds: Some(1),
            ..CreateJob::default()
        };
        assert!(plan_for(&base, 0, &folds).unwrap_err().contains("cv_folds"));
        assert_eq!(
            plan_for(&base, 5, &CreateJob::default())
                .unwrap()
                .tuning
                .cv_folds,
            5
        );
    }
}
