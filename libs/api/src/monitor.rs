//! Monitor API: `GET /v1/reports`, `GET /v1/reports/{id}`, `GET /v1/reports/{id}/revisions`
//! and `GET /v1/alerts`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
pub use petrel_drift::DatasetVerdict;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One feature's drift test, in short (the full result is in `drift_verdict`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub feature: String,
    /// The method's wire name (`kolmogorov_smirnov`, `chi_square`, `z_test`, ...).
    pub method: String,
    pub statistic: f64,
    /// The raw p-value (the distance, for distance methods).
    pub p_value: f64,
    pub drifted: bool,
    /// Live values the test used.
    pub n: usize,
}

/// A window's report: one span of prediction time of one model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: Uuid,
    pub model_name: String,
    pub model_version: i32,
    /// The span of prediction time, `[window_start, window_end)`.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub n_predictions: i64,
    /// Labels joined to this window's predictions so far.
    pub n_labels: i64,
    /// Accuracy on those labels; null below `--min-labels`.
    pub accuracy: Option<f64>,
    pub mean_confidence: Option<f64>,
    pub drift_share: Option<f64>,
    pub drift: Vec<FeatureDrift>,
    /// Alert kinds whose condition held in this window (whether or not it notified: an open
    /// episode notifies once).
    pub alerts: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// 1 when the window closed; +1 each time labels revised its quality.
    #[serde(default)]
    pub revision: i32,
    /// Whether quality is final (label coverage reached or grace period over).
    #[serde(default)]
    pub quality_final: bool,
    #[serde(flatten)]
    pub detail: ReportDetail,
}

/// The parts of a report beyond its headline numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportDetail {
    /// Predictions the drift tests used (a uniform sample of at most `--drift-sample`).
    #[serde(default)]
    pub sampled: i64,
    /// Why drift was not tested, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Feature drift: per column method, statistic, p-values, threshold, verdict, histogram.
    #[serde(default)]
    pub drift_verdict: Option<DatasetVerdict>,
    /// Drift of predicted classes (`predicted_class`) and confidence (`confidence`) against
    /// the model's outputs on its held-out split.
    #[serde(default)]
    pub prediction_drift: Option<DatasetVerdict>,
    #[serde(default)]
    pub data_quality: Vec<ColumnQuality>,
    /// Share of predictions whose confidence is below `--low-confidence`.
    #[serde(default)]
    pub low_confidence_share: Option<f64>,
    #[serde(default)]
    pub estimated_accuracy: Option<EstimatedAccuracy>,
    #[serde(default)]
    pub quality: Option<Quality>,
    #[serde(default)]
    pub trends: Vec<Trend>,
}

/// Data-quality measurements of one column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnQuality {
    pub column: String,
    pub missing_share: f64,
    pub reference_missing_share: f64,
    /// Benjamini-Hochberg adjusted p-value of the missing share's change (from the drift
    /// tests), when there were missing values on either side.
    pub missing_adjusted_p_value: Option<f64>,
    /// Numeric columns: share of values outside the training range.
    pub out_of_range_share: Option<f64>,
    /// Categorical columns: share of values of categories training never saw.
    pub unseen_share: Option<f64>,
    /// Up to five of those categories.
    #[serde(default)]
    pub unseen: Vec<String>,
    /// What is wrong, in words; empty when nothing is.
    #[serde(default)]
    pub issues: Vec<String>,
}

/// Accuracy estimated from confidence (CBPE) before labels arrive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EstimatedAccuracy {
    pub accuracy: f64,
    pub std_error: f64,
    /// Predictions averaged over.
    pub n: usize,
    /// `cbpe`: isotonic calibration of confidence on the held-out split.
    pub method: String,
    /// Held-out rows the calibration was fitted on.
    pub calibration_rows: usize,
}

/// Quality from labels joined to this window's predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub n_labels: i64,
    /// `n_labels / n_predictions`.
    pub coverage: f64,
    pub accuracy: f64,
    /// Mean negative log-probability of the true class (probabilities clamped at 1e-15), over
    /// labels whose prediction carried probabilities.
    pub log_loss: Option<f64>,
    pub per_class: BTreeMap<String, ClassMetrics>,
    pub confusion: Confusion,
    /// Accuracy on the held-out split at training time, for comparison.
    pub reference_accuracy: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Labels of this class.
    pub support: u64,
}

/// `matrix[i][j]`: labelled `classes[i]`, predicted `classes[j]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub classes: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

/// The slope of a metric over the last windows (`x` = window number, 0 for the oldest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub metric: String,
    pub slope: f64,
    pub intercept: f64,
    pub std_error: f64,
    /// One-sided p-value of "not declining" (Student's t with n - 2 degrees of freedom).
    pub p_value: f64,
    /// Windows in the fit.
    pub n: usize,
    pub last: f64,
    /// The fitted value `horizon` windows after the latest.
    pub projected: f64,
    pub horizon: usize,
    pub threshold: f64,
    /// Declining significantly, still at or above the threshold, projected below it.
    pub declining: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportList {
    pub reports: Vec<Report>,
}

/// One revision of a window's quality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityRevision {
    pub revision: i32,
    pub n_labels: i64,
    pub quality: Option<Quality>,
    pub quality_final: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevisionList {
    pub report_id: Uuid,
    pub revisions: Vec<QualityRevision>,
}

/// One alert notification, as `GET /v1/alerts` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The event id it was published with (deduplicate by it).
    pub id: Uuid,
    pub episode_id: Uuid,
    pub kind: String,
    /// `opened`, `renotified` or `resolved`.
    pub status: String,
    pub severity: String,
    pub model_name: String,
    pub model_version: i32,
    pub key: Option<String>,
    pub report_id: Uuid,
    pub message: String,
    pub observed: f64,
    pub threshold: f64,
    pub evidence: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// Whether the episode is still open.
    pub episode_open: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertList {
    pub alerts: Vec<AlertRecord>,
}
