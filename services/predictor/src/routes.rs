//! `POST /v1/predict`, `GET /v1/model`, `GET /v1/predictions/{id}`, and the scoring core every
//! protocol shares ([`score`]): validate, answer replays, predict, log, answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use petrel_api::predictor::ServedModel;
use petrel_ml::FeatureRow;
use petrel_runtime::http::{ApiError, Json, Path};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::backend::{BackendError, BackendRow};
use crate::log::{LogError, MAX_MESSAGE_BYTES, MAX_ROW_BYTES, Part};
use crate::model::{ModelRef, PinError, Served};
use crate::replay::{Answer, Claim, Ticket};
use crate::{AppState, store};

/// Longest inference id a caller may choose.
const MAX_ID_LEN: usize = 128;

/// Room in a log part for the envelope around its rows.
const PART_BYTES: usize = MAX_MESSAGE_BYTES - 2048;

/// Admission control: how many requests may be in the scoring path at once, and how long one
/// may take.
#[derive(Clone, Debug)]
pub struct Admission {
    pub permits: Arc<Semaphore>,
    pub timeout: Duration,
}

/// Longest wait for the database when looking up earlier answers of a caller's ids.
const REPLAY_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub fn router(state: AppState) -> Router {
    let admission = state.admission.clone();
    let scoring = Router::new()
        .route("/v1/predict", post(predict))
        .route_layer(axum::middleware::from_fn_with_state(admission, admit))
        .with_state(state.clone());
    let api = Router::new()
        .route("/v1/model", get(model))
        .route("/v1/predictions/{inference_id}", get(prediction))
        .route("/v1/log", get(log_status))
        .with_state(state.clone())
        .merge(scoring)
        .merge(crate::serving::router(
            state.clone(),
            state.admission.clone(),
        ))
        .merge(crate::batch::router(state.clone()));
    petrel_runtime::http::finish(
        api.merge(petrel_runtime::http::health_routes(state.readiness())),
        state.body_limit,
    )
}

/// A 503 that tells the client when to come back.
pub fn retry_later(message: impl Into<String>, after_secs: u64) -> Response {
    let mut resp = ApiError::unavailable(message).into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&after_secs.to_string()).unwrap_or(HeaderValue::from_static("1")),
    );
    resp
}

/// Sheds load past the concurrency limit and bounds each request's time, both with a 503 and
/// `Retry-After`, before anything is queued.
pub async fn admit(State(a): State<Admission>, req: Request, next: Next) -> Response {
    let Ok(_permit) = a.permits.clone().try_acquire_owned() else {
        return retry_later(
            "the predictor is at its concurrency limit; retry in a moment",
            1,
        );
    };
    match tokio::time::timeout(a.timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => retry_later(
            format!(
                "the request took longer than {} ms; retry it (with the same inference ids, \
                 rows already answered are answered again as logged)",
                a.timeout.as_millis()
            ),
            1,
        ),
    }
}

fn no_model() -> ApiError {
    ApiError::unavailable(
        "no model is being served yet: the alias has no version, or it is still loading",
    )
}

async fn model(State(s): State<AppState>) -> Result<Json<ServedModel>, ApiError> {
    let served = s.slot.current().ok_or_else(no_model)?;
    Ok(Json(ServedModel {
        model_name: served.model_name.to_string(),
        model_version: served.version,
        artifact_uri: served.artifact_uri.clone(),
        class_names: served.model.class_names().to_vec(),
        schema: served.model.schema().clone(),
    }))
}

/// The prediction log's state: whether NATS is connected, how full the buffer is, and why
/// requests would be refused.
async fn log_status(State(s): State<AppState>) -> Response {
    axum::Json(s.logger.status()).into_response()
}

async fn prediction(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = store::logged(&s.infra.pool, &id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no logged prediction has inference id {id:?} (a prediction answered moments ago \
                 may take a few milliseconds to appear here)"
            ))
        })?;
    Ok(axum::Json(row).into_response())
}

