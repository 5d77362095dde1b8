//! MLflow's REST API 2.0 (`/api/2.0/mlflow/...`, also under `/ajax-api/2.0/mlflow/...`) and
//! its artifact proxy (`/api/2.0/mlflow-artifacts/...`), over the registry's own tables.
//!
//! An unchanged MLflow client pointed at the registry (`MLFLOW_TRACKING_URI`) tracks runs and
//! registers models in the same rows `/api/v1` reads and writes: a run is a run, whichever API
//! made it. MLflow's ids are strings: a run's is its UUID in 32 hex digits, and an experiment's
//! is a short number (`experiments.mlflow_id`, `0` for `Default`).
//!
//! Requests are read the way MLflow's server reads them: GET (and DELETE without a body) from
//! the query string, everything else from a JSON object, unknown fields ignored, 64-bit
//! integers as numbers or strings. Errors are MLflow's
//! `{"error_code": "...", "message": "..."}` with its HTTP statuses.

mod artifacts;
mod registry;
mod search;
mod tracking;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, OriginalUri, Request};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::AppState;

/// Largest JSON body of an MLflow call. Bigger than `/api/v1`'s, because one `log-batch` may
/// carry [`tracking::MAX_BATCH_PARAMS`] parameters of [`tracking::MAX_PARAM_VALUE`] characters.
/// Artifact uploads stream and are bounded by `--max-artifact-mb` instead.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The tag by which MLflow names a run's parent; `/api/v1` runs with a `parent_run_id` carry
/// it too, so MLflow clients and UIs nest them.
pub const PARENT_RUN_TAG: &str = "mlflow.parentRunId";
/// The tag by which MLflow names a run.
pub const RUN_NAME_TAG: &str = "mlflow.runName";

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        // Experiments.
        .route("/experiments/create", post(tracking::create_experiment))
        .route("/experiments/get", get(tracking::get_experiment))
        .route(
            "/experiments/get-by-name",
            get(tracking::get_experiment_by_name),
        )
        .route(
            "/experiments/search",
            get(tracking::search_experiments).post(tracking::search_experiments),
        )
        .route("/experiments/delete", post(tracking::delete_experiment))
        .route("/experiments/restore", post(tracking::restore_experiment))
        .route("/experiments/update", post(tracking::update_experiment))
        .route(
            "/experiments/set-experiment-tag",
            post(tracking::set_experiment_tag),
        )
        .route(
            "/experiments/delete-experiment-tag",
            post(tracking::delete_experiment_tag),
        )
        // Runs.
        .route("/runs/create", post(tracking::create_run))
        .route("/runs/update", post(tracking::update_run))
        .route("/runs/delete", post(tracking::delete_run))
        .route("/runs/restore", post(tracking::restore_run))
        .route("/runs/get", get(tracking::get_run))
        .route("/runs/search", post(tracking::search_runs))
        .route("/runs/log-metric", post(tracking::log_metric))
        .route("/runs/log-parameter", post(tracking::log_param))
        .route("/runs/set-tag", post(tracking::set_tag))
        .route("/runs/delete-tag", post(tracking::delete_tag))
        .route("/runs/log-batch", post(tracking::log_batch))
        .route("/runs/log-inputs", post(tracking::log_inputs))
        .route("/metrics/get-history", get(tracking::get_metric_history))
        .route("/artifacts/list", get(tracking::list_artifacts))
        // MLflow 3 clients look for logged models when they list a run's artifacts.
        .route("/logged-models/search", post(no_logged_models))
        // The model registry.
        .route(
            "/registered-models/create",
            post(registry::create_registered_model),
        )
        .route(
            "/registered-models/get",
            get(registry::get_registered_model),
        )
        .route(
            "/registered-models/update",
            patch(registry::update_registered_model),
        )
        .route(
            "/registered-models/search",
            get(registry::search_registered_models),
        )
        .route("/registered-models/set-tag", post(registry::set_model_tag))
        .route(
            "/registered-models/delete-tag",
            delete(registry::delete_model_tag),
        )
        .route("/model-versions/set-tag", post(registry::set_version_tag))
        .route(
            "/model-versions/delete-tag",
            delete(registry::delete_version_tag),
        )
        .route(
            "/registered-models/get-latest-versions",
            get(registry::get_latest_versions).post(registry::get_latest_versions),
        )
        .route(
            "/registered-models/alias",
            get(registry::get_model_version_by_alias)
                .post(registry::set_alias)
                .delete(registry::delete_alias),
        )
        .route(
            "/model-versions/create",
            post(registry::create_model_version),
        )
        .route("/model-versions/get", get(registry::get_model_version))
        .route(
            "/model-versions/update",
            patch(registry::update_model_version),
        )
        .route(
            "/model-versions/search",
            get(registry::search_model_versions),
        )
        .route(
            "/model-versions/get-download-uri",
            get(registry::get_download_uri),
        )
        .fallback(endpoint_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state.clone());
    let info = Router::new()
        .route("/server-info", get(server_info))
        .fallback(endpoint_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/2.0/mlflow", api.clone())
        .nest("/ajax-api/2.0/mlflow", api)
        .nest("/api/3.0/mlflow", info)
        .merge(artifacts::router(state))
}

