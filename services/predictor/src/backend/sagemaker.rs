//! The `sagemaker` backend: predictions computed by an AWS SageMaker real-time endpoint that
//! hosts the same model in Petrel's container mode (`petrel-predictor serve`, see
//! [`crate::container`]).
//!
//! The predictor still does everything around the prediction itself (validation against the
//! served bundle's schema, inference ids, replays, the prediction log, the response), so the
//! only thing that changes with the backend is where the forward pass runs. Each request is one
//! `InvokeEndpoint` call carrying Petrel's native body, `{"rows": [{"inference_id", "features"}]}`,
//! built from the features as the client sent them (never parsed again), and answered in the
//! native `{"predictions": [...]}` shape ([`PredictResponse`]).
//!
//! Credentials come from the standard AWS chain (environment, shared files, web identity, ECS,
//! EC2 instance metadata), refreshed by the SDK; this module never sees them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use aws_sdk_sagemakerruntime::Client;
use aws_sdk_sagemakerruntime::config::retry::RetryConfig;
use aws_sdk_sagemakerruntime::config::timeout::TimeoutConfig;
use aws_sdk_sagemakerruntime::config::{BehaviorVersion, Region};
use aws_sdk_sagemakerruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_sdk_sagemakerruntime::types::error::ModelError;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use petrel_api::predictor::PredictResponse;
use petrel_ml::Prediction;

use super::{Backend, BackendError, BackendRow};
use crate::Served;

/// SageMaker's limit on `InferenceId` (1 to 64 printable characters, not starting with a
/// space). Petrel's ids may be longer (128); those are still sent in the body, just not as the
/// request's `InferenceId`.
const MAX_SAGEMAKER_INFERENCE_ID: usize = 64;

