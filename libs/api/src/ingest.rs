//! Ingest API: `POST /v1/datasets`, its validation rules and reports.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use petrel_ml::{DatasetPurpose, RowError, Schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A file to validate and store, CSV or Parquet. Give the file's text in `csv`, a `path` the
/// ingest service can read (under its data directory), an object `uri` (`s3://bucket/key`), or
/// a generator to `generate` it. Large files are better streamed to `POST /v1/datasets/upload`
/// (multipart: this request without a source as the `spec` part, then the `file` part).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub name: String,
    pub schema: Schema,
    #[serde(default)]
    pub csv: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// An object to read, `s3://bucket/key`, reached with the artifact store's S3 settings
    /// (endpoint, region, credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// A seeded generator that simulates a feed: the same spec gives the same rows (so the same
    /// dataset, by content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generator>,
    /// What the dataset is for: `training` (the default), `scoring` (scored in bulk by the
    /// predictor serving a model of the same name) or `reference`.
    #[serde(default)]
    pub purpose: DatasetPurpose,
    /// Rules beyond the schema: value ranges, categories, missing-value and duplicate limits.
    #[serde(default, skip_serializing_if = "Checks::is_empty")]
    pub checks: Checks,
}

/// The `spec` part of a streamed upload (`POST /v1/datasets/upload`, multipart): what
/// [`IngestRequest`] says, less the source, which is the `file` part that follows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSpec {
    pub name: String,
    pub schema: Schema,
    #[serde(default)]
    pub purpose: DatasetPurpose,
    #[serde(default, skip_serializing_if = "Checks::is_empty")]
    pub checks: Checks,
}

/// Validation rules beyond the schema. A row breaking a column rule is rejected (reported
/// with its line and left out); a file breaking a file rule is stored as rejected and raises
/// `alerts.data_quality` instead of `data.ready`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// Rules per column (a feature or the target), by column name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, ColumnCheck>,
    /// Reject the file when more than this share of its rows is rejected (the service's
    /// `--max-rejected-fraction` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rejected_share: Option<f64>,
    /// Reject the file when more than this share of its accepted rows repeat an earlier row
    /// exactly (duplicates are counted in every report; no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duplicate_share: Option<f64>,
}

impl Checks {
    pub fn is_empty(&self) -> bool {
        self == &Checks::default()
    }
}

/// Rules for one column.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnCheck {
    /// Smallest allowed value of a numeric column; a row below it is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value of a numeric column; a row above it is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The allowed values of a categorical column or of the target; a row with another is
    /// rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// Reject the file when more than this share of the column's values is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_missing_share: Option<f64>,
}

/// Whether a dataset passed validation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetStatus {
    /// Validated, stored and announced on `data.ready`.
    #[default]
    Accepted,
    /// Stored for inspection but failed validation; announced on `alerts.data_quality` and
    /// never used.
    Rejected,
}

impl DatasetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetStatus::Accepted => "accepted",
            DatasetStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(DatasetStatus::Accepted),
            "rejected" => Some(DatasetStatus::Rejected),
            _ => None,
        }
    }
}

/// What validation found in one file: `GET /v1/datasets/{id}/report`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Data rows read (the header not counted).
    pub rows: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Accepted rows that repeat an earlier accepted row exactly.
    pub duplicates: u64,
    /// Why the file was rejected, each with how to fix it; empty when it was accepted.
    pub problems: Vec<String>,
    /// Rejected rows per column at fault (`(row)` for a row-level problem such as a wrong
    /// field count).
    pub rejected_by_column: BTreeMap<String, u64>,
    /// The first rejected rows (at most 100), with the line and why.
    pub errors: Vec<RowError>,
    /// A summary of every column over the accepted rows, features then target.
    pub columns: Vec<ColumnSummary>,
}

