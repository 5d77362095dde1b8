//! `POST /v1/predict` and `GET /v1/model`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use chrono::Utc;
use petrel_api::predictor::{PredictRequest, PredictResponse, RowPrediction, ServedModel};
use petrel_events::payloads::LoggedPrediction;
use petrel_runtime::http::{ApiError, Json};
use uuid::Uuid;

use crate::AppState;

/// Longest inference id a caller may choose.
const MAX_ID_LEN: usize = 128;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/model", get(model))
        .with_state(state.clone());
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.infra.readiness())),
        16 << 20,
    )
}

fn no_model() -> ApiError {
    ApiError::unavailable(
        "no model is being served yet: the alias has no version, or it is still loading",
    )
}

async fn model(State(s): State<AppState>) -> Result<Json<ServedModel>, ApiError> {
    let served = s.slot.current().ok_or_else(no_model)?;
    Ok(Json(ServedModel {
        model_name: served.model_name.clone(),
        model_version: served.version,
        artifact_uri: served.artifact_uri.clone(),
        class_names: served.model.class_names().to_vec(),
        schema: served.model.schema().clone(),
    }))
}

async fn predict(
    State(s): State<AppState>,
    Json(req): Json<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    if req.rows.is_empty() {
        return Err(ApiError::invalid("rows is empty: send at least one row"));
    }
    if req.rows.len() > s.max_rows {
        return Err(ApiError::invalid(format!(
            "{} rows in one request; the limit is {}",
            req.rows.len(),
            s.max_rows
        )));
    }
    // One snapshot for the whole request, so every row is answered by the same version.
    let served = s.slot.current().ok_or_else(no_model)?;
    let mut features = Vec::with_capacity(req.rows.len());
    let mut ids = Vec::with_capacity(req.rows.len());
    let mut seen = std::collections::HashSet::new();
    for (i, row) in req.rows.iter().enumerate() {
        let size = serde_json::to_vec(&row.features).map_or(usize::MAX, |v| v.len());
        if size > crate::log::MAX_ROW_BYTES {
            return Err(ApiError::invalid(format!(
                "rows[{i}].features is {size} bytes of JSON; the limit is {} bytes",
                crate::log::MAX_ROW_BYTES
            )));
        }
        let parsed = served
            .model
            .row_from_json(&row.features)
            .map_err(|e| ApiError::invalid(format!("rows[{i}]: {e}")))?;
        features.push(parsed);
        let id = match &row.inference_id {
            Some(id)
                if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) =>
            {
                return Err(ApiError::invalid(format!(
                    "rows[{i}].inference_id must be 1 to {MAX_ID_LEN} printable characters"
                )));
            }
            Some(id) => id.clone(),
            None => Uuid::now_v7().to_string(),
        };
        if !seen.insert(id.clone()) {
            return Err(ApiError::invalid(format!(
                "rows[{i}].inference_id {id:?} appears twice in the request"
            )));
        }
        ids.push(id);
    }
    // A NaN probability must never be logged: it would be announced as `null`, which the
    // event's consumers cannot read.
    let predictions = served.model.try_predict(&features).map_err(|e| match e {
        petrel_ml::MlError::OutOfRange { row } => ApiError::invalid(format!("rows[{row}]: {e}")),
        other => ApiError::internal(other),
    })?;
    let now = Utc::now();
    let logged: Vec<LoggedPrediction> = req
        .rows
        .into_iter()
        .zip(&ids)
        .zip(&predictions)
        .map(|((row, id), p)| LoggedPrediction {
            inference_id: id.clone(),
            features: row.features,
            class: p.class.clone(),
            confidence: p.confidence,
            probabilities: p.probabilities.clone(),
            predicted_at: now,
        })
        .collect();
    s.logger
        .log(&served.model_name, served.version, logged)
        .await
        .map_err(ApiError::unavailable)?;
    let predictions = ids
        .into_iter()
        .zip(predictions)
        .map(|(inference_id, p)| RowPrediction {
            inference_id,
            class: p.class,
            probabilities: p.probabilities,
            confidence: p.confidence,
            model_name: served.model_name.clone(),
            model_version: served.version,
        })
        .collect();
    Ok(Json(PredictResponse { predictions }))
}