/// The native request, read without copying the features: each row's features stay the JSON
/// text they arrived as, which is what the log stores.
#[derive(Deserialize)]
#[serde(expecting = "an object with a \"rows\" array")]
struct NativeRequest<'a> {
    /// `name/VERSION` or `name@ALIAS` to pin instead of the served alias.
    #[serde(default)]
    model: Option<String>,
    #[serde(borrow)]
    rows: Vec<NativeRow<'a>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a row: an object with \"features\" and an optional \"inference_id\"")]
struct NativeRow<'a> {
    #[serde(default)]
    inference_id: Option<String>,
    #[serde(borrow)]
    features: &'a RawValue,
}

/// One validated row ready to score.
pub struct Input<'a> {
    /// The caller's id, or `None` for one to be generated.
    pub inference_id: Option<String>,
    /// The features as JSON text, logged as they are.
    pub features: &'a RawValue,
    pub row: FeatureRow,
}

/// One answered row.
#[derive(Debug)]
pub struct Scored {
    pub inference_id: String,
    pub answer: Answered,
}

/// A fresh prediction, or the answer logged earlier for the same id.
#[derive(Debug)]
pub enum Answered {
    Fresh(petrel_ml::Prediction),
    Replayed(Arc<Answer>),
}

impl Scored {
    pub fn class(&self) -> &str {
        match &self.answer {
            Answered::Fresh(p) => &p.class,
            Answered::Replayed(a) => &a.class,
        }
    }
    pub fn probabilities(&self) -> &BTreeMap<String, f32> {
        match &self.answer {
            Answered::Fresh(p) => &p.probabilities,
            Answered::Replayed(a) => &a.probabilities,
        }
    }
    pub fn confidence(&self) -> f32 {
        match &self.answer {
            Answered::Fresh(p) => p.confidence,
            Answered::Replayed(a) => a.confidence,
        }
    }
    /// The model that made it: the request's for fresh rows, the logged one for replays.
    pub fn model<'a>(&'a self, served: &'a Served) -> (&'a str, i32) {
        match &self.answer {
            Answered::Fresh(_) => (&served.model_name, served.version),
            Answered::Replayed(a) => (&a.model_name, a.model_version),
        }
    }
}

/// Why scoring failed, as the client sees it.
#[derive(Debug)]
pub enum ScoreError {
    Api(ApiError),
    /// The log could not take the rows: 503 with `Retry-After`.
    Log(LogError),
    /// The backend is shedding load: 503 with `Retry-After`.
    Throttled(String),
}

impl From<ApiError> for ScoreError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for ScoreError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Log(e) => retry_later(e.to_string(), 1),
            Self::Throttled(m) => retry_later(m, 1),
        }
    }
}

/// The model a request is answered by: the pinned one, or the served alias's.
pub async fn choose_model(s: &AppState, pin: Option<&str>) -> Result<Arc<Served>, ApiError> {
    match pin {
        None => s.slot.current().ok_or_else(no_model),
        Some(pin) => {
            let reference = ModelRef::parse(pin).map_err(ApiError::invalid)?;
            s.loader.pinned(&reference).await.map_err(|e| match e {
                PinError::NotFound(m) => ApiError::not_found(m),
                PinError::Unavailable(e) => {
                    tracing::warn!(error = format!("{e:#}"), "cannot load a pinned model");
                    ApiError::unavailable(
                        "the requested model cannot be loaded right now; retry in a moment",
                    )
                }
            })
        }
    }
}

/// Checks a caller's inference id.
pub fn check_id(i: usize, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "rows[{i}].inference_id must be 1 to {MAX_ID_LEN} printable characters"
        )));
    }
    Ok(())
}

