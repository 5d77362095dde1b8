//! Container mode (`petrel-predictor serve`): one packaged model served on its own, the way
//! SageMaker runs an inference container, with neither NATS nor Postgres nor a registry.
//!
//! SageMaker starts the image with the argument `serve`, unpacks `model.tar.gz` into
//! `/opt/ml/model`, probes `GET /ping` until it answers 200 and then sends requests to
//! `POST /invocations` on port 8080. So this mode:
//! - loads the bundle from [`ContainerConfig::model_dir`] (the files `petrel models package`
//!   writes: [`petrel_ml::BUNDLE_FILE`] and, optionally, [`petrel_ml::MANIFEST_FILE`]). When the
//!   bundle is not there yet, it keeps looking and answers `/ping` with 503 meanwhile; a bundle
//!   that is there but unreadable, or whose bytes do not match the manifest, stops the server,
//!   since waiting would not fix it;
//! - answers `POST /invocations` with MLflow's scoring protocol and Petrel's native
//!   `{"rows": [...]}` body (see [`crate::protocol::parse_invocation`]), and the Open Inference
//!   Protocol on `/v2/...`;
//! - logs no predictions: there is no database. Inference ids are still assigned, so callers
//!   can correlate answers.
//!
//! It drains like every Petrel service: SIGTERM stops accepting connections and lets requests
//! in flight finish.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Parser, Subcommand};
use petrel_api::predictor::PredictResponse;
use petrel_ml::{BUNDLE_FILE, LoadedModel, MANIFEST_FILE, ModelBundle, PackageManifest};
use petrel_runtime::config::LogArgs;
use petrel_runtime::http::{ApiError, Path as UrlPath};
use petrel_runtime::service::{ServiceConfig, Tasks};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, Invocation, ProtocolError, RowLimits, mlflow, v2};
use crate::{Served, ServedSlot};

/// How long HTTP lets requests in flight finish on shutdown, as the full service does.
const HTTP_DRAIN: Duration = Duration::from_secs(30);

/// How often to look for a bundle that is not there yet.
const MODEL_POLL: Duration = Duration::from_millis(250);

/// The model name answered when the package has no manifest.
pub const UNNAMED_MODEL: &str = "model";

/// The `petrel-predictor` command line: no subcommand runs the full service (as before there
/// were subcommands), `serve` runs the container mode.
#[derive(Parser, Debug)]
#[command(
    name = "petrel-predictor",
    version,
    about = "Petrel's predictor: serves the production model over HTTP",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub service: crate::Config,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve one packaged model as a SageMaker-style inference container (no NATS, no
    /// Postgres): GET /ping, POST /invocations, and the Open Inference Protocol on /v2.
    Serve(ContainerConfig),
}

impl ServiceConfig for Cli {
    fn log(&self) -> &LogArgs {
        match &self.command {
            Some(Command::Serve(c)) => &c.log,
            None => &self.service.log,
        }
    }
}

/// Container mode configuration.
#[derive(Parser, Clone, Debug)]
pub struct ContainerConfig {
    /// Address to serve HTTP on; SageMaker sends requests to port 8080.
    #[arg(long, env = "PETREL_CONTAINER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Directory holding the unpacked model package (`bundle.json`, `petrel-model.json`);
    /// SageMaker unpacks `model.tar.gz` into `/opt/ml/model`.
    #[arg(long, env = "PETREL_MODEL_DIR", default_value = "/opt/ml/model")]
    pub model_dir: PathBuf,
    /// Most rows one request may carry.
    #[arg(long, env = "PETREL_PREDICTOR_MAX_ROWS", default_value_t = 1000)]
    pub max_rows: usize,
    /// Largest request body in bytes; larger ones get 413. The default, 16 MiB, is a little
    /// above SageMaker's 6 MB real-time payload limit.
    #[arg(
        long,
        env = "PETREL_PREDICTOR_MAX_BODY_BYTES",
        default_value_t = 16 << 20
    )]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Clone, Debug)]
