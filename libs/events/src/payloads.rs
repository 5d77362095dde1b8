//! The payload of every Petrel event, and the subject it travels on. `docs/events.md` documents
//! each one for subscribers; keep the two in step.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
pub use petrel_ml::DatasetPurpose;
use petrel_ml::Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Event;

/// Relative subjects, for consumers that filter on them.
pub mod subjects {
    pub const DATA_READY: &str = "data.ready";
    pub const MODEL_REGISTERED: &str = "model.registered";
    pub const MODEL_PROMOTED: &str = "model.promoted";
    pub const PREDICTIONS_LOGGED: &str = "predictions.logged";
    pub const LABELS_JOINED: &str = "labels.joined";
    /// All alert kinds: `alerts.drift`, `alerts.accuracy`, `alerts.confidence`.
    pub const ALERTS: &str = "alerts.>";
    /// Events a consumer set aside: `deadletter.<consumer>`.
    pub const DEAD_LETTERS: &str = "deadletter.>";
}

/// A validated dataset is stored and ready for use: training, bulk scoring or reference, as
/// its `purpose` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataReady {
    pub dataset_id: Uuid,
    pub name: String,
    /// 1, 2, ... per dataset name.
    pub version: i32,
    /// Where the original file is, in the artifact store.
    pub uri: String,
    /// `sha256:<hex>` of the file's bytes.
    pub content_hash: String,
    /// Rows that passed validation.
    pub row_count: u64,
    /// Rows reported as invalid (left out of training).
    pub rejected_rows: u64,
    pub schema: Schema,
    /// What the dataset is for; absent in events from before the field, which were all
    /// training data.
    #[serde(default)]
    pub purpose: DatasetPurpose,
}

impl Event for DataReady {
    const TYPE: &'static str = "petrel.data.ready.v1";
    fn subject(&self) -> String {
        subjects::DATA_READY.to_owned()
    }
}

/// A new model version was registered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRegistered {
    pub model_name: String,
    pub version: i32,
    pub run_id: Uuid,
    pub artifact_uri: String,
    pub dataset_id: Option<Uuid>,
    pub metrics: BTreeMap<String, f64>,
}

impl Event for ModelRegistered {
    const TYPE: &'static str = "petrel.model.registered.v1";
    fn subject(&self) -> String {
        subjects::MODEL_REGISTERED.to_owned()
    }
}

/// An alias (such as `production`) now points at a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelPromoted {
    pub model_name: String,
    pub alias: String,
    pub version: i32,
    pub previous_version: Option<i32>,
    pub artifact_uri: String,
    /// Why it moved, for people reading the event stream.
    pub reason: String,
}

impl Event for ModelPromoted {
    const TYPE: &'static str = "petrel.model.promoted.v1";
    fn subject(&self) -> String {
        subjects::MODEL_PROMOTED.to_owned()
    }
}

/// One served prediction, as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedPrediction {
    pub inference_id: String,
    /// The request's row as received.
    pub features: serde_json::Map<String, serde_json::Value>,
    pub class: String,
    pub confidence: f32,
    pub probabilities: BTreeMap<String, f32>,
    pub predicted_at: DateTime<Utc>,
}

/// A batch of predictions was logged by the predictor. One event carries many predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionsLogged {
    pub model_name: String,
    pub model_version: i32,
    pub predictions: Vec<LoggedPrediction>,
}

impl Event for PredictionsLogged {
    const TYPE: &'static str = "petrel.predictions.logged.v1";
    fn subject(&self) -> String {
        subjects::PREDICTIONS_LOGGED.to_owned()
    }
}

/// [`LoggedPrediction`] as consumers that store predictions read it: the features and
/// probabilities stay the JSON text they arrived as, so they are bound to Postgres as text
/// (cast to `jsonb` there) without being parsed into values and serialised again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RawLoggedPrediction {
    pub inference_id: String,
    pub features: Box<serde_json::value::RawValue>,
    pub class: String,
    pub confidence: f32,
    pub probabilities: Box<serde_json::value::RawValue>,
    pub predicted_at: DateTime<Utc>,
}

/// [`PredictionsLogged`] read with [`RawLoggedPrediction`]s: the same event type.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RawPredictionsLogged {
    pub model_name: String,
    pub model_version: i32,
    pub predictions: Vec<RawLoggedPrediction>,
}

impl Event for RawPredictionsLogged {
    const TYPE: &'static str = PredictionsLogged::TYPE;
    fn subject(&self) -> String {
        subjects::PREDICTIONS_LOGGED.to_owned()
    }
}

/// Ground truth joined to one prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinedLabel {
    pub inference_id: String,
    pub label: String,
    pub predicted_class: String,
    pub correct: bool,
    pub model_name: String,
    pub model_version: i32,
    pub predicted_at: DateTime<Utc>,
    pub labelled_at: DateTime<Utc>,
}

/// Labels were joined to their predictions and are available for accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelsJoined {
    pub labels: Vec<JoinedLabel>,
}

impl Event for LabelsJoined {
    const TYPE: &'static str = "petrel.labels.joined.v1";
    fn subject(&self) -> String {
        subjects::LABELS_JOINED.to_owned()
    }
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Drift,
    Accuracy,
    Confidence,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Drift => "drift",
            AlertKind::Accuracy => "accuracy",
            AlertKind::Confidence => "confidence",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A monitoring threshold was crossed in a window. Published on `alerts.<kind>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub model_name: String,
    pub model_version: i32,
    /// The monitor's report for the window; `GET /v1/reports/{id}` on the monitor shows it.
    pub report_id: Uuid,
    /// A sentence for people: what crossed which threshold.
    pub message: String,
    /// The measured value (share of drifted features, accuracy, or mean confidence).
    pub observed: f64,
    pub threshold: f64,
    /// Kind-specific detail, such as the drifted features and their p-values.
    pub details: serde_json::Value,
}

impl Event for Alert {
    const TYPE: &'static str = "petrel.alert.v1";
    fn subject(&self) -> String {
        format!("alerts.{}", self.kind)
    }
}

/// An event a consumer could not process and set aside, so the consumer could go on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub consumer: String,
    /// The subject the event arrived on.
    pub subject: String,
    pub reason: String,
    pub delivered: i64,
    pub stream_sequence: u64,
    /// The original payload, as text (truncated to 64 KiB).
    pub payload: String,
}

impl Event for DeadLetter {
    const TYPE: &'static str = "petrel.deadletter.v1";
    fn subject(&self) -> String {
        format!("deadletter.{}", self.consumer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ready_without_a_purpose_is_training_data() {
        let ready = DataReady {
            dataset_id: Uuid::nil(),
            name: "penguins".into(),
            version: 1,
            uri: "file:///d.csv".into(),
            content_hash: "sha256:00".into(),
            row_count: 1,
            rejected_rows: 0,
            schema: Schema::penguins(),
            purpose: DatasetPurpose::Scoring,
        };
        let mut json = serde_json::to_value(&ready).unwrap();
        assert_eq!(json["purpose"], "scoring");
        json.as_object_mut().unwrap().remove("purpose");
        let old: DataReady = serde_json::from_value(json).unwrap();
        assert_eq!(old.purpose, DatasetPurpose::Training);
    }
}
