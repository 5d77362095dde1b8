//! `GET /v1/lineage/predictions/{inference_id}`: a prediction traced back, in one call, to the
//! model version that made it, the run that trained it, and the datasets, sources, intervals
//! and validation reports behind them. Ingest owns the last links; it asks the predictor and
//! the registry for the first ones over their HTTP APIs.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use petrel_api::ClientError;
use petrel_api::client::segment;
use petrel_api::ingest::{DatasetLineage, PredictionLineage, RunLineage};
use petrel_api::registry::DATASET_CONTEXT_TAG;
use petrel_runtime::http::{ApiError, Json, Path};
use uuid::Uuid;

use crate::AppState;
use crate::datasets;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/lineage/predictions/{inference_id}",
        get(prediction_lineage),
    )
}

/// An upstream failure in the API's words: a missing link is a 404 naming it, an unreachable
/// service a 503.
fn upstream(what: &str, service: &str, e: ClientError) -> ApiError {
    match e.status() {
        Some(404) => ApiError::not_found(format!("{what} is not known to the {service}")),
        Some(401 | 403) => ApiError::unavailable(format!(
            "the {service} refused ingest's credentials; set --registry-token"
        )),
        _ => {
            tracing::warn!(error = %e, service, "lineage lookup failed");
            ApiError::unavailable(format!("the {service} is unavailable; retry"))
        }
    }
}

async fn prediction_lineage(
    State(s): State<AppState>,
    Path(inference_id): Path<String>,
) -> Result<Json<PredictionLineage>, ApiError> {
    let prediction: serde_json::Value = s
        .predictor
        .get(&format!("/v1/predictions/{}", segment(&inference_id)))
        .await
        .map_err(|e| upstream(&format!("prediction {inference_id:?}"), "predictor", e))?;
    let model = prediction["model_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let version = prediction["model_version"]
        .as_i64()
        .and_then(|v| i32::try_from(v).ok())
        .ok_or_else(|| ApiError::unavailable("the predictor answered without a model version"))?;
    let model_version = s
        .registry
        .get_version(&model, version)
        .await
        .map_err(|e| upstream(&format!("model {model} version {version}"), "registry", e))?;
    let run = s
        .registry
        .get_run(model_version.run_id)
        .await
        .map_err(|e| upstream(&format!("run {}", model_version.run_id), "registry", e))?;

    let mut lineage = Vec::with_capacity(run.inputs.len() + 1);
    let mut seen = Vec::new();
    for input in &run.inputs {
        let id = (input.source_type == "petrel-ingest")
            .then(|| serde_json::from_str::<serde_json::Value>(&input.source).ok())
            .flatten()
            .and_then(|v| {
                v["dataset_id"]
                    .as_str()
                    .and_then(|s| s.parse::<Uuid>().ok())
            });
        let found = match id {
            Some(id) => datasets::find(&s, id).await?,
            None => None,
        };
        if let Some(id) = id {
            seen.push(id);
        }
        let (dataset, report) = found.unzip();
        lineage.push(DatasetLineage {
            role: input.tags.get(DATASET_CONTEXT_TAG).cloned(),
            name: input.name.clone(),
            digest: input.digest.clone(),
            dataset,
            report,
        });
    }
    // The version's own dataset, when the run logged no input for it.
    if let Some(id) = model_version.dataset_id.filter(|id| !seen.contains(id))
        && let Some((dataset, report)) = datasets::find(&s, id).await?
    {
        lineage.push(DatasetLineage {
            role: Some("training".to_owned()),
            name: dataset.name.clone(),
            digest: dataset.content_hash.clone(),
            dataset: Some(dataset),
            report: Some(report),
        });
    }
    Ok(Json(PredictionLineage {
        prediction,
        model_version,
        run: RunLineage {
            id: run.id,
            experiment: run.experiment,
            name: run.name,
            status: run.status,
            params: run.params,
            start_time: run.start_time,
            end_time: run.end_time,
            parent_run_id: run.parent_run_id,
        },
        datasets: lineage,
    }))
}