struct ContainerState {
    slot: ServedSlot,
    limits: RowLimits,
    max_body_bytes: usize,
}

/// The container-mode server: `build` binds and loads the model if it is there, `run` serves
/// until the token is cancelled.
#[derive(Debug)]
pub struct ContainerApp {
    port: u16,
    listener: TcpListener,
    state: ContainerState,
    model_dir: PathBuf,
    cancel: CancellationToken,
}

impl ContainerApp {
    pub async fn build(config: ContainerConfig, cancel: CancellationToken) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_rows > 0, "--max-rows must be at least 1");
        anyhow::ensure!(
            config.max_body_bytes > 0,
            "--max-body-bytes must be at least 1"
        );
        let slot = ServedSlot::default();
        // Serve at once when the package is in place, so the first /ping already says 200.
        match load(&config.model_dir).await? {
            Some(served) => {
                log_loaded(&served);
                slot.replace(served);
            }
            None => tracing::warn!(
                model.dir = %config.model_dir.display(),
                "no {BUNDLE_FILE} yet; answering /ping with 503 until it appears"
            ),
        }
        let (listener, port) = petrel_runtime::http::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(port, "predictor container listening");
        Ok(Self {
            port,
            listener,
            state: ContainerState {
                slot,
                limits: RowLimits {
                    max_rows: config.max_rows,
                    max_row_bytes: None,
                },
                max_body_bytes: config.max_body_bytes,
            },
            model_dir: config.model_dir,
            cancel,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let mut tasks = Tasks::new(self.cancel.clone());
        let router = router(self.state.clone());
        let (listener, cancel) = (self.listener, self.cancel.clone());
        tasks.spawn("http", async move {
            petrel_runtime::http::serve(listener, router, cancel, HTTP_DRAIN).await?;
            Ok(())
        });
        let (slot, dir, cancel) = (self.state.slot, self.model_dir, self.cancel);
        tasks.spawn("model", async move {
            while slot.current().is_none() {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(MODEL_POLL) => {}
                }
                if let Some(served) = load(&dir).await? {
                    log_loaded(&served);
                    slot.replace(served);
                }
            }
            // A task that ends stops the service; this one has nothing left to do but wait.
            cancel.cancelled().await;
            Ok(())
        });
        tasks.join().await
    }
}

fn log_loaded(served: &Served) {
    tracing::info!(
        model.name = %served.model_name,
        model.version = served.version,
        artifact.uri = %served.artifact_uri,
        "now serving"
    );
}