/// Validates one row's features against the model's schema.
pub fn validate(
    s: &AppState,
    served: &Served,
    i: usize,
    features: &RawValue,
) -> Result<FeatureRow, ApiError> {
    let size = features.get().len();
    if size > MAX_ROW_BYTES {
        return Err(ApiError::invalid(format!(
            "rows[{i}].features is {size} bytes of JSON; the limit is {MAX_ROW_BYTES} bytes"
        )));
    }
    let row =
        petrel_ml::row_from_json_str(features.get(), served.model.schema()).map_err(
            |e| match e {
                petrel_ml::MlError::NotAnObject => ApiError::invalid(format!(
                    "rows[{i}].features must be an object of column name to value"
                )),
                e => ApiError::invalid(format!("rows[{i}]: {e}")),
            },
        )?;
    if s.reject_unseen {
        served
            .model
            .check_known_categories(&row)
            .map_err(|e| ApiError::invalid(format!("rows[{i}]: {e}")))?;
    }
    Ok(row)
}

/// Scores validated rows with `served`: answers caller ids already logged with their logged
/// answer, predicts the rest, logs them durably, and only then returns. Rows come back in the
/// order given.
pub async fn score(
    s: &AppState,
    served: &Served,
    inputs: Vec<Input<'_>>,
) -> Result<Vec<Scored>, ScoreError> {
    let n = inputs.len();
    // Claim caller ids in sorted order, so two requests sharing ids never wait on each other.
    let mut order: Vec<usize> = (0..n)
        .filter(|&i| inputs[i].inference_id.is_some())
        .collect();
    order.sort_by(|&a, &b| inputs[a].inference_id.cmp(&inputs[b].inference_id));
    let mut replayed: Vec<Option<Arc<Answer>>> = vec![None; n];
    let mut tickets: Vec<Option<Ticket>> = (0..n).map(|_| None).collect();
    for &i in &order {
        let id = inputs[i].inference_id.as_deref().unwrap_or_default();
        match s.replay.claim(id).await {
            Claim::Logged(a) => replayed[i] = Some(a),
            Claim::Fresh(t) => tickets[i] = Some(t),
        }
    }
    // Ids this process has not seen may have been logged by another replica or before a restart.
    let unknown: Vec<&str> = tickets.iter().flatten().map(Ticket::id).collect();
    if !unknown.is_empty() && !s.log_fence.is_open() {
        // Just started: what the previous process logged last may not be in Postgres yet.
        if tokio::time::timeout(REPLAY_LOOKUP_TIMEOUT, s.log_fence.wait())
            .await
            .is_err()
        {
            return Err(ScoreError::Api(ApiError::unavailable(
                "this predictor is still catching up with the prediction log, so it cannot \
                 yet tell whether these inference ids were answered before; retry in a moment, \
                 or send the rows without inference ids",
            )));
        }
    }
    if !unknown.is_empty() {
        // Bounded well inside the request timeout, so an unreachable database answers with
        // this message rather than a generic timeout.
        let lookup = tokio::time::timeout(
            REPLAY_LOOKUP_TIMEOUT,
            store::answers(&s.infra.pool, &unknown),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        let found = lookup.map_err(|e| {
            tracing::warn!(error = %e, "cannot look up earlier answers");
            ScoreError::Api(ApiError::unavailable(
                "cannot check whether these inference ids were answered before (the database \
                 is unreachable); retry in a moment, or send the rows without inference ids",
            ))
        })?;
        let found: std::collections::HashMap<String, Answer> = found.into_iter().collect();
        for i in 0..n {
            let hit = tickets[i].as_ref().and_then(|t| found.get(t.id())).cloned();
            if let Some(answer) = hit {
                let answer = Arc::new(answer);
                if let Some(t) = tickets[i].take() {
                    t.complete(answer.clone());
                }
                replayed[i] = Some(answer);
            }
        }
    }
    let fresh: Vec<usize> = (0..n).filter(|&i| replayed[i].is_none()).collect();
    // Ids first: a remote backend is sent them with the rows.
    let ids: Vec<String> = fresh
        .iter()
        .map(|&i| {
            inputs[i]
                .inference_id
                .clone()
                .unwrap_or_else(|| Uuid::now_v7().to_string())
        })
        .collect();
    let predictions = {
        let rows: Vec<BackendRow<'_>> = fresh
            .iter()
            .zip(&ids)
            .map(|(&i, id)| BackendRow {
                inference_id: id,
                features: inputs[i].features,
                row: &inputs[i].row,
            })
            .collect();
        if rows.is_empty() {
            Vec::new()
        } else {
            s.backend
                .predict(served, &rows)
                .await
                .map_err(|e| backend_error(e, &fresh))?
        }
    };
    let mut inputs: Vec<Option<Input<'_>>> = inputs.into_iter().map(Some).collect();
    let now = Utc::now();
    let mut out: Vec<Option<Scored>> = (0..n).map(|_| None).collect();
    let mut parts = Vec::new();
    let mut part = Part::default();
    for ((&i, p), id) in fresh.iter().zip(predictions).zip(ids) {
        let input = inputs[i].take().expect("each row is scored once");
        if part.rows.len() + MAX_ROW_BYTES + 1024 > PART_BYTES && part.count > 0 {
            parts.push(std::mem::take(&mut part));
        }
        part.push(|buf| write_logged(buf, &id, input.features, &p, now));
        out[i] = Some(Scored {
            inference_id: id,
            answer: Answered::Fresh(p),
        });
    }
    if part.count > 0 {
        parts.push(part);
    }
    if !parts.is_empty() {
        s.logger
            .log(&served.model_name, served.version, parts)
            .await
            .map_err(ScoreError::Log)?;
    }
    // Logged: remember the answers to caller ids, and wake whoever waits for them.
    for i in 0..n {
        if let (
            Some(t),
            Some(Scored {
                answer: Answered::Fresh(p),
                ..
            }),
        ) = (tickets[i].take(), out[i].as_ref())
        {
            t.complete(Arc::new(Answer {
                class: p.class.clone(),
                probabilities: p.probabilities.clone(),
                confidence: p.confidence,
                model_name: served.model_name.to_string(),
                model_version: served.version,
            }));
        }
    }
    for (i, answer) in replayed.into_iter().enumerate() {
        if let Some(answer) = answer {
            let id = inputs[i]
                .take()
                .and_then(|input| input.inference_id)
                .unwrap_or_default();
            out[i] = Some(Scored {
                inference_id: id,
                answer: Answered::Replayed(answer),
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|s| s.expect("every row is answered"))
        .collect())
}

/// What a backend's failure means to the client; `fresh` maps the backend's row positions back
/// to the request's.
fn backend_error(e: BackendError, fresh: &[usize]) -> ScoreError {
    match e {
        BackendError::OutOfRange { row } => ScoreError::Api(ApiError::invalid(format!(
            "rows[{}]: {e}",
            fresh.get(row).copied().unwrap_or(row)
        ))),
        BackendError::Model(_) | BackendError::Unavailable(_) => {
            tracing::warn!(error = %e, "the backend failed");
            ScoreError::Api(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                e.to_string(),
            ))
        }
        BackendError::Throttled => ScoreError::Throttled(e.to_string()),
        BackendError::Timeout(_) => ScoreError::Api(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            e.to_string(),
        )),
    }
}

/// One row of a `predictions.logged` event, serialised once, with the features as received.
fn write_logged(
    buf: &mut Vec<u8>,
    id: &str,
    features: &RawValue,
    p: &petrel_ml::Prediction,
    at: DateTime<Utc>,
) {
    #[derive(Serialize)]
    struct Row<'a> {
        inference_id: &'a str,
        features: &'a RawValue,
        class: &'a str,
        confidence: f32,
        probabilities: &'a BTreeMap<String, f32>,
        predicted_at: DateTime<Utc>,
    }
    let row = Row {
        inference_id: id,
        features,
        class: &p.class,
        confidence: p.confidence,
        probabilities: &p.probabilities,
        predicted_at: at,
    };
    // Serialising plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(buf, &row);
}