/// A summary of one column over the accepted rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnSummary {
    pub name: String,
    /// `numeric`, `categorical`, `text`, `image`, or `target`.
    pub kind: String,
    /// Values present.
    pub count: u64,
    pub missing: u64,
    pub missing_share: f64,
    /// For numeric columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// For numeric columns: the 5th, 25th, 50th, 75th and 95th percentiles, interpolated
    /// linearly between order statistics (as pandas' `quantile` and `describe` do).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quantiles: BTreeMap<String, f64>,
    /// Set when the column has more values than ingest keeps for quantiles (500,000): the
    /// quantiles then come from a uniform sample of this many values (min, max, mean and
    /// counts stay exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile_sample: Option<u64>,
    /// For categorical columns and the target: distinct values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
    /// For categorical columns and the target: the most frequent values (at most 10), most
    /// frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<CategoryCount>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryCount {
    pub value: String,
    pub count: u64,
}

/// A generator of simulated data, named by `generator`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "generator", rename_all = "snake_case")]
pub enum Generator {
    /// Labelled product reviews for the text model ([`Schema::reviews`]): `rows`, `seed`,
    /// `shift` (share of sentiment words drawn from a vocabulary training never saw) and
    /// `noise` (share of flipped labels).
    Reviews(petrel_ml::ReviewSpec),
    /// Penguins resampled from the bundled data ([`Schema::penguins`]): `rows`, `seed`,
    /// `drift` and `noise` (in standard deviations of each measurement) and `missing` (share
    /// of measurements blanked).
    Penguins(petrel_ml::PenguinSpec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    /// What training reads: the file as uploaded, or its accepted rows only when a column
    /// rule rejected some.
    pub uri: String,
    /// The file as it came, in the artifact store.
    #[serde(default)]
    pub source_uri: String,
    /// Where the file came from: `upload`, `path:<path>`, `generate:<generator>`, or
    /// `schedule:<name>`.
    #[serde(default)]
    pub source: String,
    /// Whether the file passed validation.
    #[serde(default)]
    pub status: DatasetStatus,
    pub content_hash: String,
    pub row_count: u64,
    pub rejected_rows: u64,
    pub schema: Schema,
    pub created_at: DateTime<Utc>,
    /// What the dataset is for, as given when it was ingested.
    #[serde(default)]
    pub purpose: DatasetPurpose,
    /// The rules the file was validated with.
    #[serde(default, skip_serializing_if = "Checks::is_empty")]
    pub checks: Checks,
    /// The schedule interval that produced it, when a schedule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
}

/// A schedule's data interval `[start, end)`: the run key of the dataset it produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub schedule: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub dataset: Dataset,
    /// False when the same content was already ingested under this name (nothing new happened).
    pub created: bool,
    /// The rows left out, with why (at most the first 100).
    pub errors: Vec<RowError>,
    /// What validation found.
    #[serde(default)]
    pub report: ValidationReport,
}

/// `PUT /v1/schedules/{name}`: a source ingested once per interval. Give `every` (a fixed
/// period from `start`) or `cron` (a five-field expression read in `timezone`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A fixed period: `30s`, `15m`, `1h`, `1d` or `1w`, counted from `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// A cron expression (`0 2 * * *`, `@daily`), read in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// An IANA time zone (`UTC`, `Europe/Paris`): required, so nobody guesses.
    pub timezone: String,
    /// No interval starts before this.
    pub start: DateTime<Utc>,
    /// No interval ends after this (open-ended when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// Run every interval missed since `start` or since the last run, in order (off: only the
    /// latest finished interval runs, as in Airflow 3).
    #[serde(default)]
    pub catchup: bool,
    /// Runs of this schedule in progress at once (1 to 32).
    #[serde(default = "one")]
    pub max_active_runs: u32,
    /// Attempts after the first before a run is marked failed (0 to 20).
    #[serde(default = "three")]
    pub retries: u32,
    /// Wait before the first retry, in seconds; each further retry waits twice as long.
    #[serde(default = "thirty")]
    pub retry_delay_seconds: u64,
    /// Paused schedules plan and start nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What each run ingests.
    pub dataset: ScheduledDataset,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn thirty() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// What a schedule's run ingests: a file by `path` or object `uri` (templates: `{ds}`,
