//! Ingest API: `POST /v1/datasets`.

use chrono::{DateTime, Utc};
use petrel_ml::{DatasetPurpose, RowError, Schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A CSV batch to validate and store. Give the file's text in `csv`, or a `path` the ingest
/// service can read (on its own machine).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub name: String,
    pub schema: Schema,
    #[serde(default)]
    pub csv: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// What the dataset is for: `training` (the default), `scoring` (scored in bulk by the
    /// predictor serving a model of the same name) or `reference`.
    #[serde(default)]
    pub purpose: DatasetPurpose,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    pub uri: String,
    pub content_hash: String,
    pub row_count: u64,
    pub rejected_rows: u64,
    pub schema: Schema,
    pub created_at: DateTime<Utc>,
    /// What the dataset is for, as given when it was ingested.
    #[serde(default)]
    pub purpose: DatasetPurpose,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub dataset: Dataset,
    /// False when the same content was already ingested under this name (nothing new happened).
    pub created: bool,
    /// The rows left out, with why (at most the first 100).
    pub errors: Vec<RowError>,
}
