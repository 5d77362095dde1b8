//! Predictor API: `POST /v1/predict`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One row to score. `inference_id` lets the caller correlate ground truth later; when absent,
/// the predictor assigns one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictRow {
    #[serde(default)]
    pub inference_id: Option<String>,
    /// Column name to number, string or null (missing values are imputed).
    pub features: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictRequest {
    pub rows: Vec<PredictRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowPrediction {
    pub inference_id: String,
    pub class: String,
    pub probabilities: BTreeMap<String, f32>,
    pub confidence: f32,
    pub model_name: String,
    pub model_version: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictResponse {
    pub predictions: Vec<RowPrediction>,
}

/// `GET /v1/model`: what is being served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServedModel {
    pub model_name: String,
    pub model_version: i32,
    pub artifact_uri: String,
    pub class_names: Vec<String>,
    pub schema: petrel_ml::Schema,
}

/// `POST /v1/batch`: score a CSV in the artifact store in bulk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// The CSV to score, as the artifact store names it (`file:///...`), with a header row.
    pub input_uri: String,
    /// `name@alias` or `name/VERSION`; absent or null for the served alias.
    #[serde(default)]
    pub model: Option<String>,
}

/// Where a batch job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl BatchStatus {
    /// Whether the job will change no more.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// A batch job as `POST /v1/batch` and `GET /v1/batch/{id}` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    pub id: uuid::Uuid,
    /// The `data.ready` event that started it, if one did.
    pub event_id: Option<uuid::Uuid>,
    /// What was asked for (`name@alias`, `name/3`), or null for the served alias.
    pub model: Option<String>,
    /// The version scoring it, fixed when the job first starts.
    pub model_name: Option<String>,
    pub model_version: Option<i32>,
    pub input_uri: String,
    pub status: BatchStatus,
    /// Data rows in the input, once it has been read.
    pub rows_total: Option<i64>,
    /// Rows answered so far, rejected ones included.
    pub rows_done: i64,
    /// Rows that failed validation: in the output with an `error`, not scored.
    pub rows_rejected: i64,
    /// The results CSV, once written.
    pub output_uri: Option<String>,
    /// The `batch_predictions` run recorded in the registry.
    pub run_id: Option<uuid::Uuid>,
    /// Why the job failed.
    pub error: Option<String>,
    /// Claims by a runner; more than one means it was resumed.
    pub attempts: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}
