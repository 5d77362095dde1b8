//! Labeler API: `POST /v1/labels` and `GET /v1/labels/stats`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelInput {
    pub inference_id: String,
    pub label: String,
}

/// The JSON body of `POST /v1/labels` (the endpoint also reads `text/csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelsRequest {
    pub labels: Vec<LabelInput>,
    /// Replace a different label already stored for an id instead of refusing the request with
    /// `409`. Off by default, so that a mistaken resend cannot silently rewrite ground truth;
    /// absent in requests from before the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overwrite: bool,
}

impl LabelsRequest {
    /// A request that never replaces a stored label.
    pub fn new(labels: Vec<LabelInput>) -> Self {
        Self {
            labels,
            overwrite: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelsResponse {
    /// Labels stored by this call (new ones, and replaced ones when overwriting).
    pub accepted: usize,
    /// Of those, joined to their prediction already (the others wait for it).
    pub joined: usize,
    /// Labels already stored with the same value (a retried call); not counted twice.
    pub duplicates: usize,
    /// Of the accepted labels, those that replaced a different label (only with `overwrite`).
    /// Absent in answers from labelers before the field.
    #[serde(default)]
    pub overwritten: usize,
}

/// `GET /v1/labels/stats`: where the labels stand. `labels = joined + waiting + unknown`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelStats {
    /// Labels stored (and not yet removed by retention).
    pub labels: u64,
    /// Labels joined to their prediction and announced on `labels.joined`.
    pub joined: u64,
    /// Labels without a prediction yet, stored less than `unknown_after_secs` ago: their
    /// prediction may still be on its way.
    pub waiting: u64,
    /// Labels without a prediction for longer than `unknown_after_secs`: most likely their
    /// inference id was never served (a typo, another environment). They are joined all the
    /// same if the prediction turns up before retention removes them.
    pub unknown: u64,
    /// Predictions the labeler knows of that have no label (yet).
    pub predictions_without_label: u64,
    /// The grace period (`--unknown-after-secs`) the split between `waiting` and `unknown`
    /// used.
    pub unknown_after_secs: u64,
}

/// One labelled prediction with the features it was made from, as `GET /v1/labels/joined`
/// lists them: what a retraining trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinedRow {
    pub inference_id: String,
    pub model_version: i32,
    /// The request's row as the predictor received it.
    pub features: serde_json::Map<String, serde_json::Value>,
    /// The ground truth.
    pub label: String,
    pub predicted_class: String,
    pub predicted_at: chrono::DateTime<chrono::Utc>,
    pub labelled_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/labels/joined?model=NAME[&since=RFC3339][&limit=N]`: a model's labelled
/// predictions, newest label first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinedRows {
    pub rows: Vec<JoinedRow>,
}