/// What MLflow 3 clients ask before multipart transfers: none are offered, so they upload and
/// download through the proxy in one stream.
async fn server_info() -> Response {
    axum::Json(json!({
        "store_type": "SqlStore",
        "workspaces_enabled": false,
        "trace_archival_enabled": false,
        "multipart_uploads_enabled": false,
        "multipart_downloads_enabled": false,
    }))
    .into_response()
}

/// This registry keeps no logged models (MLflow 3's `LoggedModel`), so every search of them is
/// empty; models are registered from a run's artifacts.
async fn no_logged_models(Msg(_): Msg) -> Response {
    axum::Json(json!({ "models": [] })).into_response()
}

async fn endpoint_not_found(method: Method, OriginalUri(uri): OriginalUri) -> MlflowError {
    MlflowError::new(
        StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
        format!(
            "no MLflow endpoint {method} {}; docs/api.md lists the supported ones",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> MlflowError {
    MlflowError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "ENDPOINT_NOT_FOUND",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// An error as MLflow clients expect it: `{"error_code": ..., "message": ...}` with the status
/// MLflow gives that code. Internal errors are logged once and never echoed.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl MlflowError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", message)
    }

    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS", message)
    }

    /// Logs `error` with its chain and answers `INTERNAL_ERROR` without its details.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(error = format!("{error:#}"), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error; see the service log",
        )
    }
}

impl std::fmt::Display for MlflowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        let body = json!({ "error_code": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<sqlx::Error> for MlflowError {
    fn from(e: sqlx::Error) -> Self {
        if petrel_db::is_unique_violation(&e) {
            return Self::exists("a concurrent request created the same resource; retry");
        }
        Self::internal(e)
    }
}

impl From<crate::Error> for MlflowError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::NotFound(m) => Self::not_found(m),
            crate::Error::Conflict(m) => Self::exists(m),
            crate::Error::Invalid(m) => Self::invalid(m),
            crate::Error::Db(e) => e.into(),
        }
    }
}

impl From<petrel_store::StoreError> for MlflowError {
    fn from(e: petrel_store::StoreError) -> Self {
        use petrel_store::StoreError as E;
        match e {
            E::InvalidKey(_) | E::TooLarge { .. } | E::ForeignUri(_) => {
                Self::invalid(e.to_string())
            }
            E::NotFound(key) => Self::not_found(format!("artifact {key:?} does not exist")),
            E::UnsupportedRoot(_) | E::Io { .. } | E::Remote { .. } | E::Protocol(_) => {
                Self::internal(e)
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, MlflowError>;

/// A request's fields, from the query string and the JSON body, as MLflow's server reads them.
#[derive(Debug)]
pub struct Msg(pub Fields);

impl<S: Send + Sync> FromRequest<S> for Msg {
    type Rejection = MlflowError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let mut map = query_fields(req.uri())?;
        let body = Bytes::from_request(req, state).await.map_err(|r| {
            let status = r.status();
            MlflowError::new(
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                "INVALID_PARAMETER_VALUE",
                format!(
                    "the request body could not be read (the limit is {} MiB)",
                    BODY_LIMIT >> 20
                ),
            )
        })?;
        if !body.iter().all(u8::is_ascii_whitespace) {
            let value: Value = serde_json::from_slice(&body).map_err(|e| {
                MlflowError::invalid(format!("the request body is not valid JSON: {e}"))
            })?;
            let Value::Object(fields) = value else {
                return Err(MlflowError::invalid(
                    "the request body must be a JSON object",
                ));
            };
            map.extend(fields);
        }
        Ok(Msg(Fields::new(map, String::new())))
    }
}

/// The query string as JSON fields: a key given once is a string, a repeated key an array.
fn query_fields(uri: &Uri) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    if uri.query().is_none_or(str::is_empty) {
        return Ok(map);
    }
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|_| MlflowError::invalid("the query string is not valid URL encoding"))?;
    for (k, v) in pairs {
        match map.get_mut(&k) {
            None => {
                map.insert(k, Value::String(v));
            }
            Some(Value::Array(items)) => items.push(Value::String(v)),
            Some(first) => {
                let first = first.take();
                map.insert(k, Value::Array(vec![first, Value::String(v)]));
            }
        }
    }
    Ok(map)
}

/// Typed access to a request's fields, with MLflow's error messages that name the field.
#[derive(Debug, Clone)]
pub struct Fields {
    map: Map<String, Value>,
    /// Where these fields sit in the request (`metrics[3].`), for messages.
    path: String,
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 100 {
        format!("{}...", &s[..s.floor_char_boundary(100)])
    } else {
        s
    }
}

impl Fields {
    pub fn new(map: Map<String, Value>, path: String) -> Self {
        Self { map, path }
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, v: &Value, expected: &str) -> MlflowError {
        MlflowError::invalid(format!(
            "Invalid value {} for parameter '{}' supplied: expected {expected}.",
            show(v),
            self.name(key)
        ))
    }