/// `{ds_nodash}`, `{start}`, `{end}` are replaced by the interval's) or a seeded `generate` spec (its seed
/// mixed with the interval's start, so each interval has its own reproducible rows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledDataset {
    pub name: String,
    pub schema: Schema,
    #[serde(default, skip_serializing_if = "Checks::is_empty")]
    pub checks: Checks,
    #[serde(default)]
    pub purpose: DatasetPurpose,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An object URI template, `s3://bucket/events/{ds}.csv`, rendered like `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generator>,
}

/// A schedule as stored, with where it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub spec: ScheduleSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The next interval to finish, whose run is due at its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_interval: Option<IntervalTimes>,
    /// Runs by status.
    #[serde(default)]
    pub runs: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalTimes {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Where one interval's run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for its turn (or for its retry delay).
    Queued,
    /// An ingest instance holds its lease and is running it.
    Running,
    /// It produced an accepted dataset.
    Succeeded,
    /// It produced a dataset that failed validation (announced on `alerts.data_quality`);
    /// retrying the same data cannot help, so it is not retried.
    Rejected,
    /// Every attempt failed; announced on `alerts.data_quality`.
    Failed,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Rejected,
        RunStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Rejected => "rejected",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        RunStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One interval's run: `GET /v1/schedules/{name}/runs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRun {
    pub id: Uuid,
    pub schedule: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: RunStatus,
    /// `scheduled`, `catchup` or `backfill`.
    pub trigger: String,
    pub attempts: u32,
    /// The last attempt's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<Uuid>,
    /// When a queued run may start (its retry delay).
    pub not_before: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Which existing runs a backfill runs again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reprocess {
    /// Only intervals without a run.
    #[default]
    SkipExisting,
    /// Those too, and runs that failed or were rejected.
    Failed,
    /// Every interval in the range, whatever its run did (runs in progress are left alone).
    All,
}

/// `POST /v1/schedules/{name}/backfill`: re-create the intervals starting in `[from, to)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[serde(default)]
    pub reprocess: Reprocess,
    /// Say what would happen, and do nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a backfill did (or, dry, would do) to each interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackfillResponse {
    pub dry_run: bool,
    /// Intervals without a run, queued now.
    pub created: u64,
    /// Existing runs queued again.
    pub requeued: u64,
    /// Existing runs left as they were.
    pub skipped: u64,
    pub intervals: Vec<BackfillInterval>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackfillInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `create`, `requeue` or `skip`.
    pub action: String,
    /// The existing run's status, for `requeue` and `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
}

/// `GET /v1/lineage/predictions/{inference_id}`: one prediction traced back to its data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictionLineage {
    /// The logged prediction, as the predictor's `GET /v1/predictions/{id}` shows it.
    pub prediction: serde_json::Value,
    /// The model version that made it, as the registry has it.
    pub model_version: crate::registry::ModelVersion,
    /// The run that trained that version.
    pub run: RunLineage,
    /// The datasets the run read, each with where it came from and its validation report.
    pub datasets: Vec<DatasetLineage>,
}

/// The parts of a run that say how a model was trained (its metric history stays in the
/// registry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunLineage {
    pub id: Uuid,
    pub experiment: String,
    pub name: Option<String>,
    pub status: crate::registry::RunStatus,
    pub params: BTreeMap<String, String>,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    pub parent_run_id: Option<Uuid>,
}

/// One dataset a run read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetLineage {
    /// The run input's role (`training`, `evaluation`, ...).
    pub role: Option<String>,
    pub name: String,
    pub digest: String,
    /// The dataset as ingest recorded it (source, interval, schema, checks), when ingest made
    /// it; absent for inputs logged from elsewhere (an MLflow client's local file).
    pub dataset: Option<Dataset>,
    /// How it was validated.
    pub report: Option<ValidationReport>,
}
