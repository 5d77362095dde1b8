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
