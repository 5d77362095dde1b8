//! Where predictions are computed: in process (`local`), or by an AWS SageMaker endpoint
//! (`sagemaker`). Whichever it is, the predictor validates the rows against the served bundle's
//! schema first, and logs and answers the backend's predictions the same way, so responses,
//! logs and events have one shape.

pub mod sagemaker;

use std::sync::Arc;
use std::time::Duration;

use petrel_ml::{FeatureRow, MlError, Prediction};
use serde_json::value::RawValue;

use crate::Served;

/// Which [`Backend`] computes predictions (`--backend`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// In process, from the bundle the predictor loaded.
    #[default]
    Local,
    /// A SageMaker real-time endpoint running the container mode (see [`sagemaker`]).
    Sagemaker,
}

/// The backend `config` selects, checked and ready; a misconfigured one stops start-up with an
/// error that names the flag to fix.
pub async fn from_config(config: &crate::Config) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match config.backend {
        BackendKind::Local => Arc::new(Local),
        BackendKind::Sagemaker => Arc::new(
            sagemaker::SageMaker::connect(
                &config.sagemaker,
                Duration::from_millis(config.request_timeout_ms.max(1)),
            )
            .await?,
        ),
    })
}

/// One validated row as a backend receives it.
#[derive(Debug)]
pub struct BackendRow<'a> {
    pub inference_id: &'a str,
    /// The features as the JSON text the client sent.
    pub features: &'a RawValue,
    /// The features checked against the schema.
    pub row: &'a FeatureRow,
}

/// Why a backend gave no predictions. Each maps to a status a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Row `row` (of the slice given) is outside what the model can score: 422.
    #[error("feature values are outside the range this model can score")]
    OutOfRange { row: usize },
    /// The model itself failed (SageMaker's `ModelError`): 502, with its message.
    #[error("the model endpoint failed to score the rows: {0}")]
    Model(String),
    /// The endpoint refused for load (throttling): 503 with `Retry-After`.
    #[error("the model endpoint is throttling requests; retry in a moment")]
    Throttled,
    /// No answer in time: 504.
    #[error("the model endpoint did not answer within {0:?}")]
    Timeout(Duration),
    /// The endpoint could not be reached or answered something unreadable: 502.
    #[error("the model endpoint is unavailable: {0}")]
    Unavailable(String),
}

/// A place that computes predictions.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `local` or `sagemaker`, for logs and `/v1/model`.
    fn name(&self) -> &'static str;

    /// One prediction per row, in order, for rows already validated against `served`'s schema.
    async fn predict(
        &self,
        served: &Served,
        rows: &[BackendRow<'_>],
    ) -> Result<Vec<Prediction>, BackendError>;
}

/// The bundle in process: a plain-Rust forward pass, microseconds per row.
#[derive(Debug, Default)]
pub struct Local;

#[async_trait::async_trait]
impl Backend for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn predict(
        &self,
        served: &Served,
        rows: &[BackendRow<'_>],
    ) -> Result<Vec<Prediction>, BackendError> {
        let rows: Vec<&FeatureRow> = rows.iter().map(|r| r.row).collect();
        served.model.try_predict_refs(&rows).map_err(|e| match e {
            MlError::OutOfRange { row } => BackendError::OutOfRange { row },
            other => BackendError::Unavailable(other.to_string()),
        })
    }
}