/// Whether the request says its body is JSON (as `axum::Json` checks).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime_guess_lite::Mime>().ok())
        .is_some_and(|m| m.is_json())
}

/// The smallest content-type reading the predictor needs: `type/subtype[+suffix][; params]`.
mod mime_guess_lite {
    pub struct Mime {
        essence: String,
    }
    impl std::str::FromStr for Mime {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let essence = s
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence.contains('/') {
                Ok(Self { essence })
            } else {
                Err(())
            }
        }
    }
    impl Mime {
        pub fn is_json(&self) -> bool {
            self.essence == "application/json" || self.essence.ends_with("+json")
        }
    }
}

async fn predict(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body is larger than the limit of {} bytes; send fewer rows per request",
                    s.body_limit
                ),
            )
            .into_response();
        }
        Err(r) => {
            return ApiError::bad_request(format!("cannot read the body: {}", r.body_text()))
                .into_response();
        }
    };
    match predict_native(&s, &headers, &body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn predict_native(
    s: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ScoreError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the rows as JSON, with the header Content-Type: application/json",
        )
        .into());
    }
    let req: NativeRequest<'_> = serde_json::from_slice(body).map_err(json_error)?;
    if req.rows.is_empty() {
        return Err(ApiError::invalid("rows is empty: send at least one row").into());
    }
    if req.rows.len() > s.max_rows {
        return Err(ApiError::invalid(format!(
            "{} rows in one request; the limit is {}",
            req.rows.len(),
            s.max_rows
        ))
        .into());
    }
    // One model for the whole request, so every fresh row is answered by the same version.
    let served = choose_model(s, req.model.as_deref()).await?;
    let mut seen = std::collections::HashSet::new();
    let mut inputs = Vec::with_capacity(req.rows.len());
    for (i, row) in req.rows.into_iter().enumerate() {
        if let Some(id) = &row.inference_id {
            check_id(i, id)?;
            if !seen.insert(id.clone()) {
                return Err(ApiError::invalid(format!(
                    "rows[{i}].inference_id {id:?} appears twice in the request"
                ))
                .into());
            }
        }
        let parsed = validate(s, &served, i, row.features)?;
        inputs.push(Input {
            inference_id: row.inference_id,
            features: row.features,
            row: parsed,
        });
    }
    let scored = score(s, &served, inputs).await?;
    Ok(native_response(&served, &scored))
}

/// A body that is not JSON is a 400; JSON of the wrong shape a 422 (as `axum::Json` answers).
pub fn json_error(e: serde_json::Error) -> ApiError {
    let status = match e.classify() {
        serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(
        status,
        "invalid_json",
        format!("the body is not a valid request: {e}"),
    )
}

/// `{"predictions": [...]}` in the native shape ([`petrel_api::predictor::PredictResponse`]),
/// written straight into the body.
fn native_response(served: &Served, scored: &[Scored]) -> Response {
    #[derive(Serialize)]
    struct Row<'a> {
        inference_id: &'a str,
        class: &'a str,
        probabilities: &'a BTreeMap<String, f32>,
        confidence: f32,
        model_name: &'a str,
        model_version: i32,
    }
    let mut body = Vec::with_capacity(64 + scored.len() * 200);
    body.extend_from_slice(br#"{"predictions":["#);
    for (i, r) in scored.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let (model_name, model_version) = r.model(served);
        let row = Row {
            inference_id: &r.inference_id,
            class: r.class(),
            probabilities: r.probabilities(),
            confidence: r.confidence(),
            model_name,
            model_version,
        };
        let _ = serde_json::to_writer(&mut body, &row);
    }
    body.extend_from_slice(b"]}");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
