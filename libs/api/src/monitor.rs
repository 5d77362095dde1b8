//! Monitor API: `GET /v1/reports`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub feature: String,
    /// `kolmogorov_smirnov` or `chi_square`.
    pub method: String,
    pub statistic: f64,
    pub p_value: f64,
    pub drifted: bool,
    /// Live values the test used.
    pub n: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: Uuid,
    pub model_name: String,
    pub model_version: i32,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub n_predictions: i64,
    pub n_labels: i64,
    pub accuracy: Option<f64>,
    pub mean_confidence: Option<f64>,
    pub drift_share: Option<f64>,
    pub drift: Vec<FeatureDrift>,
    /// Alert kinds raised for this window.
    pub alerts: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportList {
    pub reports: Vec<Report>,
}
