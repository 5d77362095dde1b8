//! The other protocols on the full service, logged like `POST /v1/predict`: MLflow's scoring
//! protocol (`POST /invocations`, `GET /ping`, `/health`, `/version`) and the Open Inference
//! Protocol V2 (`/v2/health/*`, `/v2/models/{name}[/versions/{v}][/infer]`).
//!
//! Each parses its body with [`crate::protocol`], turns the rows into [`Input`]s (validated
//! against the model, features serialised once for the log) and answers through the same
//! [`score`] core, so replays, logging and the durability contract are the native API's.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use petrel_api::predictor::PredictResponse;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::protocol::{self, Invocation, Parsed, ProtocolError, ScoredRow, mlflow, v2};
use crate::routes::{Admission, Input, ScoreError, Scored, choose_model, score};
use crate::{AppState, Served};

/// The protocol routes, behind the same admission control as `/v1/predict`.
pub fn router(state: AppState, admission: Admission) -> Router {
    let scoring = Router::new()
        .route("/invocations", post(invocations))
        .route("/v2/models/{name}/infer", post(v2_infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2_infer_version),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            admission,
            crate::routes::admit,
        ));
    Router::new()
        .route("/ping", get(ping))
        .route("/health", get(ping))
        .route("/version", get(version))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{name}", get(v2_metadata))
        .route("/v2/models/{name}/ready", get(v2_model_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2_metadata_version),
        )
        .merge(scoring)
        .with_state(state)
}

use crate::protocol::http::reply;

fn no_model() -> ProtocolError {
    ProtocolError::Unavailable(
        "no model is being served yet: the alias has no version, or it is still loading".into(),
    )
}

fn with_retry_after(
    status: StatusCode,
    retry_after: Option<axum::http::HeaderValue>,
    body: Value,
) -> Response {
    let mut r = reply(status, body);
    if let Some(v) = retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// A scoring failure rendered with `body` (the protocol's error shape), its status kept.
async fn render(e: ScoreError, body: impl Fn(&ProtocolError) -> Value) -> Response {
    let response = e.into_response();
    let status = response.status();
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "the request could not be scored".to_owned());
    let as_protocol = match status {
        StatusCode::BAD_REQUEST => ProtocolError::Malformed(message),
        StatusCode::PAYLOAD_TOO_LARGE => ProtocolError::TooLarge(message),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProtocolError::UnsupportedMediaType(message),
        StatusCode::UNPROCESSABLE_ENTITY => ProtocolError::Invalid(message),
        StatusCode::NOT_FOUND => ProtocolError::NotFound(message),
        StatusCode::INTERNAL_SERVER_ERROR => ProtocolError::Internal(message),
        _ => ProtocolError::Unavailable(message),
    };
    with_retry_after(status, retry_after, body(&as_protocol))
}