    pub fn missing(&self, key: &str) -> MlflowError {
        MlflowError::invalid(format!(
            "Missing value for required parameter '{}'.",
            self.name(key)
        ))
    }

    /// A string field; numbers are taken as their decimal text.
    pub fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.bad(key, v, "a string")),
        }
    }

    /// A string field that is set and not empty.
    pub fn opt_nonempty(&self, key: &str) -> Result<Option<String>> {
        Ok(self.opt_str(key)?.filter(|s| !s.is_empty()))
    }

    /// A required, non-empty string field.
    pub fn str(&self, key: &str) -> Result<String> {
        self.opt_nonempty(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            }),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| self.bad(key, v, "an integer"))
    }

    /// A double: a number, a numeric string, or `NaN`, `Infinity`, `-Infinity` as protobuf's
    /// JSON writes them.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => match s.trim() {
                "NaN" | "nan" => Some(f64::NAN),
                "Infinity" | "inf" | "+Infinity" => Some(f64::INFINITY),
                "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
                t => t.parse().ok(),
            },
            _ => None,
        };
        parsed.map(Some).ok_or_else(|| self.bad(key, v, "a number"))
    }

    /// A repeated string field: an array, or one string (a query parameter given once).
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    v => Err(self.bad(key, v, "a list of strings")),
                })
                .collect(),
            Some(v) => Err(self.bad(key, v, "a list of strings")),
        }
    }

    /// A repeated message field: an array of objects.
    pub fn objects(&self, key: &str) -> Result<Vec<Fields>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(m) => {
                        Ok(Fields::new(m.clone(), format!("{}[{i}].", self.name(key))))
                    }
                    v => Err(MlflowError::invalid(format!(
                        "Invalid value {} for parameter '{}[{i}]' supplied: expected an object.",
                        show(v),
                        self.name(key)
                    ))),
                })
                .collect(),
            Some(v) => Err(self.bad(key, v, "a list of objects")),
        }
    }

    /// A nested message field.
    pub fn object(&self, key: &str) -> Result<Option<Fields>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => {
                Ok(Some(Fields::new(m.clone(), format!("{}.", self.name(key)))))
            }
            Some(v) => Err(self.bad(key, v, "an object")),
        }
    }

    /// A run id, from `run_id` or its older name `run_uuid`.
    pub fn run_id(&self) -> Result<Uuid> {
        let raw = match self.opt_nonempty("run_id")? {
            Some(id) => id,
            None => self
                .opt_nonempty("run_uuid")?
                .ok_or_else(|| self.missing("run_id"))?,
        };
        parse_run_id(&raw)
    }
}

/// A run id as MLflow writes it: the UUID's 32 hex digits.
pub fn run_hex(id: Uuid) -> String {
    id.simple().to_string()
}

/// A run id in the simple (32 hex) or hyphenated form.
pub fn parse_run_id(raw: &str) -> Result<Uuid> {
    Uuid::try_parse(raw.trim()).map_err(|_| {
        MlflowError::invalid(format!(
            "Invalid run ID {raw:?}: expected 32 hexadecimal digits (a UUID)"
        ))
    })
}

/// An experiment id: a non-negative decimal number.
pub fn parse_experiment_id(raw: &str) -> Result<i64> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            MlflowError::invalid(format!(
                "Invalid experiment ID {raw:?}: experiment ids are decimal numbers"
            ))
        })
}

/// Milliseconds since the epoch, as MLflow counts time.
pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(what: &str, ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| MlflowError::invalid(format!("{what} {ms} is out of range")))
}