/// Loads the package in `dir`: `Ok(None)` while its bundle does not exist yet; an error when
/// the bundle or manifest is unreadable, or the bundle's hash is not the manifest's.
pub async fn load(dir: &Path) -> anyhow::Result<Option<Served>> {
    let bundle_path = dir.join(BUNDLE_FILE);
    let bytes = match tokio::fs::read(&bundle_path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", bundle_path.display()));
        }
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest: Option<PackageManifest> = match tokio::fs::read(&manifest_path).await {
        Ok(m) => Some(serde_json::from_slice(&m).with_context(|| {
            format!(
                "{} is not a Petrel package manifest",
                manifest_path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", manifest_path.display()));
        }
    };
    if let Some(m) = &manifest {
        let got = petrel_store::content_hash(&bytes);
        anyhow::ensure!(
            got == m.sha256,
            "{} has hash {got}, but {MANIFEST_FILE} says {}: the package is damaged or mixed up",
            bundle_path.display(),
            m.sha256
        );
    }
    let path = bundle_path.clone();
    let model = tokio::task::spawn_blocking(move || -> anyhow::Result<LoadedModel> {
        Ok(ModelBundle::from_bytes(&bytes)?.load()?)
    })
    .await?
    .with_context(|| format!("cannot load the model in {}", path.display()))?;
    let (model_name, version, artifact_uri) = match manifest {
        Some(m) => (m.name, m.version, m.artifact_uri),
        None => (
            UNNAMED_MODEL.to_owned(),
            0,
            format!("file://{}", bundle_path.display()),
        ),
    };
    Ok(Some(Served {
        model_name: model_name.into(),
        version,
        artifact_uri,
        model,
    }))
}

fn router(state: ContainerState) -> Router {
    let limit = state.max_body_bytes;
    let api = Router::new()
        .route("/ping", get(ping))
        .route("/health", get(ping))
        .route("/version", get(version))
        .route("/invocations", post(invocations))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{name}", get(v2_metadata))
        .route("/v2/models/{name}/ready", get(v2_model_ready))
        .route("/v2/models/{name}/infer", post(v2_infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2_metadata_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2_infer_version),
        )
        .with_state(state);
    petrel_runtime::http::finish(api, limit)
}

use crate::protocol::http::reply;

fn no_model() -> ProtocolError {
    ProtocolError::Unavailable(
        "the model is still loading; retry once GET /ping answers 200".into(),
    )
}

use crate::protocol::http::read_body as body;

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Logs what the client is not told.
fn log_internal(e: &ProtocolError) {
    if let ProtocolError::Internal(m) = e {
        tracing::error!(error = %m, "internal error");
    }
}

/// SageMaker's health check: 200 once the model is loaded, 503 before.
async fn ping(State(s): State<ContainerState>) -> Response {
    crate::protocol::http::ping(s.slot.current().as_deref())
}

async fn version(State(s): State<ContainerState>) -> Response {
    let served = s.slot.current();
    reply(
        StatusCode::OK,
        json!({
            "petrel_version": env!("CARGO_PKG_VERSION"),
            "model_name": served.as_ref().map(|m| m.model_name.clone()),
            "model_version": served.as_ref().map(|m| m.version),
        }),
    )
}

/// `POST /invocations`: MLflow bodies answer `{"predictions": [...]}` and errors in MLflow's
/// shape; native bodies answer as `POST /v1/predict` does, errors in Petrel's shape.
async fn invocations(
    State(s): State<ContainerState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let mlflow_error = |e: ProtocolError| {
        log_internal(&e);
        reply(e.status(), mlflow::error_body(&e))
    };
    let bytes = match body(raw, s.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return mlflow_error(e),
    };
    let Some(served) = s.slot.current() else {
        return mlflow_error(no_model());
    };
    match protocol::parse_invocation(content_type(&headers), &bytes, served.model.schema()) {
        Err(e) => mlflow_error(e),
        Ok(Invocation::Mlflow(parsed)) => match protocol::score(&served.model, parsed, &s.limits) {
            Ok(scored) => reply(StatusCode::OK, mlflow::predictions(&scored)),
            Err(e) => mlflow_error(e),
        },
        Ok(Invocation::Native(parsed)) => {
            match parsed.and_then(|p| protocol::score(&served.model, p, &s.limits)) {
                Ok(scored) => {
                    let predictions = scored
                        .iter()
                        .map(|r| r.to_native(&served.model_name, served.version))
                        .collect();
                    axum::Json(PredictResponse { predictions }).into_response()
                }
                Err(e) => native_error(e).into_response(),
            }
        }
    }
}

/// A protocol error in Petrel's shape, with the codes `POST /v1/predict` uses.
fn native_error(e: ProtocolError) -> ApiError {
    log_internal(&e);
    ApiError::new(
        e.status(),
        crate::protocol::http::native_code(&e),
        e.client_message(),
    )
}

async fn live() -> Response {
    crate::protocol::http::live()
}

async fn v2_ready(State(s): State<ContainerState>) -> Response {
    crate::protocol::http::v2_ready(s.slot.current().is_some())
}

fn v2_error(e: ProtocolError) -> Response {
    log_internal(&e);
    reply(e.status(), v2::error_body(&e))
}

/// The served model when `name` (and `version`, if given) name it.
fn v2_model(
    s: &ContainerState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<Served>, ProtocolError> {
    let served = s.slot.current().ok_or_else(no_model)?;
    if *served.model_name != *name {
        return Err(ProtocolError::NotFound(format!(
            "model {name:?} is not served here; this server serves {:?}",
            served.model_name
        )));
    }
    if let Some(v) = version
        && v != served.version.to_string()
    {
        return Err(ProtocolError::NotFound(format!(
            "version {v:?} of {name:?} is not served here; this server serves version {}",
            served.version
        )));
    }
    Ok(served)
}

async fn v2_model_ready(
    State(s): State<ContainerState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match v2_model(&s, &name, None) {
        Ok(_) => reply(StatusCode::OK, json!({"name": name, "ready": true})),
        Err(e) => v2_error(e),
    }
}

async fn v2_metadata(State(s): State<ContainerState>, UrlPath(name): UrlPath<String>) -> Response {
    metadata(&s, &name, None)
}

async fn v2_metadata_version(
    State(s): State<ContainerState>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Response {
    metadata(&s, &name, Some(&version))
}

fn metadata(s: &ContainerState, name: &str, version: Option<&str>) -> Response {
    match v2_model(s, name, version) {
        Ok(m) => reply(
            StatusCode::OK,
            v2::model_metadata(
                &m.model_name,
                &[m.version.to_string()],
                m.model.schema(),
                m.model.class_names(),
            ),
        ),
        Err(e) => v2_error(e),
    }
}

async fn v2_infer(
    State(s): State<ContainerState>,
    UrlPath(name): UrlPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    infer(&s, &name, None, raw)
}

async fn v2_infer_version(
    State(s): State<ContainerState>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    infer(&s, &name, Some(&version), raw)
}

fn infer(
    s: &ContainerState,
    name: &str,
    version: Option<&str>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body(raw, s.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return v2_error(e),
    };
    let served = match v2_model(s, name, version) {
        Ok(m) => m,
        Err(e) => return v2_error(e),
    };
    let request = match v2::parse_infer(&bytes, served.model.schema()) {
        Ok(r) => r,
        Err(e) => return v2_error(e),
    };
    let scored = match protocol::score(&served.model, request.rows, &s.limits) {
        Ok(s) => s,
        Err(e) => return v2_error(e),
    };
    let id = request
        .id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    reply(
        StatusCode::OK,
        v2::infer_response(
            &served.model_name,
            &served.version.to_string(),
            &id,
            served.model.class_names(),
            &scored,
            request.outputs.as_deref(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_is_the_full_service_and_serve_is_the_container() {
        let cli = Cli::parse_from([
            "petrel-predictor",
            "--listen",
            "127.0.0.1:9",
            "--max-rows",
            "5",
        ]);
        assert!(cli.command.is_none());
        assert_eq!(cli.service.listen, "127.0.0.1:9");
        assert_eq!(cli.service.max_rows, 5);

        let cli = Cli::parse_from([
            "petrel-predictor",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model-dir",
            "/tmp/m",
            "--log-format",
            "json",
        ]);
        let Some(Command::Serve(c)) = &cli.command else {
            panic!("serve is a subcommand: {cli:?}");
        };
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.model_dir, PathBuf::from("/tmp/m"));
        assert_eq!(c.max_body_bytes, 16 << 20);
        assert_eq!(cli.log().log_format, "json");

        // The full service's flags do not leak into the container's.
        assert!(Cli::try_parse_from(["petrel-predictor", "serve", "--registry-url", "x"]).is_err());
        assert!(Cli::try_parse_from(["petrel-predictor", "--listen", "x", "serve"]).is_err());
    }

    #[test]
    fn container_defaults_are_sagemakers() {
        let c = ContainerConfig::parse_from(["serve"]);
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.model_dir, PathBuf::from("/opt/ml/model"));
        assert_eq!(c.max_rows, 1000);
    }
}