/// The body, or the error a client should see: 413 past the limit, 400 for a broken upload.
fn body(s: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ProtocolError> {
    crate::protocol::http::read_body(body, s.body_limit)
}

/// Serialises each row's features once: the text the log keeps.
fn raw_features(parsed: &Parsed) -> Result<Vec<Box<RawValue>>, ProtocolError> {
    parsed
        .features()
        .map(|f| {
            serde_json::value::to_raw_value(f)
                .map_err(|e| ProtocolError::Internal(format!("cannot serialise a row: {e}")))
        })
        .collect()
}

/// Validates parsed rows into the scoring core's inputs, with the native API's limits and
/// messages naming rows the way the protocol does.
fn inputs<'a>(
    s: &AppState,
    served: &Served,
    parsed: &Parsed,
    raws: &'a [Box<RawValue>],
) -> Result<Vec<Input<'a>>, ProtocolError> {
    if parsed.rows.is_empty() {
        return Err(ProtocolError::Invalid(
            "the request holds no rows: send at least one".into(),
        ));
    }
    if parsed.rows.len() > s.max_rows {
        return Err(ProtocolError::Invalid(format!(
            "{} rows in one request; the limit is {}",
            parsed.rows.len(),
            s.max_rows
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(parsed.rows.len());
    for (i, (row, raw)) in parsed.rows.iter().zip(raws).enumerate() {
        let name = parsed.origin.name(i);
        if let Some(id) = &row.inference_id {
            crate::routes::check_id(i, id).map_err(|e| {
                ProtocolError::Invalid(e.message.replace(&format!("rows[{i}]"), &name))
            })?;
            if !seen.insert(id.clone()) {
                return Err(ProtocolError::Invalid(format!(
                    "{name}.inference_id {id:?} appears twice in the request"
                )));
            }
        }
        let checked = crate::routes::validate(s, served, i, raw)
            .map_err(|e| ProtocolError::Invalid(e.message.replace(&format!("rows[{i}]"), &name)))?;
        out.push(Input {
            inference_id: row.inference_id.clone(),
            features: raw,
            row: checked,
        });
    }
    Ok(out)
}

/// The scored rows as the protocol formatters take them.
fn scored_rows(scored: &[Scored]) -> Vec<ScoredRow> {
    scored
        .iter()
        .map(|r| ScoredRow {
            inference_id: r.inference_id.clone(),
            features: serde_json::Map::new(),
            prediction: petrel_ml::Prediction {
                class: r.class().to_owned(),
                probabilities: r.probabilities().clone(),
                confidence: r.confidence(),
            },
        })
        .collect()
}

/// Parses, validates, scores and logs; errors in the caller's protocol shape.
async fn run(
    s: &AppState,
    served: &Served,
    parsed: Parsed,
    error_body: fn(&ProtocolError) -> Value,
) -> Result<Vec<Scored>, Response> {
    let fail = |e: ProtocolError| reply(e.status(), error_body(&e));
    let raws = raw_features(&parsed).map_err(fail)?;
    let inputs = inputs(s, served, &parsed, &raws).map_err(fail)?;
    match score(s, served, inputs).await {
        Ok(scored) => Ok(scored),
        Err(e) => Err(render(e, error_body).await),
    }
}

/// SageMaker's and MLflow's health check: 200 once a model is served.
async fn ping(State(s): State<AppState>) -> Response {
    crate::protocol::http::ping(s.slot.current().as_deref())
}

async fn version(State(s): State<AppState>) -> Response {
    let served = s.slot.current();
    reply(
        StatusCode::OK,
        json!({
            "petrel_version": env!("CARGO_PKG_VERSION"),
            "model_name": served.as_ref().map(|m| m.model_name.to_string()),
            "model_version": served.as_ref().map(|m| m.version),
            "backend": s.backend.name(),
        }),
    )
}

/// `POST /invocations`: MLflow bodies answer `{"predictions": [...]}` with MLflow-shaped
/// errors; native bodies answer as `POST /v1/predict` does.
async fn invocations(
    State(s): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let mlflow_error = |e: ProtocolError| reply(e.status(), mlflow::error_body(&e));
    let bytes = match body(&s, raw) {
        Ok(b) => b,
        Err(e) => return mlflow_error(e),
    };
    let Some(served) = s.slot.current() else {
        return mlflow_error(no_model());
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match protocol::parse_invocation(content_type, &bytes, served.model.schema()) {
        Err(e) => mlflow_error(e),
        Ok(Invocation::Mlflow(parsed)) => {
            match run(&s, &served, parsed, mlflow::error_body).await {
                Ok(scored) => reply(StatusCode::OK, mlflow::predictions(&scored_rows(&scored))),
                Err(r) => r,
            }
        }
        Ok(Invocation::Native(parsed)) => {
            let parsed = match parsed {
                Ok(p) => p,
                Err(e) => return reply(e.status(), native_error_body(&e)),
            };
            match run(&s, &served, parsed, native_error_body).await {
                Ok(scored) => {
                    let predictions = scored_rows(&scored)
                        .iter()
                        .zip(&scored)
                        .map(|(r, sc)| {
                            let (name, version) = sc.model(&served);
                            r.to_native(name, version)
                        })
                        .collect();
                    axum::Json(PredictResponse { predictions }).into_response()
                }
                Err(r) => r,
            }
        }
    }
}

/// Petrel's error shape, `{"error": {"code", "message"}}`.
fn native_error_body(e: &ProtocolError) -> Value {
    json!({"error": {"code": crate::protocol::http::native_code(e), "message": e.client_message()}})
}

async fn live() -> Response {
    crate::protocol::http::live()
}

async fn v2_ready(State(s): State<AppState>) -> Response {
    crate::protocol::http::v2_ready(s.slot.current().is_some())
}

fn v2_error(e: ProtocolError) -> Response {
    reply(e.status(), v2::error_body(&e))
}

/// The model a V2 path names: the served one, or (with a version) that version pinned.
async fn v2_model(
    s: &AppState,
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
    match version {
        None => Ok(served),
        Some(v) if v == served.version.to_string() => Ok(served),
        Some(v) => {
            let pin = format!("{name}/{v}");
            choose_model(s, Some(&pin))
                .await
                .map_err(|e| match e.status {
                    StatusCode::NOT_FOUND => ProtocolError::NotFound(e.message),
                    StatusCode::UNPROCESSABLE_ENTITY => ProtocolError::NotFound(format!(
                        "version {v:?} of {name:?} is not a version number"
                    )),
                    _ => ProtocolError::Unavailable(e.message),
                })
        }
    }
}

async fn v2_model_ready(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> Response {
    match v2_model(&s, &name, None).await {
        Ok(_) => reply(StatusCode::OK, json!({"name": name, "ready": true})),
        Err(e) => v2_error(e),
    }
}

async fn v2_metadata(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> Response {
    metadata(&s, &name, None).await
}

async fn v2_metadata_version(
    State(s): State<AppState>,
    UrlPath((name, version)): UrlPath<(String, String)>,
) -> Response {
    metadata(&s, &name, Some(&version)).await
}

async fn metadata(s: &AppState, name: &str, version: Option<&str>) -> Response {
    match v2_model(s, name, version).await {
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
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    infer(&s, &name, None, raw).await
}

async fn v2_infer_version(
    State(s): State<AppState>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    infer(&s, &name, Some(&version), raw).await
}

async fn infer(
    s: &AppState,
    name: &str,
    version: Option<&str>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body(s, raw) {
        Ok(b) => b,
        Err(e) => return v2_error(e),
    };
    let served = match v2_model(s, name, version).await {
        Ok(m) => m,
        Err(e) => return v2_error(e),
    };
    let request = match v2::parse_infer(&bytes, served.model.schema()) {
        Ok(r) => r,
        Err(e) => return v2_error(e),
    };
    let scored = match run(s, &served, request.rows, v2::error_body).await {
        Ok(scored) => scored,
        Err(r) => return r,
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
            &scored_rows(&scored),
            request.outputs.as_deref(),
        ),
    )
}
