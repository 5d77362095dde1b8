//! Registry API: experiments, runs, registered models, versions and aliases (MLflow's nouns).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::{ApiClient, ClientError, segment};

/// The alias the predictor serves.
pub const PRODUCTION: &str = "production";
/// The alias a version gets when it passes the gate but loses to the alias holder.
pub const CHALLENGER: &str = "challenger";
/// The metric that decides automatic promotion.
pub const PROMOTION_METRIC: &str = "test_accuracy";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateExperiment {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
    /// Stopped before it finished (MLflow's `KILLED`).
    Killed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Killed => "killed",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateRun {
    /// Experiment name; created if it does not exist.
    pub experiment: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Makes the call idempotent: a second call with the same token returns the first run.
    #[serde(default)]
    pub client_token: Option<String>,
    /// The run this one belongs to, such as the sweep a trial is part of. MLflow clients see
    /// it as the `mlflow.parentRunId` tag.
    #[serde(default)]
    pub parent_run_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricInput {
    pub key: String,
    pub value: f64,
    #[serde(default)]
    pub step: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogMetrics {
    pub metrics: Vec<MetricInput>,
}

/// The body of `POST /api/v1/runs/{id}/batch`: metrics, params and tags in one transaction.
/// Params are immutable (the same value again changes nothing; another value is a 409); tags
/// replace earlier values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogBatch {
    pub metrics: Vec<MetricInput>,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    pub step: i64,
    pub timestamp: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateRun {
    pub status: RunStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: Uuid,
    pub experiment_id: Uuid,
    pub experiment: String,
    pub name: Option<String>,
    pub status: RunStatus,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub metrics: Vec<Metric>,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    /// The run this one belongs to, if any.
    #[serde(default)]
    pub parent_run_id: Option<Uuid>,
    /// The datasets the run read, in the order they were logged.
    #[serde(default)]
    pub inputs: Vec<DatasetInput>,
}

/// A dataset a run read (MLflow's `DatasetInput`): which data, and in what role (the
/// `mlflow.data.context` tag: `training`, `evaluation`...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetInput {
    pub name: String,
    /// The content digest: the same name and digest are the same dataset.
    pub digest: String,
    /// Where it came from: `petrel-ingest`, `local`, `s3`...
    pub source_type: String,
    pub source: String,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The body of `POST /api/v1/runs/{id}/inputs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogInputs {
    pub inputs: Vec<DatasetInput>,
}

/// The tag naming a dataset input's role.
pub const DATASET_CONTEXT_TAG: &str = "mlflow.data.context";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateModelVersion {
    pub run_id: Uuid,
    pub artifact_uri: String,
    #[serde(default)]
    pub dataset_id: Option<Uuid>,
    /// Copied from the run; the promotion policy's metric decides automatic promotion.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub description: Option<String>,
    /// The held-out data the metrics were measured on. Versions are compared for automatic
    /// promotion only when they were evaluated on the same data.
    #[serde(default)]
    pub evaluation: Option<Evaluation>,
    /// The features the model takes, in order, and its target column.
    #[serde(default)]
    pub input_schema: Option<petrel_ml::Schema>,
    /// The classes the model answers with, in output order.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Champion/challenger on one holdout: the alias holder scored by the registering client
    /// on this version's own held-out rows. The promotion policy then compares the two scores
    /// from the same rows instead of scores from different evaluations.
    #[serde(default)]
    pub champion_score: Option<ChampionScore>,
}

/// The alias holder's metrics on a candidate's held-out rows (see
/// [`CreateModelVersion::champion_score`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChampionScore {
    /// The version that was scored; it must still hold the alias when the candidate registers.
    pub version: i32,
    /// Its metrics under the candidate's metric names (`test_accuracy`, `test_log_loss`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// The held-out rows both were scored on.
    pub rows: u64,
}

/// The held-out data a version's metrics come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The dataset the held-out rows were taken from.
    pub dataset_id: Uuid,
    /// Its content digest (`sha256:<hex>`).
    pub digest: String,
    /// How the rows were chosen, e.g. `stratified test split 0.2, seed 42`.
    pub split: String,
    /// Held-out rows.
    pub rows: u64,
}

/// How a model's versions are promoted automatically. A version is promoted to `alias` when
/// its `metric` passes the gate (declared, at least `min_value` when set, measured on at least
/// `min_eval_rows` rows) and, when the alias already points at a version, beats that version
/// by `margin` on the same evaluation data. Anything else is registered, not promoted, and
/// the decision says why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromotionPolicy {
    /// Promote automatically at all.
    pub auto: bool,
    pub alias: String,
    pub metric: String,
    /// Whether larger values of `metric` are better (accuracy) or smaller (log loss).
    pub higher_is_better: bool,
    /// The gate: the least acceptable value (the most, when smaller is better).
    pub min_value: Option<f64>,
    /// Fewest held-out rows a metric may come from.
    pub min_eval_rows: u64,
    /// How much better than the alias holder a candidate must be.
    pub margin: f64,
    /// Compare only versions evaluated on the same dataset, digest and split (a champion
    /// scored on the candidate's own held-out rows always is).
    pub same_evaluation: bool,
    /// The alias a version gets when it passes the gate but does not beat the alias holder
    /// (`null`: none).
    pub challenger_alias: Option<String>,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self {
            auto: true,
            alias: PRODUCTION.to_owned(),
            metric: PROMOTION_METRIC.to_owned(),
            higher_is_better: true,
            min_value: None,
            min_eval_rows: 30,
            margin: 0.0,
            same_evaluation: true,
            challenger_alias: Some(CHALLENGER.to_owned()),
        }
    }
}

/// What the policy decided for a version when it was registered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromotionDecision {
    pub alias: String,
    pub promoted: bool,
    /// Why, in words.
    pub reason: String,
    pub metric: String,
    /// The candidate's value of the metric.
    pub candidate: Option<f64>,
    /// The alias holder it was compared with, and its value.
    pub champion_version: Option<i32>,
    /// The alias holder's value it was compared with: on the candidate's held-out rows when
    /// the registering client scored it there, else its own recorded value.
    pub champion: Option<f64>,
    /// The alias holder's value as recorded when it was registered.
    #[serde(default)]
    pub champion_recorded: Option<f64>,
    /// What the two values were measured on: `shared holdout` (the same rows, scored by the
    /// registering client) or `same evaluation` (equal recorded evaluations); absent when there
    /// was no comparison.
    #[serde(default)]
    pub compared_on: Option<String>,
    /// The alias the version took because it lost to the alias holder.
    #[serde(default)]
    pub challenger: Option<String>,
    pub policy: PromotionPolicy,
    pub decided_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model_name: String,
    pub version: i32,
    pub run_id: Uuid,
    pub artifact_uri: String,
    pub dataset_id: Option<Uuid>,
    pub metrics: BTreeMap<String, f64>,
    pub description: Option<String>,
    /// Aliases pointing at this version now.
    pub aliases: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub evaluation: Option<Evaluation>,
    /// The automatic promotion decision made when it was registered.
    #[serde(default)]
    pub promotion: Option<PromotionDecision>,
    /// Free-form tags (MLflow's model version tags).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The features the model takes and its target, when the registering client said.
    #[serde(default)]
    pub input_schema: Option<petrel_ml::Schema>,
    /// The classes the model answers with, in output order (empty when not given).
    #[serde(default)]
    pub class_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisteredModel {
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub latest_version: Option<i32>,
    pub aliases: BTreeMap<String, i32>,
    /// Free-form tags (MLflow's registered model tags).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The answer to `POST /api/v1/runs/{id}/metrics` and `/batch`: how many metric points were
/// appended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsLogged {
    pub run_id: Uuid,
    pub logged: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetAlias {
    pub version: i32,
    /// Why the alias moves, kept in its history.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who moves it, kept in its history (an authenticated caller's token name wins).
    #[serde(default)]
    pub actor: Option<String>,
}

/// A typed client for the registry.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    api: ApiClient,
}

impl RegistryClient {
    pub fn new(base: &str) -> Self {
        Self {
            api: ApiClient::new(base),
        }
    }

    /// The same client, authenticating with a registry token (`None`: no token).
    #[must_use]
    pub fn with_token(self, token: Option<&str>) -> Self {
        Self {
            api: self.api.with_token(token),
        }
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    pub async fn create_run(&self, req: &CreateRun) -> Result<Run, ClientError> {
        self.api.post("/api/v1/runs", req).await
    }

    /// Logs metric points; the answer says how many, whatever the run's history holds.
    pub async fn log_metrics(
        &self,
        run: Uuid,
        req: &LogMetrics,
    ) -> Result<MetricsLogged, ClientError> {
        self.api
            .post(&format!("/api/v1/runs/{run}/metrics"), req)
            .await
    }

    /// Logs metrics, params and tags in one transaction (see [`LogBatch`]).
    pub async fn log_batch(&self, run: Uuid, req: &LogBatch) -> Result<MetricsLogged, ClientError> {
        self.api
            .post(&format!("/api/v1/runs/{run}/batch"), req)
            .await
    }

    /// Records the datasets a run read; answers with the run. Logging a dataset (name and
    /// digest) the run already has changes nothing.
    pub async fn log_inputs(&self, run: Uuid, req: &LogInputs) -> Result<Run, ClientError> {
        self.api
            .post(&format!("/api/v1/runs/{run}/inputs"), req)
            .await
    }

    pub async fn update_run(&self, run: Uuid, status: RunStatus) -> Result<Run, ClientError> {
        self.api
            .patch(&format!("/api/v1/runs/{run}"), &UpdateRun { status })
            .await
    }

    pub async fn get_run(&self, run: Uuid) -> Result<Run, ClientError> {
        self.api.get(&format!("/api/v1/runs/{run}")).await
    }

    pub async fn create_version(
        &self,
        model: &str,
        req: &CreateModelVersion,
    ) -> Result<ModelVersion, ClientError> {
        self.api
            .post(&format!("/api/v1/models/{}/versions", segment(model)), req)
            .await
    }

    pub async fn get_model(&self, model: &str) -> Result<RegisteredModel, ClientError> {
        self.api
            .get(&format!("/api/v1/models/{}", segment(model)))
            .await
    }

    pub async fn get_version(
        &self,
        model: &str,
        version: i32,
    ) -> Result<ModelVersion, ClientError> {
        self.api
            .get(&format!(
                "/api/v1/models/{}/versions/{version}",
                segment(model)
            ))
            .await
    }

    /// The version an alias points at; `Ok(None)` when the alias (or model) does not exist.
    pub async fn get_alias(
        &self,
        model: &str,
        alias: &str,
    ) -> Result<Option<ModelVersion>, ClientError> {
        let path = format!(
            "/api/v1/models/{}/aliases/{}",
            segment(model),
            segment(alias)
        );
        match self.api.get(&path).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The model's promotion policy; `Ok(None)` when the model does not exist yet.
    pub async fn get_policy(&self, model: &str) -> Result<Option<PromotionPolicy>, ClientError> {
        match self
            .api
            .get(&format!("/api/v1/models/{}/policy", segment(model)))
            .await
        {
            Ok(p) => Ok(Some(p)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: i32,
    ) -> Result<ModelVersion, ClientError> {
        let path = format!(
            "/api/v1/models/{}/aliases/{}",
            segment(model),
            segment(alias)
        );
        self.api
            .put(
                &path,
                &SetAlias {
                    version,
                    reason: None,
                    actor: None,
                },
            )
            .await
    }
}
