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
    pub const MODEL_ALIAS_DELETED: &str = "model.alias_deleted";
    pub const MODEL_TRAINING_REQUESTED: &str = "model.training_requested";
    pub const PREDICTIONS_LOGGED: &str = "predictions.logged";
    pub const LABELS_JOINED: &str = "labels.joined";
    /// All alerts: `alerts.<kind>` for each [`AlertKind`](super::AlertKind), and
    /// `alerts.resolved` when an episode closes.
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

/// A training job was asked for (over the trainer's HTTP API, or by a retraining policy); the
/// trainer's job row holds what to train, so any trainer instance can take it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingRequested {
    pub job_id: Uuid,
    pub model_name: String,
    pub dataset_id: Uuid,
    /// Who asked: `api`, or `alert` for a retraining policy.
    pub source: String,
}

impl Event for TrainingRequested {
    const TYPE: &'static str = "petrel.model.training_requested.v1";
    fn subject(&self) -> String {
        subjects::MODEL_TRAINING_REQUESTED.to_owned()
    }
}

/// An alias was removed from a model: nothing is served under it any more until it is set
/// again (predictors keep serving the version they have).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelAliasDeleted {
    pub model_name: String,
    pub alias: String,
    /// The version the alias pointed at.
    pub previous_version: i32,
    pub reason: String,
    /// Who removed it.
    pub actor: String,
}

impl Event for ModelAliasDeleted {
    const TYPE: &'static str = "petrel.model.alias_deleted.v1";
    fn subject(&self) -> String {
        subjects::MODEL_ALIAS_DELETED.to_owned()
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The features' distributions moved away from the training data.
    Drift,
    /// The distribution of predicted classes or of confidence moved away from the model's
    /// outputs on its held-out split.
    PredictionDrift,
    /// Missing values, out-of-range values or unseen categories beyond what training saw.
    DataQuality,
    /// Accuracy measured on labelled predictions fell below the threshold.
    Accuracy,
    /// Accuracy estimated from the model's calibrated confidence (no labels needed) fell
    /// below the threshold.
    EstimatedAccuracy,
    /// Mean top-class probability fell below the threshold.
    Confidence,
    /// A metric declines steadily across windows and is projected to cross its threshold.
    Trend,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 7] = [
        AlertKind::Drift,
        AlertKind::PredictionDrift,
        AlertKind::DataQuality,
        AlertKind::Accuracy,
        AlertKind::EstimatedAccuracy,
        AlertKind::Confidence,
        AlertKind::Trend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Drift => "drift",
            AlertKind::PredictionDrift => "prediction_drift",
            AlertKind::DataQuality => "data_quality",
            AlertKind::Accuracy => "accuracy",
            AlertKind::EstimatedAccuracy => "estimated_accuracy",
            AlertKind::Confidence => "confidence",
            AlertKind::Trend => "trend",
        }
    }

    /// Parses the wire name.
    pub fn parse(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert stands in its episode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// The episode opened: the first notification of a problem.
    #[default]
    Opened,
    /// The episode is still open and worsened, or its cool-down passed.
    Renotified,
    /// The episode closed after enough clean windows. Published on `alerts.resolved`.
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Opened => "opened",
            AlertStatus::Renotified => "renotified",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// How bad it is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    #[default]
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One measured fact behind an alert: a statistic of a column (or of the whole window) and
/// the threshold it crossed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The column, when the fact is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// What was measured: a drift method's name (`kolmogorov_smirnov`), `accuracy`,
    /// `missing_share`, `slope`, ...
    pub metric: String,
    /// The measured value (for tests, the score compared with the threshold: an adjusted
    /// p-value or a distance).
    pub value: f64,
    pub threshold: f64,
}

/// A monitoring problem opened, is still going on, or resolved. Published on
/// `alerts.<kind>` (`alerts.resolved` when `status` is `resolved`); each notification has its
/// own event id, and every notification of one episode shares `episode_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// `opened`, `renotified` or `resolved`; absent in alerts from before episodes
    /// (each of which opened its own).
    #[serde(default)]
    pub status: AlertStatus,
    /// The episode this notification belongs to; `GET /v1/alerts?episode=` lists them all.
    #[serde(default)]
    pub episode_id: Option<Uuid>,
    #[serde(default)]
    pub severity: Severity,
    /// The model the alert is about; empty for an alert about a dataset (see `dataset`).
    pub model_name: String,
    /// 0 for an alert about a dataset.
    pub model_version: i32,
    /// The column the episode is about, for kinds that are kept per column (`data_quality`,
    /// `trend` keeps the metric's name here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The monitor's report for the window (`GET /v1/reports/{id}` on the monitor), or for an
    /// alert about a dataset, the dataset (`GET /v1/datasets/{id}/report` on ingest).
    pub report_id: Uuid,
    /// The span of prediction time of the window.
    #[serde(default)]
    pub window_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub window_end: Option<DateTime<Utc>>,
    /// A sentence for people: what crossed which threshold, and what to do.
    pub message: String,
    /// The headline measured value (share of drifted features, accuracy, mean confidence,...).
    pub observed: f64,
    pub threshold: f64,
    /// The facts behind it.
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// Kind-specific detail.
    pub details: serde_json::Value,
    /// For a `data_quality` alert from ingest: the file that failed validation (stored as a
    /// rejected dataset and never announced on `data.ready`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<AlertDataset>,
}

/// The dataset an ingest alert is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertDataset {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    /// `sha256:<hex>` of the file.
    pub content_hash: String,
}

impl Event for Alert {
    const TYPE: &'static str = "petrel.alert.v1";
    fn subject(&self) -> String {
        match self.status {
            AlertStatus::Resolved => "alerts.resolved".to_owned(),
            _ => format!("alerts.{}", self.kind),
        }
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