/// The offset a page token stands for. Tokens are opaque to clients; this one is the offset
/// of the page's first row.
pub fn page_offset(token: Option<String>) -> Result<i64> {
    match token.filter(|t| !t.is_empty()) {
        None => Ok(0),
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| MlflowError::invalid(format!("Invalid page token {t:?}"))),
    }
}

/// `max_results`, defaulting to `default` and at most `limit`.
/// A page of `items` under `field`, with MLflow's `next_page_token` when `more` follow.
pub fn page<T: serde::Serialize>(
    field: &str,
    items: T,
    more: bool,
    offset: i64,
    limit: i64,
) -> Response {
    let mut body = json!({ field: items });
    if more {
        body["next_page_token"] = json!((offset + limit).to_string());
    }
    axum::Json(body).into_response()
}

pub fn max_results(f: &Fields, default: i64, limit: i64) -> Result<i64> {
    let n = f.opt_i64("max_results")?.unwrap_or(default);
    if n < 1 || n > limit {
        return Err(MlflowError::invalid(format!(
            "Invalid value {n} for parameter 'max_results' supplied: it must be between 1 and {limit}."
        )));
    }
    Ok(n)
}

/// Serialises a double as protobuf's JSON does: non-finite values as strings.
pub fn double<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else if v.is_nan() {
        s.serialize_str("NaN")
    } else if *v > 0.0 {
        s.serialize_str("Infinity")
    } else {
        s.serialize_str("-Infinity")
    }
}

/// A string that Postgres can store and that has no control characters (a key, an id).
pub fn check_plain(what: &str, s: &str) -> Result<()> {
    if s.chars().any(char::is_control) {
        return Err(MlflowError::invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Free text: anything but NUL, which Postgres cannot store.
pub fn check_text(what: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(MlflowError::invalid(format!(
            "{what} must not contain NUL characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Fields {
        let Value::Object(m) = v else { panic!() };
        Fields::new(m, String::new())
    }

    #[test]
    fn fields_read_like_protobuf_json() {
        let f = fields(json!({
            "a": "x", "n": "12", "m": 13, "d": "NaN", "e": 1.5, "list": "one",
            "many": ["a", 2], "objs": [{"key": "k"}], "empty": "", "null": null
        }));
        assert_eq!(f.str("a").unwrap(), "x");
        assert_eq!(f.opt_i64("n").unwrap(), Some(12));
        assert_eq!(f.opt_i64("m").unwrap(), Some(13));
        assert!(f.opt_f64("d").unwrap().unwrap().is_nan());
        assert_eq!(f.opt_f64("e").unwrap(), Some(1.5));
        assert_eq!(f.strings("list").unwrap(), vec!["one"]);
        assert_eq!(f.strings("many").unwrap(), vec!["a", "2"]);
        let objs = f.objects("objs").unwrap();
        assert_eq!(objs[0].str("key").unwrap(), "k");
        let missing = objs[0].str("value").unwrap_err();
        assert_eq!(missing.code, "INVALID_PARAMETER_VALUE");
        assert!(
            missing.message.contains("'objs[0].value'"),
            "{}",
            missing.message
        );
        assert!(f.str("empty").is_err());
        assert_eq!(f.opt_str("null").unwrap(), None);
        let bad = f.opt_i64("a").unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.message.contains("'a'") && bad.message.contains("an integer"));
        assert!(f.objects("a").is_err());
    }

    #[test]
    fn ids_and_tokens() {
        let id = Uuid::now_v7();
        assert_eq!(parse_run_id(&run_hex(id)).unwrap(), id);
        assert_eq!(parse_run_id(&id.to_string()).unwrap(), id);
        assert_eq!(
            parse_run_id("nope").unwrap_err().code,
            "INVALID_PARAMETER_VALUE"
        );
        assert_eq!(parse_experiment_id("0").unwrap(), 0);
        assert!(parse_experiment_id("-1").is_err());
        assert!(parse_experiment_id("abc").is_err());
        assert_eq!(page_offset(None).unwrap(), 0);
        assert_eq!(page_offset(Some("".into())).unwrap(), 0);
        assert_eq!(page_offset(Some("40".into())).unwrap(), 40);
        assert!(page_offset(Some("x".into())).is_err());
    }

    #[test]
    fn query_strings_become_fields() {
        let uri: Uri = "/x?run_id=a&experiment_ids=1&experiment_ids=2&q=%20b"
            .parse()
            .unwrap();
        let f = Fields::new(query_fields(&uri).unwrap(), String::new());
        assert_eq!(f.str("run_id").unwrap(), "a");
        assert_eq!(f.strings("experiment_ids").unwrap(), vec!["1", "2"]);
        assert_eq!(f.str("q").unwrap(), " b");
    }
}
