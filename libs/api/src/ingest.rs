//! Ingest API: `POST /v1/datasets`.

use chrono::{DateTime, Utc};
use petrel_ml::{DatasetPurpose, RowError, Schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A CSV batch to validate and store. Give the file's text in `csv`, a `path` the ingest
/// service can read (on its own machine), or a generator to `generate` it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub name: String,
    pub schema: Schema,
    #[serde(default)]
    pub csv: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// A seeded generator that simulates a feed: the same spec gives the same rows (so the same
    /// dataset, by content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generator>,
    /// What the dataset is for: `training` (the default), `scoring` (scored in bulk by the
    /// predictor serving a model of the same name) or `reference`.
    #[serde(default)]
    pub purpose: DatasetPurpose,
}

/// A generator of simulated data, named by `generator`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "generator", rename_all = "snake_case")]
pub enum Generator {
    /// Labelled product reviews for the text model ([`Schema::reviews`]): `rows`, `seed`,
    /// `shift` (share of sentiment words drawn from a vocabulary training never saw) and
    /// `noise` (share of flipped labels).
    Reviews(petrel_ml::ReviewSpec),
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