/// How much of a container's error message is passed on, so a model that answers with a page
/// of HTML does not fill the predictor's logs and responses.
const MAX_MODEL_MESSAGE: usize = 512;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`]. Shorter than the SDK's
/// one second because a prediction is on a caller's critical path, and the whole call is
/// bounded by `--sagemaker-timeout-ms` anyway.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Error codes SageMaker (or the AWS front end) uses to say "not now": answered as 503 with
/// `Retry-After`, so the caller backs off instead of treating the model as broken.
const THROTTLING_CODES: [&str; 5] = [
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "ServiceUnavailable",
    // A serverless endpoint still provisioning, or a multi-model endpoint still loading.
    "ModelNotReadyException",
];

/// The `sagemaker` backend's settings (used with `--backend sagemaker`).
#[derive(clap::Args, Clone, Debug)]
pub struct SageMakerArgs {
    /// Name of the SageMaker endpoint to invoke. Required with `--backend sagemaker`.
    #[arg(long = "sagemaker-endpoint", env = "PETREL_SAGEMAKER_ENDPOINT")]
    pub endpoint: Option<String>,
    /// AWS region of the endpoint. Without it, the AWS SDK's region chain is asked
    /// (`AWS_DEFAULT_REGION`, the shared config's profile, instance metadata).
    #[arg(long = "sagemaker-region", env = "AWS_REGION")]
    pub region: Option<String>,
    /// Base URL to send SageMaker runtime calls to instead of the region's public one: a VPC
    /// interface endpoint, or a test server. Requests are signed for the region either way.
    #[arg(long = "sagemaker-endpoint-url", env = "PETREL_SAGEMAKER_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Longest one prediction call may take, retries included, before the request gets a 504
    /// (ms). Keep it below `--request-timeout-ms`, or callers get the predictor's 503 first.
    #[arg(
        long = "sagemaker-timeout-ms",
        env = "PETREL_SAGEMAKER_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub timeout_ms: u64,
    /// Longest one attempt may take before it is abandoned and, time allowing, retried (ms).
    /// Defaults to `--sagemaker-timeout-ms`, so a slow answer is waited for rather than
    /// retried; lower it when the model answers in a known, short time.
    #[arg(
        long = "sagemaker-attempt-timeout-ms",
        env = "PETREL_SAGEMAKER_ATTEMPT_TIMEOUT_MS"
    )]
    pub attempt_timeout_ms: Option<u64>,
    /// Attempts per call, the first included: throttling, 5xx answers, timed-out attempts and
    /// connection failures are retried with jittered exponential backoff from 100 ms.
    #[arg(
        long = "sagemaker-max-attempts",
        env = "PETREL_SAGEMAKER_MAX_ATTEMPTS",
        default_value_t = 3
    )]
    pub max_attempts: u32,
}

/// The checked settings: what [`SageMakerArgs`] becomes once start-up has validated it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Settings {
    endpoint: String,
    timeout: Duration,
    attempt_timeout: Duration,
    max_attempts: u32,
}

impl SageMakerArgs {
    /// Checks the settings, with errors that name the flag to fix. `request_timeout` is the
    /// predictor's own bound on a request (`--request-timeout-ms`).
    fn settings(&self, request_timeout: Duration) -> anyhow::Result<Settings> {
        let endpoint = self
            .endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .context(
                "--backend sagemaker needs the name of the endpoint to invoke: set \
                 --sagemaker-endpoint (or PETREL_SAGEMAKER_ENDPOINT)",
            )?
            .to_owned();
        anyhow::ensure!(
            self.timeout_ms > 0,
            "--sagemaker-timeout-ms must be at least 1"
        );
        anyhow::ensure!(
            self.max_attempts > 0,
            "--sagemaker-max-attempts must be at least 1 (1 means no retries)"
        );
        let timeout = Duration::from_millis(self.timeout_ms);
        anyhow::ensure!(
            timeout < request_timeout,
            "--sagemaker-timeout-ms ({} ms) must be below --request-timeout-ms ({} ms), so a \
             slow endpoint is answered with a 504 rather than cut off by the predictor",
            self.timeout_ms,
            request_timeout.as_millis()
        );
        let attempt_timeout = self
            .attempt_timeout_ms
            .map_or(timeout, Duration::from_millis);
        anyhow::ensure!(
            !attempt_timeout.is_zero() && attempt_timeout <= timeout,
            "--sagemaker-attempt-timeout-ms must be between 1 and --sagemaker-timeout-ms ({} ms)",
            self.timeout_ms
        );
        Ok(Settings {
            endpoint,
            timeout,
            attempt_timeout,
            max_attempts: self.max_attempts,
        })
    }
}

/// Predictions from a SageMaker endpoint.
#[derive(Debug)]
pub struct SageMaker {
    client: Client,
    endpoint: String,
    /// The whole call's bound, reported in 504s.
    timeout: Duration,
    /// The last model version the endpoint answered with that was not the served one, so the
    /// mismatch is logged once per version rather than on every request.
    warned_version: AtomicI64,
}

impl SageMaker {
    /// Checks the settings and builds the client. Nothing is sent yet: credentials are
    /// resolved, and the endpoint reached, on the first prediction.
    pub async fn connect(args: &SageMakerArgs, request_timeout: Duration) -> anyhow::Result<Self> {
        let settings = args.settings(request_timeout)?;
        // rustls with ring rather than the SDK's default aws-lc: the same TLS stack the rest
        // of Petrel uses, and no C library to build.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &args.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let region = shared.region().cloned().context(
            "--backend sagemaker needs the endpoint's AWS region: set --sagemaker-region (or \
             AWS_REGION)",
        )?;
        // Retries and timeouts for this client only: the credential providers keep theirs.
        let mut config = aws_sdk_sagemakerruntime::config::Builder::from(&shared)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(INITIAL_BACKOFF)
                    .with_max_backoff(MAX_BACKOFF),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(settings.timeout)
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .build(),
            );
        if let Some(url) = &args.endpoint_url {
            config = config.endpoint_url(url);
        }
        tracing::info!(
            sagemaker.endpoint = %settings.endpoint,
            sagemaker.region = %region,
            sagemaker.endpoint_url = args.endpoint_url.as_deref().unwrap_or("(the region's)"),
            timeout_ms = settings.timeout.as_millis() as u64,
            max_attempts = settings.max_attempts,
            "predicting through a SageMaker endpoint"
        );
        Ok(Self {
            client: Client::from_conf(config.build()),
            endpoint: settings.endpoint,
            timeout: settings.timeout,
            warned_version: AtomicI64::new(i64::MIN),
        })
    }

    /// What a failed call means to the client, in words that name no SDK internals and no
    /// credentials.
    fn error(&self, e: SdkError<InvokeEndpointError>) -> BackendError {
        match e {
            SdkError::TimeoutError(_) => BackendError::Timeout(self.timeout),
            SdkError::DispatchFailure(ref f) if f.is_timeout() => {
                BackendError::Timeout(self.timeout)
            }
            SdkError::DispatchFailure(ref f) if f.is_io() => {
                BackendError::Unavailable(format!("cannot reach SageMaker: {}", innermost(&e)))
            }
            SdkError::ResponseError(_) => BackendError::Unavailable(
                "SageMaker's answer could not be read (cut short or malformed)".to_owned(),
            ),
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let err = ctx.into_err();
                if let InvokeEndpointError::ModelError(m) = &err {
                    return BackendError::Model(model_message(m));
                }
                let code = err.code().unwrap_or("an unnamed error");
                if status == 429 || status == 503 || THROTTLING_CODES.contains(&code) {
                    return BackendError::Throttled;
                }
                BackendError::Unavailable(match err.message() {
                    Some(m) => format!("SageMaker refused the call ({code}, status {status}): {m}"),
                    None => format!("SageMaker refused the call ({code}, status {status})"),
                })
            }
            // Building or signing the request failed, which includes finding no credentials.
            other => {
                BackendError::Unavailable(format!("cannot call SageMaker: {}", innermost(&other)))
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for SageMaker {
    fn name(&self) -> &'static str {
        "sagemaker"
    }

    async fn predict(
        &self,
        served: &Served,
        rows: &[BackendRow<'_>],
    ) -> Result<Vec<Prediction>, BackendError> {
        let mut call = self
            .client
            .invoke_endpoint()
            .endpoint_name(&self.endpoint)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(native_body(rows)));
        // One call per request and SageMaker takes one id per call: the first row's, so the
        // endpoint's own logs and data capture can be joined with Petrel's. Every row's id is
        // in the body.
        if let Some(first) = rows.first().filter(|r| fits_inference_id(r.inference_id)) {
            call = call.inference_id(first.inference_id);
        }
        let out = call.send().await.map_err(|e| self.error(e))?;
        let body = out.body().map(Blob::as_ref).unwrap_or_default();
        let predictions = parse_predictions(served, rows, body)?;
        if let Some(version) = predictions.version
            && version != served.version
            && self
                .warned_version
                .swap(i64::from(version), Ordering::Relaxed)
                != i64::from(version)
        {
            tracing::warn!(
                sagemaker.endpoint = %self.endpoint,
                model.version = served.version,
                endpoint.model_version = version,
                "the SageMaker endpoint hosts another version of the model than the alias \
                 names; predictions are logged under the alias's version"
            );
        }
        Ok(predictions.rows)
    }
}

/// `{"rows":[{"inference_id":..,"features":..}]}`, the features copied as the client sent them.
fn native_body(rows: &[BackendRow<'_>]) -> Vec<u8> {
    let size: usize = rows
        .iter()
        .map(|r| r.features.get().len() + r.inference_id.len() + 40)
        .sum();
    let mut body = Vec::with_capacity(16 + size);
    body.extend_from_slice(br#"{"rows":["#);
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(br#"{"inference_id":"#);
        // A string into a Vec cannot fail; this escapes it.
        let _ = serde_json::to_writer(&mut body, r.inference_id);
        body.extend_from_slice(br#","features":"#);
        body.extend_from_slice(r.features.get().as_bytes());
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    body
}

/// Whether SageMaker accepts `id` as an `InferenceId`.
fn fits_inference_id(id: &str) -> bool {
    id.len() <= MAX_SAGEMAKER_INFERENCE_ID
        && id.chars().next().is_some_and(|c| !c.is_whitespace())
        && !id.chars().any(char::is_control)
}

/// The endpoint's predictions, and the model version it says it used.
#[derive(Debug)]
struct Parsed {
    rows: Vec<Prediction>,
    version: Option<i32>,
}

/// Reads the container's native answer, checking it is an answer to these rows (one per row,
/// same ids, same order) from a model with the served model's classes, since it is logged as
/// the served model's.
fn parse_predictions(
    served: &Served,
    rows: &[BackendRow<'_>],
    body: &[u8],
) -> Result<Parsed, BackendError> {
    let resp: PredictResponse = serde_json::from_slice(body).map_err(|_| {
        BackendError::Unavailable(
            "the endpoint did not answer with Petrel predictions; it must run the Petrel \
             predictor's container mode (petrel-predictor serve)"
                .to_owned(),
        )
    })?;
    if resp.predictions.len() != rows.len() {
        return Err(BackendError::Unavailable(format!(
            "the endpoint answered {} predictions for {} rows",
            resp.predictions.len(),
            rows.len()
        )));
    }
    let classes: BTreeSet<&str> = served
        .model
        .class_names()
        .iter()
        .map(String::as_str)
        .collect();
    let version = resp.predictions.first().map(|p| p.model_version);
    let mut out = Vec::with_capacity(rows.len());
    for (i, (p, row)) in resp.predictions.into_iter().zip(rows).enumerate() {
        if p.inference_id != row.inference_id {
            return Err(BackendError::Unavailable(format!(
                "the endpoint answered row {i} with inference id {:?} instead of {:?}",
                p.inference_id, row.inference_id
            )));
        }
        let answered: BTreeSet<&str> = p.probabilities.keys().map(String::as_str).collect();
        if !classes.contains(p.class.as_str()) || answered != classes {
            return Err(BackendError::Unavailable(format!(
                "the endpoint's model predicts other classes than the served {} version {} \
                 ({:?}): it hosts a different model",
                served.model_name,
                served.version,
                served.model.class_names()
            )));
        }
        out.push(Prediction {
            class: p.class,
            probabilities: p.probabilities,
            confidence: p.confidence,
        });
    }
    Ok(Parsed { rows: out, version })
}

/// The container's own status and message from a `ModelError`. SageMaker's `Message` wraps
/// them with the account id and log stream, which a client has no use for.
fn model_message(e: &ModelError) -> String {
    let message = e
        .original_message()
        .map(container_message)
        .or_else(|| e.message().map(|m| truncate(m.trim())))
        .unwrap_or_else(|| "no message".to_owned());
    match e.original_status_code() {
        Some(status) => format!("the model answered {status}: {message}"),
        None => message,
    }
}

/// The message in a container's error body: Petrel's `{"error": {"message"}}`, MLflow's
/// `{"message"}`, or the text itself.
fn container_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(serde_json::Value::as_str)
    });
    truncate(found.unwrap_or(body).trim())
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_MODEL_MESSAGE) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

/// The deepest error in a chain: the one that says what actually happened (for example
/// "Connection refused"), without the SDK's layers around it. Only its first line, without a
/// trailing list: the credential chain's "no credentials found in chain. Attempted:" goes on
/// to list every provider it tried, which belongs in debug logs, not in a response.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut at = e;
    while let Some(next) = at.source() {
        at = next;
    }
    let text = at.to_string();
    let line = text.lines().next().unwrap_or_default().trim();
    line.strip_suffix("Attempted:")
        .unwrap_or(line)
        .trim_end_matches(['.', ' ', ':'])
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::value::RawValue;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SageMakerArgs,
    }

    fn args(extra: &[&str]) -> SageMakerArgs {
        Cli::parse_from(std::iter::once("test").chain(extra.iter().copied())).args
    }

    const TEN_SECONDS: Duration = Duration::from_secs(10);

    #[test]
    fn settings_default_and_refuse_what_cannot_work() {
        let s = args(&["--sagemaker-endpoint", "penguins-prod"])
            .settings(TEN_SECONDS)
            .unwrap();
        assert_eq!(
            s,
            Settings {
                endpoint: "penguins-prod".into(),
                timeout: Duration::from_secs(5),
                attempt_timeout: Duration::from_secs(5),
                max_attempts: 3,
            }
        );
        let err = |extra: &[&str]| format!("{:#}", args(extra).settings(TEN_SECONDS).unwrap_err());
        assert!(err(&[]).contains("--sagemaker-endpoint"));
        assert!(err(&["--sagemaker-endpoint", " "]).contains("--sagemaker-endpoint"));
        let e = ["--sagemaker-endpoint", "e"];
        assert!(err(&[&e[..], &["--sagemaker-max-attempts", "0"]].concat()).contains("attempts"));
        assert!(
            err(&[&e[..], &["--sagemaker-timeout-ms", "10000"]].concat())
                .contains("--request-timeout-ms")
        );
        assert!(
            err(&[&e[..], &["--sagemaker-attempt-timeout-ms", "6000"]].concat())
                .contains("--sagemaker-attempt-timeout-ms")
        );
        let s = args(&[&e[..], &["--sagemaker-attempt-timeout-ms", "800"]].concat())
            .settings(TEN_SECONDS)
            .unwrap();
        assert_eq!(s.attempt_timeout, Duration::from_millis(800));
    }

    #[test]
    fn the_body_carries_every_id_and_the_features_as_sent() {
        let a = RawValue::from_string(r#"{ "island":"Biscoe",  "bill_length_mm" : 39.1 }"#.into())
            .unwrap();
        let b = RawValue::from_string(r#"{"island":null}"#.into()).unwrap();
        let row = petrel_ml::FeatureRow::default();
        let rows = [
            BackendRow {
                inference_id: "a-1",
                features: &a,
                row: &row,
            },
            BackendRow {
                inference_id: "quote\"d",
                features: &b,
                row: &row,
            },
        ];
        let body = String::from_utf8(native_body(&rows)).unwrap();
        assert_eq!(
            body,
            r#"{"rows":[{"inference_id":"a-1","features":{ "island":"Biscoe",  "bill_length_mm" : 39.1 }},{"inference_id":"quote\"d","features":{"island":null}}]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["rows"][1]["inference_id"], "quote\"d");
    }

    #[test]
    fn only_ids_sagemaker_accepts_are_sent_as_inference_id() {
        assert!(fits_inference_id("req-1"));
        assert!(fits_inference_id(&"x".repeat(64)));
        assert!(!fits_inference_id(&"x".repeat(65)));
        assert!(!fits_inference_id(" leading-space"));
        assert!(!fits_inference_id(""));
    }

    #[test]
    fn the_containers_message_is_passed_on_without_its_wrapping() {
        assert_eq!(
            container_message(r#"{"error":{"code":"invalid","message":"rows[0]: no island"}}"#),
            "rows[0]: no island"
        );
        assert_eq!(
            container_message(r#"{"error_code":"BAD_REQUEST","message":"still loading"}"#),
            "still loading"
        );
        assert_eq!(container_message(" plain text\n"), "plain text");
        let long = container_message(&"é".repeat(2000));
        assert_eq!(long.chars().count(), MAX_MODEL_MESSAGE + 3);
        let e = ModelError::builder()
            .message(
                "Received server error (503) from primary with message ... account 123456789012",
            )
            .original_status_code(503)
            .original_message(r#"{"message":"the model is still loading"}"#)
            .build();
        assert_eq!(
            model_message(&e),
            "the model answered 503: the model is still loading"
        );
    }
}
